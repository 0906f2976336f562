"""The stratified, seeded split, in Spark: within each species, a fixed share of the rows goes to test.

Rows are ranked by a hash of the seed and the row's values (then by Row), so the same seed picks the
same rows on any cluster, with any number of partitions and in any file order. The test set is the
first `n_test` rows of each species in that ranking. Finding where it ends needs no sort of the data:
a histogram of the hashes by their top bits names the one bucket where each species' cut falls, and
only that bucket's rows (about 1/4096 of a species) reach the driver to be ranked.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from .config import FEATURES, ISLAND, LABEL

BUCKET_BITS = 12


def split_key(seed: int):
    """The seeded hash a row is ranked by (signed 64 bits; Row breaks the rare tie)."""
    from pyspark.sql import functions as F

    return F.xxhash64(F.lit(seed), *[F.col(c) for c in [ISLAND, *FEATURES[1:], LABEL]])


def test_rows(n: int, test_fraction: float) -> int:
    """How many of a species' n rows go to test: n * fraction rounded half up, and at least one."""
    return max(1, int(Decimal(repr(n * test_fraction)).quantize(Decimal(1), rounding=ROUND_HALF_UP)))


def spark_split(data, test_fraction: float, seed: int):
    """`data` with a boolean `is_test`: per species, the first n_test rows by (key, Row) are the test set.
    Returns it and, per species, (rows, test rows).

    Two small Spark jobs find each species' cut (key, Row); the result is a plain column expression,
    so `data` (best cached or written first: it is read three times) is never sorted or shuffled."""
    from pyspark.sql import functions as F

    keyed = data.withColumn("_key", split_key(seed))
    bucket = F.shiftright("_key", 64 - BUCKET_BITS)
    histogram = {}
    for row in keyed.groupBy(LABEL, bucket.alias("bucket")).count().collect():
        histogram.setdefault(row[LABEL], []).append((row["bucket"], row["count"]))
    cuts, sizes = {}, {}
    for label, counts in histogram.items():
        counts.sort()
        rows = sum(n for _, n in counts)
        rank = test_rows(rows, test_fraction)
        sizes[label] = (rows, rank)
        for cut_bucket, n in counts:  # the bucket holding the rank-th row, and its rank there
            if rank <= n:
                break
            rank -= n
        cuts[label] = (cut_bucket, rank)
    in_cut = F.lit(False)
    for label, (cut_bucket, _) in cuts.items():
        in_cut = in_cut | ((F.col(LABEL) == label) & (bucket == cut_bucket))
    near = {}
    for row in keyed.filter(in_cut).select(LABEL, "_key", "Row").collect():
        near.setdefault(row[LABEL], []).append((row["_key"], row["Row"]))
    is_test = F.lit(False)
    for label, (_, rank) in cuts.items():
        last_key, last_row = sorted(near[label])[rank - 1]  # the last test row of this species
        before = (F.col("_key") < last_key) | ((F.col("_key") == last_key) & (F.col("Row") <= last_row))
        is_test = F.when(F.col(LABEL) == label, before).otherwise(is_test)
    return keyed.withColumn("is_test", is_test).drop("_key"), sizes
