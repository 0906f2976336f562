"""Ingest and Spark preparation: the shipped file, encoding, casts, scaling, dropped rows, the split."""

import numpy as np
import pandas as pd
import pytest

from conftest import DATA, REPO
from penguin_lab.config import FEATURES, SPECIES, TrainConfig
from penguin_lab.data import (check_island_spellings, island_vocabulary, overlap_join, overlap_rows, prepare_splits,
                               spark_prepare)
from penguin_lab.errors import LabError


def test_shipped_csv_is_exactly_what_the_script_writes(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "penguins.csv"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_penguins_csv.py"), str(out)], check=True,
                   capture_output=True)
    assert out.read_bytes() == DATA.read_bytes()
    lines = DATA.read_text().splitlines()
    assert lines[0] == "Island,CulmenLength,CulmenDepth,FlipperLength,BodyMass,Species"
    assert len(lines) == 345
    assert ".0," not in DATA.read_text()


def test_incomplete_rows_are_dropped_and_counted(prepared, raw):
    assert prepared.counts["input_rows"] == 344
    assert prepared.counts["incomplete_rows"] == 2
    assert prepared.counts["train_rows"] + prepared.counts["test_rows"] == 342
    assert not np.isnan(prepared.x_train).any() and not np.isnan(prepared.x_test).any()


def test_island_index_is_the_sorted_vocabulary_whatever_the_row_order(spark, raw):
    islands = island_vocabulary(spark_prepare(spark, raw).toPandas())
    reversed_rows = raw.iloc[::-1].reset_index(drop=True)
    islands_reversed = island_vocabulary(spark_prepare(spark, reversed_rows).toPandas())
    assert islands == islands_reversed == ["Biscoe", "Dream", "Torgersen"]


def test_casts_and_scaling_follow_the_lab(spark, raw):
    data = spark_prepare(spark, raw)
    islands = ["Biscoe", "Dream", "Torgersen"]
    first = data.orderBy("Row").first()  # Torgersen,39.1,18.7,181,3750,0
    assert first["IslandIdx"] == islands.index("Torgersen")
    assert first["CulmenLength"] == pytest.approx(39.1, rel=1e-6)
    assert first["CulmenDepth"] == pytest.approx(18.7, rel=1e-6)
    assert first["FlipperScaled"] == pytest.approx(18.1, rel=1e-6)
    assert first["MassScaled"] == pytest.approx(37.5, rel=1e-6)
    assert first["Species"] == 0
    types = dict(data.dtypes)
    assert [types[f] for f in FEATURES] == ["float"] * 5 and types["Species"] == "int"


def test_split_is_stratified_seeded_and_honest(prepared, raw):
    assert prepared.counts["overlap_rows"] == 0
    assert prepared.x_train.dtype == np.float32 and prepared.y_train.dtype == np.int64
    complete = raw.dropna()
    for label in range(len(SPECIES)):
        n = int((complete["Species"] == label).sum())
        assert int((prepared.y_test == label).sum()) == round(n * 0.3)


def test_same_seed_same_split_other_seed_other_split(spark, raw, prepared):
    again = prepare_splits(spark, raw, TrainConfig(seed=0))
    other = prepare_splits(spark, raw, TrainConfig(seed=1))
    assert np.array_equal(again.x_test, prepared.x_test) and np.array_equal(again.y_train, prepared.y_train)
    assert not np.array_equal(other.x_test, prepared.x_test)


def test_oversampling_copies_training_rows_only(spark, raw, prepared):
    copied = prepare_splits(spark, raw, TrainConfig(oversample=4))
    assert copied.counts["train_rows"] == 4 * prepared.counts["train_rows"]
    assert copied.counts["test_rows"] == prepared.counts["test_rows"]
    assert copied.counts["overlap_rows"] == 0


def test_the_labs_replicate_then_split_leaks_test_rows(prepared):
    """The lab's order (copy every row 4 times, then split 70/30) puts copies of test rows in training."""
    sklearn = pytest.importorskip("sklearn.model_selection")
    x = np.concatenate([prepared.x_train, prepared.x_test])
    y = np.concatenate([prepared.y_train, prepared.y_test])
    x4, y4 = np.tile(x, (4, 1)), np.tile(y, 4)
    x_train, x_test, y_train, y_test = sklearn.train_test_split(x4, y4, test_size=0.30, random_state=0)
    assert overlap_rows(x_train, y_train, x_test, y_test) > 0.9 * len(x_test)


def test_the_overlap_join_counts_each_test_row_found_in_training(spark, prepared, tmp_path):
    """Copies of training rows (one of them twice in training), a zero of the other sign, and near misses:
    a feature one float step away, the same features with another species."""
    from penguin_lab.spark import write_parquet

    x, y = prepared.x_train[:50].copy(), prepared.y_train[:50].copy()
    x[0, 1] = 0.0
    copies = x[[0, 3, 7, 7]].copy()
    copies[0, 1] = -0.0
    nudged = x[[1]].copy()
    nudged[0, 2] = np.nextafter(nudged[0, 2], np.float32(np.inf))
    x_test = np.concatenate([copies, nudged, x[[4]], prepared.x_test[:20]])
    y_test = np.concatenate([y[[0, 3, 7, 7]], y[[1]], (y[[4]] + 1) % len(SPECIES), prepared.y_test[:20]])
    x_train, y_train = np.concatenate([x, x[[3]]]), np.concatenate([y, y[[3]]])
    paths = {}
    for side, (features, labels) in {"train": (x_train, y_train), "test": (x_test, y_test)}.items():
        frame = pd.DataFrame(features, columns=FEATURES).assign(Species=labels.astype("int32"))
        paths[side] = str(tmp_path / side)
        schema = write_parquet(spark.createDataFrame(frame), paths[side])
    assert overlap_rows(x_train, y_train, x_test, y_test) == 4
    assert overlap_join(spark, paths["train"], paths["test"], schema) == 4
    assert overlap_join(spark, paths["train"], paths["train"], schema) == len(x_train)


def test_exact_duplicate_rows_cannot_straddle_the_split(spark, raw):
    doubled = pd.concat([raw, raw.assign(Row=raw["Row"] + 1000)], ignore_index=True)
    prepared = prepare_splits(spark, doubled, TrainConfig())
    assert prepared.counts["duplicate_rows"] == 342
    assert prepared.counts["overlap_rows"] == 0


def test_island_names_that_differ_only_in_case_are_refused():
    """Otherwise "biscoe" would be a fourth island, with its own index and too few rows to learn it."""
    raw = pd.DataFrame({"Row": [2, 3, 4, 5, 6], "Island": ["Dream", "Biscoe", None, "Dream", "biscoe"]})
    with pytest.raises(LabError) as error:
        check_island_spellings(raw, "my.csv")
    assert str(error.value) == ("my.csv: row 6, column 'Island': 'biscoe' differs only in case from 'Biscoe' "
                                "(row 3); expected one spelling per island")
    check_island_spellings(raw[raw["Row"] != 6], "my.csv")  # one spelling each: fine
    check_island_spellings(raw[raw["Island"].isna()], "my.csv")  # no names at all: fine


@pytest.mark.parametrize("bucket_bits", [1, 12, 40])
@pytest.mark.parametrize("coarse_key", [False, True])
def test_the_split_is_the_first_rows_of_each_species_by_seeded_key(spark, raw, monkeypatch, bucket_bits, coarse_key):
    """The histogram's cut gives exactly the rows a full sort per species would: ties broken by Row."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from penguin_lab import split

    monkeypatch.setattr(split, "BUCKET_BITS", bucket_bits)
    if coarse_key:  # three key values: nearly every comparison is a tie, settled by Row
        fine = split.split_key
        monkeypatch.setattr(split, "split_key", lambda seed: F.pmod(fine(seed), F.lit(3)) - 1)
    data = spark_prepare(spark, raw).cache()
    for seed, fraction in [(0, 0.3), (5, 0.2), (9, 0.5)]:
        by_key = Window.partitionBy("Species").orderBy(split.split_key(seed), "Row")
        n_test = F.greatest(F.lit(1), F.round(F.count("*").over(Window.partitionBy("Species")) * fraction))
        ranked = data.select("Row", F.row_number().over(by_key).alias("rank"), n_test.alias("n_test"))
        expected = {r["Row"] for r in ranked.filter(F.col("rank") <= F.col("n_test")).collect()}
        chosen, sizes = split.spark_split(data, fraction, seed)
        chosen = {r["Row"] for r in chosen.filter("is_test").collect()}
        assert chosen == expected and len(chosen) == sum(split.test_rows(n, fraction) for n in (151, 68, 123))
        assert sizes == {label: (n, split.test_rows(n, fraction)) for label, n in enumerate((151, 123, 68))}


def test_test_rows_round_half_up_and_never_zero():
    from penguin_lab.split import test_rows

    assert [test_rows(n, 0.3) for n in (1, 2, 5, 10, 151)] == [1, 1, 2, 3, 45]
    assert test_rows(5, 0.5) == 3 and test_rows(3, 0.5) == 2


def test_inputs_are_standardized_with_the_training_rows_statistics_only(spark, raw, prepared):
    """Each prepared feature is (hand-scaled value - mean) / std, the mean and std being those of the
    training rows: the training features have mean 0 and spread 1, the test rows do not enter them."""
    hand_scaled = spark_prepare(spark, raw).toPandas().set_index("Row")
    train_rows = pd.read_parquet(prepared.train_path).set_index("Row")
    test_rows = pd.read_parquet(prepared.test_path).set_index("Row")
    for feature in FEATURES:
        values = hand_scaled.loc[train_rows.index, feature].to_numpy(np.float64)
        mean, std = prepared.standardization[feature]
        assert mean == pytest.approx(values.mean(), rel=1e-7) and std == pytest.approx(values.std(), rel=1e-7)
        everything = hand_scaled.loc[[*train_rows.index, *test_rows.index], feature].to_numpy(np.float64)
        assert mean != pytest.approx(everything.mean(), rel=1e-9)  # the test rows would move it
        for rows in (train_rows, test_rows):
            expected = ((hand_scaled.loc[rows.index, feature].to_numpy(np.float64) - mean) / std).astype(np.float32)
            assert rows[feature].to_numpy().tobytes() == expected.tobytes()
        assert abs(train_rows[feature].mean()) < 1e-5 and train_rows[feature].std(ddof=0) == pytest.approx(1, abs=1e-5)


def test_a_feature_with_no_spread_is_only_centred(spark, raw):
    one_island = raw[raw["Island"] == "Biscoe"].reset_index(drop=True)
    prepared = prepare_splits(spark, one_island, TrainConfig())
    assert prepared.standardization["IslandIdx"] == [0.0, 1.0]
    assert set(prepared.x_train[:, 0]) == {0.0}
