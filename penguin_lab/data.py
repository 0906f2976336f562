"""Prepare the penguins with Spark: drop incomplete and repeated rows, encode, scale, split, write Parquet.

Everything here is Spark work on the checked records of `read.py`, whatever their number: the driver
receives counts and a handful of island names. The training and test sets are written as Parquet;
training reads them back (whole when they fit in memory, streamed otherwise: `batches.py`).
"""

from __future__ import annotations

import shutil
import weakref
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .config import (FEATURES, ISLAND, LABEL, MEASUREMENTS, ROW_GROUP_BYTES, SCALE, SPECIES, TrainConfig,
                     no_standardization)
from .errors import LabError
from .spark import read_parquet, shared_temporary_folder, spark_path, write_parquet
from .split import spark_split

VALUES = [ISLAND, *MEASUREMENTS, LABEL]
# A grouping task's hash table of this many rows stays in memory; a larger one spills and sorts.
ROWS_PER_GROUPING_TASK = 250_000


@dataclass
class PreparedData:
    """Where the prepared Parquet is, and what the model must remember to score new penguins."""

    train_path: str
    test_path: str
    island_vocabulary: list
    counts: dict = field(default_factory=dict)
    feature_ranges: dict = field(default_factory=dict)
    oversample: int = 1
    # Each feature's [mean, standard deviation] over the training rows: the prepared sets hold
    # (feature - mean) / std, and the model remembers them to transform new penguins the same way.
    standardization: dict = field(default_factory=dict)

    @cached_property
    def _train(self):
        from .batches import load_arrays

        x, y = load_arrays(self.train_path, FEATURES, LABEL)
        return (np.tile(x, (self.oversample, 1)), np.tile(y, self.oversample)) if self.oversample > 1 else (x, y)

    @cached_property
    def _test(self):
        from .batches import load_arrays

        return load_arrays(self.test_path, FEATURES, LABEL)

    # The arrays are read on first use: a large training set is streamed instead and never loaded whole.
    x_train = property(lambda self: self._train[0])
    y_train = property(lambda self: self._train[1])
    x_test = property(lambda self: self._test[0])
    y_test = property(lambda self: self._test[1])


def encode(rows, vocabulary: list):
    """Spark: the island as its index in the sorted vocabulary, the measurements cast and scaled as in the lab.

    The lab's collect_set has no fixed order; the sorted names give the same index on every run, and the
    vocabulary is saved with the model. Returns Row, Island, the FEATURES and the label."""
    from pyspark.sql import functions as F

    # A map lookup, not array_position: before Spark 4.0 (Databricks Runtime 15.4 and 16.4) that takes a literal only.
    # No island names means no complete rows (prepare then says so); an empty map has no type to look up in.
    index = (F.create_map(*[F.lit(part) for i, name in enumerate(vocabulary) for part in (name, i)])[F.col(ISLAND)]
             if vocabulary else F.lit(None))
    return rows.select(
        "Row", ISLAND, index.cast("float").alias("IslandIdx"),
        (F.col("CulmenLength") * SCALE["CulmenLength"]).cast("float").alias("CulmenLength"),
        (F.col("CulmenDepth") * SCALE["CulmenDepth"]).cast("float").alias("CulmenDepth"),
        (F.col("FlipperLength") * SCALE["FlipperLength"]).cast("float").alias("FlipperScaled"),
        (F.col("BodyMass") * SCALE["BodyMass"]).cast("float").alias("MassScaled"),
        F.col(LABEL).cast("int").alias(LABEL),
    )


def unique_complete(valid, rows: int = 0):
    """Spark: complete rows, each distinct row once (the first of its copies in the file).

    Exact repeats of a row would land on both sides of the split and leak test answers. `rows` (about how
    many there are) sets the number of tasks."""
    from pyspark.sql import functions as F

    # Shuffled by the values first, the grouping has no partial step: nearly every row is unique, and a hash
    # table of each task's rows before the shuffle doubles the work. Each task then groups a bounded share.
    tasks = max(2, -(-rows // ROWS_PER_GROUPING_TASK))
    return (valid.dropna(subset=VALUES).repartition(tasks, *VALUES).groupBy(*VALUES)
            .agg(F.min("pos").alias("Row")))


def check_splittable(species_counts: dict, where: str) -> None:
    """Every species present needs a row on each side of the split."""
    if sum(species_counts.values()) == 0:
        raise LabError(f"{where}: no complete rows to train on (every row has a missing value)")
    if len(species_counts) < 2:
        raise LabError(f"{where}: only one species in the complete rows; need at least 2 to train a classifier")
    for label, n in sorted(species_counts.items()):
        if n < 2:
            raise LabError(f"{where}: species {SPECIES[label]} has {n} complete row; "
                           f"a stratified split needs at least 2 per species")


def shuffled(rows, seed: int):
    """Rows in a seeded random order within each partition, so that any row group is a fair sample."""
    from pyspark.sql import functions as F

    return rows.sortWithinPartitions(F.xxhash64(F.lit(seed + 1), F.col("Row")), "Row")


def standardization(split) -> dict:
    """Spark: [mean, population standard deviation] of each feature over the training rows only.

    The lab divides two measurements by hand and feeds the island as a raw index, so the inputs differ in
    size and spread, and on some seeds the network stalls (the lab says to run the cell again). Centred
    and equally spread inputs train well on every seed. The test rows never enter the statistics, so
    nothing about them leaks into training. A feature with no spread (a single island) is only centred."""
    from pyspark.sql import functions as F

    aggregates = [F.avg(F.col(f).cast("double")).alias(f"mean_{f}") for f in FEATURES]
    aggregates += [F.stddev_pop(F.col(f).cast("double")).alias(f"std_{f}") for f in FEATURES]
    row = split.filter(~F.col("is_test")).agg(*aggregates).first()
    if row[f"mean_{FEATURES[0]}"] is None:  # no training rows: check_splittable says why
        return no_standardization()
    return {f: [_float32(row[f"mean_{f}"]), _float32(row[f"std_{f}"]) or 1.0] for f in FEATURES}


def _float32(value: float) -> float:
    """Spark adds the partitions' partial sums in the order they arrive, which can change the last bits of
    a double. Rounded to float32, the statistics are the same whatever that order (bar a near tie)."""
    return float(np.float32(value))


def standardize(split, statistics: dict):
    """Spark: each feature as (value - mean) / std, computed in double and stored as float, as
    predict.standardized does for new penguins."""
    from pyspark.sql import functions as F

    features = [((F.col(f).cast("double") - F.lit(statistics[f][0])) / F.lit(statistics[f][1])).cast("float").alias(f)
                for f in FEATURES]
    return split.select("Row", *features, LABEL, "is_test")


def write_split(split, folder: Path) -> tuple[str, str, object]:
    """Write the training and test rows of a split (`is_test`) as Parquet, each in the order it has; returns both
    paths and their (one) schema."""
    from pyspark.sql import functions as F

    paths = []
    for name, side in (("train", ~F.col("is_test")), ("test", F.col("is_test"))):
        target = str(folder / name)
        schema = write_parquet(split.filter(side).select("Row", *FEATURES, LABEL), spark_path(target),
                               {"parquet.block.size": ROW_GROUP_BYTES})
        paths.append(target)
    return paths[0], paths[1], schema


def overlap_rows(x_train, y_train, x_test, y_test) -> int:
    """The same count for arrays in memory (the lab's own replicate-then-split, for comparison)."""
    def rows(x, y):
        both = np.ascontiguousarray(np.column_stack([x.astype(np.float64), y.astype(np.float64)]))
        return both.view([("", both.dtype)] * both.shape[1]).ravel()

    return int(np.isin(rows(x_test, y_test), rows(x_train, y_train)).sum())


def overlap_join(spark, train_path: str, test_path: str, schema) -> int:
    """Test rows whose features and label also occur in training (Spark joins): answers the model has seen.

    Equal rows have equal hashes, so only test rows whose 64-bit hash also occurs in training can count. Joining
    on that one number shuffles and sorts a long per row, not six columns; the rows of the few hashes found
    are then compared whole. A semi join counts each test row once, however many training rows match it."""
    from pyspark.sql import functions as F

    columns = [*FEATURES, LABEL]
    hashed = [F.xxhash64(*columns).alias("hash"), *columns]  # Spark hashes -0.0 as 0.0, as its joins match them
    train = read_parquet(spark, spark_path(train_path), schema).select(*hashed)
    test = read_parquet(spark, spark_path(test_path), schema).select(*hashed)
    shared = test.select("hash").join(train.select("hash"), "hash", "left_semi").distinct()
    if shared.isEmpty():
        return 0
    return (test.join(shared, "hash", "left_semi")
            .join(train.join(shared, "hash", "left_semi"), ["hash", *columns], "left_semi").count())


def prepare(spark, penguins, config: TrainConfig, folder: Path) -> PreparedData:
    """The Spark preparation of checked records (read.read_penguins): Parquet in `folder`, counts and vocabulary."""
    from .read import check_island_spellings

    check_island_spellings(penguins)
    summary = penguins.summary
    vocabulary = sorted(name for name, _ in summary.islands)
    encoded = encode(unique_complete(penguins.valid(), summary.complete_rows), vocabulary)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # The split's two small jobs and the writes of both sides read the unique rows: written once, in the
    # order training will see them.
    unique_path = spark_path(str(folder / ".unique"))
    unique_schema = write_parquet(shuffled(encoded, config.seed), unique_path)
    split, sizes = spark_split(read_parquet(spark, unique_path, unique_schema), config.test_fraction, config.seed)
    statistics = standardization(split) if config.standardize else no_standardization()
    train_path, test_path, schema = write_split(standardize(split, statistics), folder)
    shutil.rmtree(folder / ".unique", ignore_errors=True)
    species = {label: rows for label, (rows, _) in sizes.items()}
    check_splittable(species, penguins.where)
    valid_rows = summary.data_rows - summary.invalid_rows
    unique = sum(species.values())
    test = sum(rows for _, rows in sizes.values())  # the split's own counts: the Parquet holds just these rows
    counts = {
        "input_rows": valid_rows,
        "incomplete_rows": valid_rows - summary.complete_rows,
        "duplicate_rows": summary.complete_rows - unique,
        "train_rows": (unique - test) * config.oversample,
        "test_rows": test,
        "overlap_rows": overlap_join(spark, train_path, test_path, schema),
    }
    return PreparedData(train_path, test_path, vocabulary, counts, dict(summary.ranges), config.oversample,
                        statistics)


def prepare_splits(spark, data, config: TrainConfig, where: str = "data", folder: Path | None = None) -> PreparedData:
    """`prepare` for checked records, or for a small pandas frame of rows (Row, Island, measurements, Species).

    Without `folder`, the Parquet goes to a temporary folder removed with the returned object."""
    from .read import penguins_from_pandas

    penguins = penguins_from_pandas(spark, data, where) if hasattr(data, "iloc") else data
    if folder is None:
        folder = shared_temporary_folder("penguin-lab-prepared-")
        try:
            prepared = prepare(spark, penguins, config, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # a refused split leaves no folder behind
            raise
        weakref.finalize(prepared, shutil.rmtree, folder, True)
        return prepared
    return prepare(spark, penguins, config, folder)


def spark_prepare(spark, raw):
    """The encoded rows of a small pandas frame (for looking at the preparation step by step)."""
    from .read import penguins_from_pandas

    penguins = penguins_from_pandas(spark, raw, "data")
    vocabulary = sorted(name for name, _ in penguins.summary.islands)
    return encode(unique_complete(penguins.valid()), vocabulary)


def check_island_spellings(rows, where: str) -> None:
    """The spelling rule of read.py for a pandas frame of rows (Row, Island)."""
    from .read import spelling_clash, spelling_message

    firsts = rows.dropna(subset=[ISLAND]).groupby(ISLAND)["Row"].min()
    clash = spelling_clash([(name, int(row)) for name, row in firsts.items()])
    if clash:
        (first, first_row), (other, other_row) = clash
        raise LabError(spelling_message(where, first, first_row, other, other_row))


def island_vocabulary(rows) -> list:
    """Island names in index order, read back from encoded rows (a pandas frame)."""
    pairs = rows[[ISLAND, "IslandIdx"]].drop_duplicates().sort_values("IslandIdx")
    return pairs[ISLAND].tolist()


def measurement_ranges(raw) -> dict:
    """Min and max of each measurement in the complete rows of a pandas frame."""
    complete = raw[VALUES].dropna()
    return {m: [float(complete[m].min()), float(complete[m].max())] for m in MEASUREMENTS}
