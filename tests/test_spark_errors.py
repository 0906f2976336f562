"""Real Spark failures (memory, disk, a JVM that cannot start) as one line naming the setting to change,
and no JVM start-up chatter on the CLI's stderr.

Every failure here really happens, in a child process with its own JVM sized to fail.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, run_cli
from spark_cluster import cluster_env

# Runs the named cases in one session and prints {case: what spark_failure and short_spark_error said}.
CASES = r"""
import json, os, signal, sys
from penguin_lab.spark import get_spark
from penguin_lab.spark_errors import short_spark_error, spark_failure

def python_grabs_1g(_):
    return len(bytearray(1 << 30))

CASES = {
    "start": lambda spark: None,
    # 600 rows of 1 MiB: small compressed task results, but more than a 512 MiB driver holds at once.
    "driver_collect": lambda spark: spark.range(0, 600, 1, 20).selectExpr("repeat('x', 1 << 20) s").collect(),
    # Each task builds a 300 MiB string inside the driver's JVM (local mode), which dies of it.
    "driver_task": lambda spark: spark.range(0, 2, 1, 2).selectExpr(
        "length(repeat(cast(id AS string), 300 << 20))").collect(),
    # One group of 1000 values of 1 MiB, collected into one list by one 512 MiB executor.
    "executor_group": lambda spark: spark.range(0, 1000, 1, 1).selectExpr(
        "0 k", "repeat('x', 1 << 20) s").groupBy("k").agg({"s": "collect_list"}).collect(),
    "python_memory": lambda spark: spark.sparkContext.parallelize(range(2), 2).map(python_grabs_1g).collect(),
    "python_killed": lambda spark: spark.sparkContext.parallelize(range(2), 2).map(
        lambda _: os.kill(os.getpid(), signal.SIGKILL)).collect(),
    "result_size": lambda spark: spark.range(0, 8, 1, 8).selectExpr(
        "concat_ws('', transform(sequence(1, 3000), i -> sha2(concat(uuid(), i), 512)))").collect(),
    # 50 MB of hex that does not compress away, shuffled through spark.local.dir.
    "disk_full": lambda spark: spark.range(0, 400000, 1, 2).selectExpr(
        "sha2(cast(id AS string), 512) s").repartition(3).selectExpr("max(s)").collect(),
    "python_error": lambda spark: spark.sparkContext.parallelize([0]).map(lambda x: 1 // x).collect(),
    "analysis_error": lambda spark: spark.range(2).select("no_such_column").collect(),
    "missing_input": lambda spark: spark.sparkContext.textFile("/no/such/penguins.csv").count(),
}
results, spark = {}, None
for name in sys.argv[1:]:
    try:
        spark = spark or get_spark()  # inside the try: starting Spark is one of the failures
        CASES[name](spark)
        results[name] = None
    except Exception as e:
        failure = spark_failure(e)
        results[name] = {"failure": failure and str(failure), "short": short_spark_error(e)}
print(json.dumps(results))
"""


def run_cases(tmp_path, *cases, env=None, conf=None, prefix=()):
    full_env = {**os.environ, "TMPDIR": str(tmp_path), **(env or {})}  # the JVM's log lands in tmp_path
    if conf:
        full_env["PYSPARK_SUBMIT_ARGS"] = " ".join(f"--conf {k}={v}" for k, v in conf.items()) + " pyspark-shell"
    result = subprocess.run([*prefix, sys.executable, "-c", CASES, *cases], capture_output=True, text=True,
                            timeout=300, env=full_env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return {**json.loads(result.stdout.splitlines()[-1]), "stderr": result.stderr}


def one_line_naming(outcome, *settings):
    assert outcome is not None, "the job did not fail"
    message = outcome["failure"]
    assert message is not None, f"not recognised; it was: {outcome['short']}"
    assert "\n" not in message and "\tat " not in message and len(message) < 400, message
    for setting in settings:
        assert setting in message, (setting, message)
    return message


@pytest.fixture(scope="module")
def local_failures(tmp_path_factory):
    """The failures a local[2] session survives, all in one session (one JVM start)."""
    return run_cases(tmp_path_factory.mktemp("local"), "python_memory", "python_killed", "result_size",
                     "python_error", "analysis_error", "missing_input",
                     conf={"spark.executor.pyspark.memory": "512m", "spark.driver.maxResultSize": "1m"})


def test_driver_heap_exhausted_by_collect(tmp_path):
    outcome = run_cases(tmp_path, "driver_collect", env={"PENGUIN_LAB_DRIVER_MEMORY": "512m"})["driver_collect"]
    message = one_line_naming(outcome, "spark.driver.memory", "PENGUIN_LAB_DRIVER_MEMORY=")
    assert message.startswith("Spark ran out of memory in the driver (java.lang.OutOfMemoryError: Java heap space)")


def test_driver_jvm_killed_by_a_task_out_of_memory_in_local_mode(tmp_path):
    # Python only sees the connection to its dead JVM go; the JVM's log says why it died.
    outcome = run_cases(tmp_path, "driver_task", env={"PENGUIN_LAB_DRIVER_MEMORY": "512m"})["driver_task"]
    message = one_line_naming(outcome, "spark.driver.memory", "PENGUIN_LAB_DRIVER_MEMORY=")
    assert "OutOfMemoryError" in message


def test_driver_memory_too_small_for_spark_to_start(tmp_path):
    # 64m reaches the JVM as its heap (of which Spark sees a little less) and Spark refuses it.
    outcome = run_cases(tmp_path, "start", env={"PENGUIN_LAB_DRIVER_MEMORY": "64m"})["start"]
    message = one_line_naming(outcome, "spark.driver.memory", "PENGUIN_LAB_DRIVER_MEMORY=")
    heap = re.search(r"System memory (\d+) must be at least \d+", message)
    assert heap and 48 << 20 < int(heap[1]) <= 64 << 20, message


def test_a_jvm_that_cannot_start_says_why(tmp_path):
    outcome = run_cases(tmp_path, "start", env={"PENGUIN_LAB_DRIVER_MEMORY": "lots"})["start"]
    message = one_line_naming(outcome, "spark.driver.memory", "PENGUIN_LAB_DRIVER_MEMORY")
    assert message.startswith("Spark's JVM did not start (Invalid maximum heap size: -Xmxlots)"), message


@pytest.mark.cluster
def test_executor_heap_exhausted_on_a_cluster(tmp_path):
    env = cluster_env("local-cluster[1,1,512]", tmp_path)  # get_spark gives the executor the worker's 512m
    outcome = run_cases(tmp_path, "executor_group", env=env, conf={"spark.task.maxFailures": "1"})["executor_group"]
    message = one_line_naming(outcome, "spark.executor.memory")
    assert message.startswith("Spark ran out of memory in executor 0"), message


def test_python_worker_out_of_its_memory_limit(local_failures):
    message = one_line_naming(local_failures["python_memory"], "spark.executor.pyspark.memory",
                              "spark.python.worker.memory")
    assert "(MemoryError)" in message


def test_python_worker_killed(local_failures):
    # Killed with SIGKILL here, as the kernel kills a worker that takes too much memory.
    message = one_line_naming(local_failures["python_killed"], "spark.executor.pyspark.memory",
                              "spark.python.worker.memory")
    assert message.startswith("a Python worker died"), message


def test_results_bigger_than_the_driver_accepts(local_failures):
    message = one_line_naming(local_failures["result_size"], "spark.driver.maxResultSize", "spark.driver.memory")
    assert "(1024.0 KiB)" in message


def test_no_space_left_for_spark_local_dir(tmp_path):
    """spark.local.dir on a 2 MiB tmpfs, mounted in a private mount namespace (no privileges needed)."""
    small, roomy = tmp_path / "small", tmp_path / "roomy"
    small.mkdir(), roomy.mkdir()
    mount = ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=2m tmpfs "$0" && exec "$@"', str(small)]
    if subprocess.run([*mount, "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs in a user namespace here")
    conf = {"spark.local.dir": str(small)}
    outcome = run_cases(tmp_path, "disk_full", conf=conf, prefix=mount)["disk_full"]
    message = one_line_naming(outcome, "spark.local.dir", "SPARK_LOCAL_DIRS=")
    assert message.startswith("Spark ran out of disk space (java.io.IOException: No space left on device)"), message
    # The advice works: SPARK_LOCAL_DIRS overrides spark.local.dir.
    assert run_cases(tmp_path, "disk_full", conf=conf, prefix=mount,
                     env={"SPARK_LOCAL_DIRS": str(roomy)})["disk_full"] is None


def test_other_errors_are_not_taken_for_memory_and_shorten_to_one_line(local_failures):
    shorts = {}
    for case in ("python_error", "analysis_error", "missing_input"):
        outcome = local_failures[case]
        assert outcome is not None and outcome["failure"] is None, (case, outcome)
        assert "\n" not in outcome["short"] and "\tat " not in outcome["short"], outcome["short"]
        shorts[case] = outcome["short"]
    assert shorts["python_error"] == "a Spark task failed: ZeroDivisionError: integer division or modulo by zero"
    assert shorts["analysis_error"].startswith("AnalysisException: [UNRESOLVED_COLUMN.WITH_SUGGESTION]")
    assert "'Project" not in shorts["analysis_error"]  # the query plan after the message is left out
    # PySpark's JSON record of the failed DataFrame call stays off stderr too.
    assert "DataFrameQueryContextLogger" not in local_failures["stderr"], local_failures["stderr"]
    assert shorts["missing_input"].startswith("org.apache.hadoop.mapred.InvalidInputException: "
                                              "Input path does not exist: file:/no/such/penguins.csv")


CHATTER = ["WARNING: Using incubator modules", 'Setting default log level to "WARN".',
           "To adjust logging level use sc.setLogLevel"]


def test_cli_run_keeps_jvm_start_up_chatter_off_stderr(tmp_path):
    result = run_cli("run", "--epochs", "1", "--out", str(tmp_path / "run"), env={"TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    for line in CHATTER:
        assert line not in result.stderr, result.stderr
    # It went to the JVM's log instead, where real JVM errors go too.
    logs = list(tmp_path.glob("penguin-lab-spark-*.log"))
    assert len(logs) == 1, logs
    assert all(line in logs[0].read_text() for line in CHATTER)
