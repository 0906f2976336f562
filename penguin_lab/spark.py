"""The Spark session: the notebook's on Databricks, an embedded local one elsewhere.

The embedded JVM spends most of a short run loading Spark's classes. `make install` records the
classes a preparation run loads into a class-data archive (Java's AppCDS) kept in the virtual
environment; later runs map that archive instead of loading and verifying each class again, which
roughly halves the time to a prepared dataset. Without the archive everything works, only slower.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_LOG4J = Path(__file__).with_name("log4j2.properties")


def class_archive() -> Path:
    """The class-data archive of this environment's Spark (its classpath lives in this environment)."""
    return Path(sys.prefix) / "penguin-lab-spark.jsa"


def java_options(record_archive: Path | None = None) -> str:
    options = [
        f"-Dlog4j2.configurationFile=file:{_LOG4J}",  # only errors reach the console
        # A short-lived JVM on small data: the quick first-tier compiler and a serial GC start faster
        # than the optimizing compiler pays back.
        "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC",
        # An archive from another JVM is ignored with a warning; keep such notes off the output.
        "-Xlog:disable", "-Xlog:all=error:stderr",
    ]
    if record_archive is not None:
        options.append(f"-XX:ArchiveClassesAtExit={record_archive}")
    elif class_archive().is_file():
        options.append(f"-XX:SharedArchiveFile={class_archive()}")
    return " ".join(options)


def get_spark(record_archive: Path | None = None):
    """The active session (a Databricks notebook's `spark`), or a new embedded local one."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    # Python tasks (TorchDistributor's barrier tasks) must run in this interpreter, not `python3` on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master(os.environ.get("PENGUIN_LAB_SPARK_MASTER", "local[2]"))
        .appName("penguin-lab")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.driver.extraJavaOptions", java_options(record_archive))
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _record(archive: Path) -> None:
    """Run a preparation on the shipped data in a JVM that writes its classes to `archive` at exit."""
    from .config import DEFAULT_DATA, TrainConfig
    from .data import prepare_splits
    from .validate import read_penguins_csv

    raw, _ = read_penguins_csv(DEFAULT_DATA)
    spark = get_spark(record_archive=archive)
    prepare_splits(spark, raw, TrainConfig())
    # The JVM writes the archive as it exits, which it does when its stdin closes; wait for that.
    jvm = spark.sparkContext._gateway.proc
    spark.stop()
    jvm.stdin.close()
    jvm.wait(timeout=300)


def build_class_archive() -> Path:
    """Record the archive in a child process; it is complete once that JVM has exited, then renamed."""
    final = class_archive()
    partial = final.with_name(f"{final.name}.partial-{os.getpid()}")
    try:
        subprocess.run([sys.executable, "-m", "penguin_lab.spark", "--record", str(partial)], check=True,
                       stdout=subprocess.DEVNULL, timeout=600)
        if not partial.is_file() or partial.stat().st_size == 0:
            raise RuntimeError(f"the JVM wrote no class archive to {partial}")
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    return final


if __name__ == "__main__":
    if sys.argv[1:2] == ["--record"]:
        _record(Path(sys.argv[2]))
    else:
        path = build_class_archive()
        print(f"Spark class-data archive: {path} ({path.stat().st_size >> 20} MiB)")
