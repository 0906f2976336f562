"""Synthetic penguins: per-species Gaussians fitted to the real data, drawn by Spark in parallel.

The fitted parameters are a few dozen numbers that go into Spark expressions as literals, so every
row is generated and written by the executors: the driver never holds the data, and any row count
fits in bounded memory. The same seed and row count give the same files on any machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np

from .artifacts import new_staging_folder
from .config import DEFAULT_DATA, ISLAND, LABEL, MEASUREMENTS
from .errors import LabError

FORMATS = ("csv", "parquet")
ROWS_PER_PARTITION = 2_000_000
DECIMALS = {"CulmenLength": 1, "CulmenDepth": 1, "FlipperLength": 0, "BodyMass": 0}  # as in the real file


def fit_species_gaussians(path=DEFAULT_DATA) -> list:
    """Per species present: share of rows, island shares, mean, covariance, its Cholesky factor, minima."""
    import pandas as pd

    try:  # the shipped file, or one like it: the few hundred rows of the real penguins
        complete = pd.read_csv(path, usecols=[ISLAND, *MEASUREMENTS, LABEL]).dropna()
    except (OSError, ValueError) as e:
        raise LabError(f"{path}: cannot read the penguins to fit ({e}); "
                       f"expected a CSV with the columns {', '.join([ISLAND, *MEASUREMENTS, LABEL])}") from None
    params = []
    for species, rows in complete.groupby(LABEL):
        values = rows[MEASUREMENTS].to_numpy(np.float64)
        cov = np.cov(values, rowvar=False)
        try:
            cholesky = np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            raise LabError(f"{path}: species {int(species)} has {len(rows)} complete rows whose measurements "
                           f"do not vary independently; expected enough varied rows to fit a Gaussian") from None
        islands = rows[ISLAND].value_counts(normalize=True).sort_index()
        params.append({"species": int(species), "share": len(rows) / len(complete),
                       "islands": {str(k): float(v) for k, v in islands.items()},
                       "mean": values.mean(axis=0), "cov": cov, "cholesky": cholesky,
                       "minimum": values.min(axis=0)})
    return params


def default_partitions(rows: int) -> int:
    """From the row count alone: Spark's random streams depend on the partitioning."""
    return max(1, -(-rows // ROWS_PER_PARTITION))


def _pick(u, thresholds: list, values: list):
    """values[i] for the first cumulative share u falls below (the last one otherwise, despite rounding)."""
    from pyspark.sql import functions as F

    expr = F.lit(values[-1])
    for limit, value in reversed(list(zip(thresholds[:-1], values[:-1]))):
        expr = F.when(u < F.lit(limit), F.lit(value)).otherwise(expr)
    return expr


def _by_species(params: list, make):
    from pyspark.sql import functions as F

    expr = make(params[-1])
    for p in reversed(params[:-1]):
        expr = F.when(F.col(LABEL) == p["species"], make(p)).otherwise(expr)
    return expr


def _check_whole(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < high:
        raise LabError(f"{name} {value!r}: expected a whole number from {low} to {high - 1}")


def check_out(out) -> Path:
    """The absolute output folder, which must not exist or be empty; LabError otherwise."""
    out = Path(os.path.abspath(out))
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise LabError(f"{out}: exists and is not a folder; expected a new or empty folder for the part files")
    if out.is_dir() and any(out.iterdir()):
        raise LabError(f"{out}: exists and is not empty; expected a new or empty folder (nothing is replaced)")
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise LabError(f"{out}: cannot write in {ancestor}; expected a folder you may write to")
    return out


def synthesize(spark, rows: int, out, fmt: str = "csv", seed: int = 0, partitions: int | None = None,
               data=DEFAULT_DATA) -> dict:
    """Write `rows` synthetic penguins as csv or parquet part files into the folder `out`.

    Columns as in the real CSV. `spark` None: the active or a new local session, started only after
    the arguments have been checked. Returns rows, path, format, files (part files) and seconds.
    """
    start = time.perf_counter()
    if fmt not in FORMATS:
        raise LabError(f"format {fmt!r}: unknown; expected one of {', '.join(FORMATS)}")
    _check_whole("rows", rows, 1, 2**63)
    _check_whole("seed", seed, 0, 2**32)
    partitions = default_partitions(rows) if partitions is None else partitions
    _check_whole("partitions", partitions, 1, 2**24)  # the seed spacing below allows this many
    out = check_out(out)
    params = fit_species_gaussians(data)
    if spark is None:
        from .spark import get_spark
        spark = get_spark()
    from pyspark.sql import functions as F

    # Partition p of rand(s) is seeded with s + p, so rand(s + 1) would repeat rand(s) one partition
    # later; spacing the seeds keeps every (seed, column, partition) stream distinct.
    def stream(k):
        return (seed << 31) + (k << 24)

    shares = np.cumsum([p["share"] for p in params]).tolist()
    drawn = spark.range(rows, numPartitions=partitions).select(
        F.rand(stream(0)).alias("u_species"), F.rand(stream(1)).alias("u_island"),
        *[F.randn(stream(2 + i)).alias(f"z{i}") for i in range(len(MEASUREMENTS))])
    # A separate projection: the optimizer never duplicates a random column into several expressions.
    labelled = drawn.withColumn(LABEL, _pick(F.col("u_species"), shares, [p["species"] for p in params]))

    def island(p):
        return _pick(F.col("u_island"), np.cumsum(list(p["islands"].values())).tolist(), list(p["islands"]))

    def measurement(i, name):
        def make(p):  # mean + L @ z, no lower than a quarter of the species' smallest real value
            value = F.lit(float(p["mean"][i]))
            for j in range(i + 1):
                value = value + F.lit(float(p["cholesky"][i, j])) * F.col(f"z{j}")
            floor = max(round(float(p["minimum"][i]) / 4, DECIMALS[name]), 10.0 ** -DECIMALS[name])
            return F.greatest(value, F.lit(floor))
        rounded = F.round(_by_species(params, make), DECIMALS[name])
        # Whole numbers in the CSV as in the real file ("181", not "181.0"); doubles in Parquet.
        return (rounded.cast("int") if fmt == "csv" and DECIMALS[name] == 0 else rounded).alias(name)

    table = labelled.select(_by_species(params, island).alias(ISLAND),
                            *[measurement(i, name) for i, name in enumerate(MEASUREMENTS)],
                            F.col(LABEL).cast("int").alias(LABEL))

    # Spark writes into a hidden folder beside `out`, renamed into place only once complete. A killed
    # run's folder is removed by the next run into `out` (as for results folders).
    staging = new_staging_folder(out, "output folder")
    try:
        written = staging / "part-files"
        _write(spark, table, fmt, str(written), tag=f"penguin-lab-synth-{staging.name}")
        for crc in written.glob(".*.crc"):  # Hadoop's checksums of the local files: noise to a reader
            crc.unlink()
        files = len(list(written.glob("part-*")))
        check_out(out)  # again: something may have appeared there meanwhile
        if out.is_dir():
            out.rmdir()
        os.replace(written, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"rows": rows, "path": str(out), "format": fmt, "files": files,
            "seconds": time.perf_counter() - start}


def _write(spark, table, fmt: str, path: str, tag: str) -> None:
    """The Spark write, in a thread of its own: an interrupt then reaches Python, not a py4j call."""
    failed, done = [], threading.Event()
    try:
        context = spark.sparkContext
        add, remove, cancel = context.addJobTag, context.removeJobTag, context.cancelJobsWithTag
    except Exception:  # Spark Connect: no SparkContext; the session's tags interrupt its operations
        add, remove, cancel = spark.addTag, spark.removeTag, spark.interruptTag

    def work():
        add(tag)  # tags are per thread
        try:
            writer = table.write.mode("errorifexists")
            writer.csv(path, header=True) if fmt == "csv" else writer.parquet(path)
        except BaseException as e:
            failed.append(e)
        finally:
            remove(tag)
            done.set()

    thread = threading.Thread(target=work, name=tag, daemon=True)
    # An interrupt aborts the write on purpose, which Spark's writer would log as an error with a stack
    # trace; a real failure still reaches the caller as the exception.
    with _quiet(spark, "org.apache.spark.sql.execution.datasources.FileFormatWriter"):
        thread.start()
        try:
            while not done.wait(0.2):  # an Event, not join(): an interrupted join() can lose track of the thread
                pass
        except BaseException:
            # Stop the tasks before the caller removes their folder. Again until the write returns: a job
            # submitted just after a cancel is not cancelled by it.
            for _ in range(60):
                cancel(tag)
                if done.wait(1):
                    break
            raise
    if failed:
        raise failed[0]


@contextlib.contextmanager
def _quiet(spark, logger: str):
    try:  # the JVM's log4j is reachable in classic Spark only; elsewhere the log stays as it is
        log4j = spark.sparkContext._jvm.org.apache.logging.log4j
        previous = log4j.LogManager.getLogger(logger).getLevel()
        log4j.core.config.Configurator.setLevel(logger, log4j.Level.OFF)
    except Exception:
        yield
        return
    try:
        yield
    finally:
        log4j.core.config.Configurator.setLevel(logger, previous)
