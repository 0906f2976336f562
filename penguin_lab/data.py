"""Ingest and prepare the penguin data: read and check the CSV, then Spark cleans, encodes, scales and splits it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .config import FEATURES, ISLAND, LABEL, MEASUREMENTS, SCALE, TrainConfig
from .errors import LabError
from .spark import get_spark  # noqa: F401  (re-exported for the notebooks)
from .validate import read_penguins_csv  # noqa: F401  (re-exported: the one way CSVs are read)


@dataclass
class PreparedData:
    """Model-ready arrays plus what the model must remember to score new penguins."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    island_vocabulary: list
    counts: dict = field(default_factory=dict)
    feature_ranges: dict = field(default_factory=dict)


def spark_prepare(spark, raw: pd.DataFrame):
    """Spark: drop incomplete rows, encode the island, cast and scale.

    Returns a Spark DataFrame with Row, the FEATURES and the label. The island index is the rank of
    the island's name in sorted order, so it is the same on every run (the lab's collect_set has no
    fixed order); `island_vocabulary` reads it back so that it can be saved with the model.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    schema = "Row long, Island string, CulmenLength double, CulmenDepth double, " \
             "FlipperLength double, BodyMass double, Species double"
    df = spark.createDataFrame(raw[["Row", ISLAND, *MEASUREMENTS, LABEL]], schema=schema)
    complete = df.dropna()
    # Exact repeats of a row would land on both sides of the split and leak test answers.
    unique = complete.dropDuplicates([ISLAND, *MEASUREMENTS, LABEL])
    # A handful of rows read by the driver: ranking them in one partition is cheap.
    island_index = F.dense_rank().over(Window.orderBy(ISLAND)) - 1
    return unique.select(
        "Row",
        ISLAND,
        island_index.cast("float").alias("IslandIdx"),
        (F.col("CulmenLength") * SCALE["CulmenLength"]).cast("float").alias("CulmenLength"),
        (F.col("CulmenDepth") * SCALE["CulmenDepth"]).cast("float").alias("CulmenDepth"),
        (F.col("FlipperLength") * SCALE["FlipperLength"]).cast("float").alias("FlipperScaled"),
        (F.col("BodyMass") * SCALE["BodyMass"]).cast("float").alias("MassScaled"),
        F.col(LABEL).cast("int").alias(LABEL),
    )


def island_vocabulary(rows: pd.DataFrame) -> list:
    """Island names in index order, read back from prepared rows."""
    pairs = rows[[ISLAND, "IslandIdx"]].drop_duplicates().sort_values("IslandIdx")
    return pairs[ISLAND].tolist()


def spark_split(data, test_fraction: float, seed: int):
    """Stratified, seeded split in Spark: within each species, a fixed share of rows goes to test.

    Rows are ordered by a hash of (seed, row number), so the same seed picks the same rows on any
    cluster and any number of partitions. Returns the data with a boolean `is_test` column.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    by_species = Window.partitionBy(LABEL)
    ranked = Window.partitionBy(LABEL).orderBy(F.xxhash64(F.lit(seed), F.col("Row")), F.col("Row"))
    n_test = F.greatest(F.lit(1), F.round(F.count("*").over(by_species) * test_fraction))
    return data.withColumn("is_test", F.row_number().over(ranked) <= n_test)


def check_splittable(species_counts: dict, where: str) -> None:
    """Every species present needs a row on each side of the split."""
    from .config import SPECIES

    if sum(species_counts.values()) == 0:
        raise LabError(f"{where}: no complete rows to train on (every row has a missing value)")
    if len(species_counts) < 2:
        raise LabError(f"{where}: only one species in the complete rows; need at least 2 to train a classifier")
    for label, n in sorted(species_counts.items()):
        if n < 2:
            raise LabError(f"{where}: species {SPECIES[label]} has {n} complete row; "
                           f"a stratified split needs at least 2 per species")


def check_island_spellings(raw: pd.DataFrame, where: str) -> None:
    """Names that differ only in case ("Biscoe", "biscoe") would become two islands to the model."""
    names = pd.Series(raw[ISLAND].dropna().unique(), dtype=object)
    spellings = names.groupby(names.str.casefold()).agg(list)
    clashing = spellings[spellings.map(len) > 1]
    if clashing.empty:
        return
    spelled = set(clashing.iloc[0])
    rows = raw[raw[ISLAND].isin(spelled)].drop_duplicates(ISLAND)  # the first row of each spelling
    (first, first_row), (other, other_row) = list(zip(rows[ISLAND], rows["Row"]))[:2]
    raise LabError(f"{where}: row {other_row}, column {ISLAND!r}: {other!r} differs only in case from {first!r} "
                   f"(row {first_row}); expected one spelling per island")


def prepare_splits(spark, raw: pd.DataFrame, config: TrainConfig, where: str = "data") -> PreparedData:
    """Run the Spark preparation and split; collect the two sides as arrays."""
    check_island_spellings(raw, where)
    split = spark_split(spark_prepare(spark, raw), config.test_fraction, config.seed)
    # One Spark job collects everything; sort by row number so order never depends on partitions.
    rows = split.toPandas().sort_values("Row", kind="stable").reset_index(drop=True)
    species_counts = rows[LABEL].value_counts().to_dict()
    check_splittable({int(k): int(v) for k, v in species_counts.items()}, where)

    complete_rows = int(raw[[ISLAND, *MEASUREMENTS, LABEL]].notna().all(axis=1).sum())
    train, test = rows[~rows["is_test"]], rows[rows["is_test"]]
    x_train = train[FEATURES].to_numpy(np.float32)
    y_train = train[LABEL].to_numpy(np.int64)
    if config.oversample > 1:
        x_train = np.tile(x_train, (config.oversample, 1))
        y_train = np.tile(y_train, config.oversample)
    x_test, y_test = test[FEATURES].to_numpy(np.float32), test[LABEL].to_numpy(np.int64)
    counts = {
        "input_rows": int(len(raw)),
        "incomplete_rows": int(len(raw) - complete_rows),
        "duplicate_rows": int(complete_rows - len(rows)),
        "train_rows": int(len(x_train)),
        "test_rows": int(len(x_test)),
        "overlap_rows": overlap_rows(x_train, y_train, x_test, y_test),
    }
    return PreparedData(x_train, y_train, x_test, y_test, island_vocabulary(rows), counts, measurement_ranges(raw))


def overlap_rows(x_train, y_train, x_test, y_test) -> int:
    """Test rows whose features and label also occur in training: answers the model has seen."""
    seen = {(*row.tolist(), int(label)) for row, label in zip(x_train, y_train)}
    return sum((*row.tolist(), int(label)) in seen for row, label in zip(x_test, y_test))


def measurement_ranges(raw: pd.DataFrame) -> dict:
    """Min and max of each raw measurement, so predict can warn about values far outside them."""
    complete = raw[[ISLAND, *MEASUREMENTS, LABEL]].dropna()
    return {m: [float(complete[m].min()), float(complete[m].max())] for m in MEASUREMENTS}
