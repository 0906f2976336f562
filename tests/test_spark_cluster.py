"""get_spark() on real clusters: tasks run in executor JVMs of their own, and files added reach them."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from spark_cluster import LOCAL_CLUSTER, cluster_env, standalone_master  # noqa: F401 (a fixture)

pytestmark = pytest.mark.cluster

# Run in a child process (this one already has the suite's local SparkContext). Each task reports the
# JVM that started its Python worker: the nearest `java` among the worker's ancestors.
JOB = r"""
import json, os, sys, time
from pyspark import SparkFiles
from penguin_lab.spark import get_spark

def owning_jvm(pid):
    while pid > 1:
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read().split(b"\0")
        if os.path.basename(command[0]) == b"java":
            return pid, b"org.apache.spark.executor.CoarseGrainedExecutorBackend" in command
    return None, False

spark = get_spark()
sc = spark.sparkContext
deadline = time.monotonic() + 60  # executors register a few seconds after the context starts
while sc._jsc.sc().getExecutorIds().size() < 2 and time.monotonic() < deadline:
    time.sleep(0.2)
ids = sc._jsc.sc().getExecutorIds()
shared = os.path.join(sys.argv[1], "shared.txt")
with open(shared, "w") as f:
    f.write("penguins")
sc.addFile(shared)

def task(_):
    time.sleep(0.3)  # long enough that both executors take tasks
    path = os.path.abspath(SparkFiles.get("shared.txt"))
    with open(path) as f:
        text = f.read()
    return [os.getpid(), *owning_jvm(os.getpid()), text, os.path.dirname(path)]

print(json.dumps({"python": os.getpid(), "jvm": sc._gateway.proc.pid, "app": sc.applicationId,
                  "executors": [ids.apply(i) for i in range(ids.size())],
                  "driver_files": os.path.abspath(SparkFiles.getRootDirectory()),
                  "tasks": sc.parallelize(range(8), 8).map(task).collect()}))
spark.stop()
"""


def run_job(master, tmp_path):
    env = {**os.environ, **cluster_env(master, tmp_path)}
    result = subprocess.run([sys.executable, "-c", JOB, str(tmp_path)], capture_output=True, text=True,
                            timeout=300, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def assert_ran_in_two_executor_jvms(job):
    assert sorted(job["executors"]) == ["0", "1"], job["executors"]
    jvms = {jvm for _, jvm, _, _, _ in job["tasks"]}
    assert len(jvms) == 2 and job["jvm"] not in jvms, (jvms, job["jvm"])
    assert all(is_executor for _, _, is_executor, _, _ in job["tasks"]), job["tasks"]
    assert job["python"] not in {pid for pid, *_ in job["tasks"]}


def test_standalone_master_runs_tasks_in_executor_jvms(standalone_master, tmp_path):
    assert standalone_master.startswith("spark://127.0.0.1:")
    assert_ran_in_two_executor_jvms(run_job(standalone_master, tmp_path))


def test_local_cluster_runs_tasks_in_executor_jvms(tmp_path):
    job = run_job(LOCAL_CLUSTER, tmp_path)
    assert_ran_in_two_executor_jvms(job)
    # Its workers keep the executors' folders under the SPARK_HOME cluster_env gave, not the venv.
    assert (tmp_path / "spark-home" / "work" / job["app"]).is_dir()


def test_added_file_is_read_in_the_executors_on_a_standalone_master(standalone_master, tmp_path):
    job = run_job(standalone_master, tmp_path)
    assert {text for *_, text, _ in job["tasks"]} == {"penguins"}
    # Each executor read its own copy, in its working folder <work-dir>/<app id>/<executor id>.
    roots = {root for *_, root in job["tasks"]}
    assert len(roots) == 2 and job["driver_files"] not in roots, roots
    assert all(root.rstrip("/").split("/")[-2] == job["app"] for root in roots), roots
