"""The Spark session: the notebook's on Databricks, an embedded local one elsewhere.

The embedded JVM spends most of a short run loading Spark's classes. `make install` records the
classes a preparation run loads into a class-data archive (Java's AppCDS) kept in the virtual
environment; later runs map that archive instead of loading and verifying each class again, which
roughly halves the time to a prepared dataset. Without the archive everything works, only slower.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

_LOG4J = Path(__file__).with_name("log4j2.properties")


def class_archive() -> Path:
    """The class-data archive of this environment's Spark (its classpath lives in this environment)."""
    return Path(sys.prefix) / "penguin-lab-spark.jsa"


# Inputs at least this large keep the JVM's optimizing compiler: it halves the time to read them.
LARGE_INPUT_BYTES = 4 << 20
HUGE_METHOD_BYTES = 8000  # HotSpot's HugeMethodLimit
TASK_INPUT_BYTES = 32 << 20  # spark.sql.files.maxPartitionBytes
# How Spark evaluates expressions: interpreted (small inputs), or as generated and compiled code (Spark's default).
INTERPRETED = {"spark.sql.codegen.wholeStage": "false", "spark.sql.codegen.factoryMode": "NO_CODEGEN"}
GENERATED_CODE = {"spark.sql.codegen.wholeStage": "true", "spark.sql.codegen.factoryMode": "FALLBACK"}


def java_options(record_archive: Path | None = None, large_input: bool = False) -> str:
    options = [
        f"-Dlog4j2.configurationFile=file:{_LOG4J}",  # only errors reach the console
        # An archive from another JVM is ignored with a warning; keep such notes off the output.
        "-Xlog:disable", "-Xlog:all=error:stderr",
    ]
    if large_input:
        # Spark's generated code for the record checks is one method larger than HotSpot compiles by
        # default (8000 bytes); left interpreted, it doubles the time to read.
        options.append("-XX:-DontCompileHugeMethods")
    else:
        # A short-lived JVM on small data: the quick first-tier compiler and a serial GC start faster
        # than the optimizing compiler pays back.
        options += ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]
    if record_archive is not None:
        options.append(f"-XX:ArchiveClassesAtExit={record_archive}")
    elif class_archive().is_file():
        options.append(f"-XX:SharedArchiveFile={class_archive()}")
    return " ".join(options)


def jvm_log() -> Path:
    """Where this process's Spark JVM writes its console (start-up notes, logged errors and their stacks)."""
    return Path(tempfile.gettempdir()) / f"penguin-lab-spark-{os.getpid()}.log"


def _open_jvm_log():
    """This process's JVM log, for appending; logs older than a day, of runs long finished, are removed."""
    for old in jvm_log().parent.glob("penguin-lab-spark-*.log"):
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > 86400:
                old.unlink()
    return open(jvm_log(), "ab")


def input_bytes(path) -> int:
    """The size of a local input file or folder (0 for a table or a remote path): to pick the JVM's settings."""
    path = Path(str(path))
    with contextlib.suppress(OSError):
        if path.is_file():
            return path.stat().st_size
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return 0


def get_spark(record_archive: Path | None = None, large_input: bool = False, torch_workers: bool = False):
    """The active session (a Databricks notebook's `spark`), or a new embedded local one. `torch_workers`: its
    Python workers run PyTorch (batch scoring), so they start with it imported (torch_daemon)."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway

    # Python tasks (TorchDistributor's barrier tasks) must run in this interpreter, not `python3` on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    master = os.environ.get("PENGUIN_LAB_SPARK_MASTER", "local[2]")
    conf = SparkConf().setMaster(master).setAppName("penguin-lab").setAll([
        ("spark.ui.enabled", "false"),
        ("spark.ui.showConsoleProgress", "false"),
        # Two shuffle partitions suit the lab's data; a large input gets Spark's 200, which adaptive execution
        # merges back to about 64 MB each: a sort of tens of millions of rows in one task runs out of heap.
        ("spark.sql.shuffle.partitions", "200" if large_input else "2"),
        ("spark.sql.execution.arrow.pyspark.enabled", "true"),
        # A task per 32 MB of input, not 128 MB: a few large tasks leave a core idle while the last one runs.
        ("spark.sql.files.maxPartitionBytes", str(TASK_INPUT_BYTES)),
        # PySpark 4 records the Python line of every column function in the JVM, several calls to it each: the
        # record checks alone are thousands. Errors here are one line that names the data, not the code.
        ("spark.python.sql.dataFrameDebugging.enabled", "false"),
        # HotSpot compiles no method over 8000 bytes, and the record checks fuse into one far larger: beyond
        # that size Spark runs the stage's expressions as separately generated, smaller methods instead.
        ("spark.sql.codegen.hugeMethodLimit", str(HUGE_METHOD_BYTES)),
        ("spark.driver.extraJavaOptions", java_options(record_archive, large_input)),
    ])
    if not large_input:
        # A few hundred rows: interpreting each query's expressions is faster than generating and compiling
        # its code, which a short run would use for milliseconds.
        conf.setAll(INTERPRETED.items())
    if torch_workers:
        conf.set("spark.python.daemon.module", "penguin_lab.torch_daemon")
    if os.environ.get("PENGUIN_LAB_DRIVER_MEMORY"):  # the heap is fixed when spark-submit starts the JVM
        conf.set("spark.driver.memory", os.environ["PENGUIN_LAB_DRIVER_MEMORY"])
    cluster = re.fullmatch(r"local-cluster\[\s*\d+\s*,\s*\d+\s*,\s*(\d+)\s*\]", master)
    if cluster:  # Spark's default 1g executors do not fit workers given less memory
        conf.set("spark.executor.memory", f"{cluster[1]}m")
    if SparkContext._gateway is None:
        # The JVM's console (the launcher's "Using incubator modules", Spark's "Setting default log
        # level") goes to a log file, not the user's terminal; errors reach Python as exceptions.
        with _open_jvm_log() as log:  # the JVM prints some start-up failures on stdout
            SparkContext(conf=conf, gateway=launch_gateway(conf, popen_kwargs={"stdout": log, "stderr": log}))
    spark = SparkSession.builder.config(conf=conf).getOrCreate()
    # PySpark 4 also logs a failed DataFrame call as a JSON record on stderr; the exception is enough.
    with contextlib.suppress(ImportError):
        from pyspark.logger import PySparkLogger
        for name in ("DataFrameQueryContextLogger", "SQLQueryContextLogger"):
            PySparkLogger.getLogger(name).setLevel(logging.CRITICAL)
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def spark_path(path: str) -> str:
    """A local path as Spark reads it: /dbfs/x is dbfs:/x on Databricks; glob characters are escaped."""
    databricks = on_databricks()
    if databricks and path.startswith("/dbfs/"):
        return "dbfs:/" + path[len("/dbfs/"):]
    if re.match(r"^[a-z][a-z0-9+.-]*:", path) or path.startswith("/Volumes/"):
        return path
    local = re.sub(r"([*?\[\]{}\\])", r"\\\1", str(Path(path).resolve()))
    # On Databricks a path without a scheme is on DBFS; the driver's own files (a Git folder, /tmp) are file:.
    return "file:" + local if databricks else local


def write_parquet(frame, path: str, options: dict | None = None):
    """`frame` as Parquet at the Spark path `path`, replacing what is there; returns its schema, for read_parquet."""
    frame.write.mode("overwrite").options(**(options or {})).parquet(path)
    return frame.schema


def read_parquet(spark, path: str, schema):
    """Parquet that this run wrote at the Spark path `path`, read with the schema it was written with: otherwise
    Spark runs a job to read a footer for the schema, every time (a tenth of a second on the lab's data)."""
    return spark.read.schema(schema).parquet(path)


def shared_temporary_folder(prefix: str) -> Path:
    """A new temporary folder that Spark's executors can reach too: under /dbfs/tmp on Databricks, where the
    driver's /tmp is a disk of its own on a multi-node cluster; the system's temporary folder elsewhere."""
    root = None
    if on_databricks() and os.access("/dbfs/tmp", os.W_OK):
        root = "/dbfs/tmp"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))
