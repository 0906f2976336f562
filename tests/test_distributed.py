"""Distributed training with real Horovod processes and the real TorchDistributor on a local Spark.

Every engine and mode trains 2 processes for the lab's 100 epochs; each run takes ten to thirty
seconds on two cores. Horovod is built by `make horovod`; without it the Horovod tests are skipped,
except under CI=true, where a missing Horovod fails them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from penguin_lab.artifacts import load_model
from penguin_lab.batches import parquet_rows_and_bytes, part_files
from penguin_lab.config import TrainConfig
from penguin_lab.data import PreparedData
from penguin_lab.distributed import (FAIL_ON_RANK_ENV, DistributedJob, DistributedTrainingError, HorovodRunner,
                                     WorkerOutput, failure_error, failure_reports, horovod_available, run_horovod,
                                     run_torch, state_checksum, train_distributed)
from penguin_lab.errors import LabError

from conftest import REPO, assert_one_line_error, run_cli

# (engine, local_mode): local mode starts processes on the driver; otherwise Horovod's np > 0 and
# TorchDistributor's Spark barrier tasks (on the local[2] master).
ENGINE_MODES = [("horovod", True), ("horovod", False), ("torch", True), ("torch", False)]
MODE_IDS = [f"{engine}-{'local' if local else 'cluster'}" for engine, local in ENGINE_MODES]

# A run whose worker fails must end well within this; the engines' own waits are far longer.
FAILURE_DEADLINE_SECONDS = 60


def require_horovod() -> None:
    if horovod_available():
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("Horovod is not installed; under CI the Horovod tests must run (make horovod builds it)")
    pytest.skip("Horovod is not installed (make horovod builds it)")


def require_engine(engine: str) -> None:
    if engine == "horovod":
        require_horovod()


# --- processes -------------------------------------------------------------------------------------------

def process_tree(root: int = None) -> dict:
    """pid -> command line, for every live descendant of `root` (this test process by default)."""
    root = os.getpid() if root is None else root
    children = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":  # already dead, only waiting for its parent to read the exit code
            continue
        children[int(fields[1])].append(int(entry))
    tree, stack = {}, [root]
    while stack:
        for child in children.get(stack.pop(), []):
            try:
                tree[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            stack.append(child)
    return tree


def lives_as_long_as_this_process(cmdline: str) -> bool:
    """Spark's JVM and Python worker daemon (one per session), and multiprocessing's resource tracker
    (one per process, started by the first Horovod run), are shared helpers, not strays of one run."""
    return ("org.apache.spark.deploy.SparkSubmit" in cmdline or "-m pyspark.daemon" in cmdline
            or "from multiprocessing.resource_tracker import main" in cmdline)


def strays(before: dict, wait_seconds: float = 15.0) -> dict:
    """Processes started during the run that are still alive after a short grace period."""
    deadline = time.monotonic() + wait_seconds
    while True:
        left = {pid: cmd for pid, cmd in process_tree().items()
                if pid not in before and not lives_as_long_as_this_process(cmd)}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


# --- training ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("engine,local_mode", ENGINE_MODES, ids=MODE_IDS)
def test_two_processes_train_identical_accurate_weights(engine, local_mode, prepared, spark, tmp_path):
    require_engine(engine)
    out = tmp_path / "run"
    metrics = train_distributed(prepared, out, engine, num_processes=2, local_mode=local_mode, spark=spark)

    assert metrics["engine"] == engine and metrics["world_size"] == 2 and metrics["local_mode"] == local_mode
    # Two real processes, neither of them this one.
    assert len(set(metrics["rank_pids"])) == 2 and os.getpid() not in metrics["rank_pids"]
    # Processes started together on this machine, with a core for each, keep to a core each. (Spark
    # barrier tasks each start one process and are not bound: see torch_rank_main.)
    started_together = local_mode or engine == "horovod"
    if started_together and len(os.sched_getaffinity(0)) >= 2:
        cores = metrics["rank_cpus"]
        assert all(len(cpus) == 1 for cpus in cores) and cores[0] != cores[1], cores
        # The threads that exchange gradients (Horovod's, gloo's under DDP) yield to training: the idle class.
        idle = metrics["rank_idle_threads"]
        assert all(n >= 1 for n in idle), idle
    # Each rank trained on half of the rows (DistributedSampler pads to an even split).
    half = -(-metrics["train_rows"] // 2)
    assert metrics["train_rows_per_rank"] == [half, half]
    checksums = metrics["rank_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1], f"ranks ended with different weights: {checksums}"
    assert metrics["epochs"] == 100 and metrics["test_accuracy"] >= 0.95

    saved = json.loads((out / "metrics.json").read_text())
    for key in ("test_accuracy", "world_size", "engine", "train_seconds"):
        assert saved[key] == metrics[key]
    model, metadata = load_model(out / "model")
    # The saved model is the trained one (same checksum as every rank) and is accurate on the held-out rows.
    assert state_checksum(model) == checksums[0]
    import torch
    with torch.no_grad():
        predicted = model(torch.as_tensor(prepared.x_test)).argmax(dim=1).numpy()
    assert (predicted == prepared.y_test).mean() >= 0.95
    assert metadata["metrics"]["world_size"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging folders left


BIND_IN_A_FRESH_PROCESS = """
import json, os, threading
from penguin_lab.distributed import bind_to_own_core

cores = sorted(os.sched_getaffinity(0))
stop = threading.Event()
earlier = threading.Thread(target=stop.wait)  # started before binding, as Horovod's background thread is
earlier.start()
core = bind_to_own_core(1, 2, training_thread_first=True)
later = []
thread = threading.Thread(target=lambda: later.append(sorted(os.sched_getaffinity(0))))
thread.start(); thread.join()
threads = [sorted(os.sched_getaffinity(int(tid))) for tid in os.listdir("/proc/self/task")]
policies = {"training": os.sched_getscheduler(0), "earlier": os.sched_getscheduler(earlier.native_id),
            "idle": os.SCHED_IDLE, "normal": os.SCHED_OTHER}
unflagged = threading.Thread(target=stop.wait)
unflagged.start()
bind_to_own_core(1, 2)  # without training_thread_first, every thread keeps its class
policies["unflagged"] = os.sched_getscheduler(unflagged.native_id)
stop.set(); earlier.join(); unflagged.join()
print(json.dumps({"cores": cores, "core": core, "threads": threads, "later": later, "policies": policies,
                  "one_process": bind_to_own_core(0, 1), "more_than_cores": bind_to_own_core(0, 64)}))
"""


def test_binding_keeps_every_thread_on_one_core_and_the_training_thread_first():
    """Run in a fresh process, so this test process keeps all its cores."""
    done = subprocess.run([sys.executable, "-c", BIND_IN_A_FRESH_PROCESS], capture_output=True, text=True,
                          cwd=REPO, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    if len(seen["cores"]) >= 2:
        core = seen["cores"][1]
        assert seen["core"] == core
        assert seen["threads"] and all(cpus == [core] for cpus in seen["threads"]), seen["threads"]
        assert seen["later"] == [[core]]  # threads started afterwards inherit the core
        # On that core the training thread goes first; the threads already started run when it waits.
        policies = seen["policies"]
        assert policies["earlier"] == policies["idle"] and policies["training"] == policies["normal"], policies
        assert policies["unflagged"] == policies["normal"], policies
    else:
        assert seen["core"] is None  # one core: nothing to share out
    assert seen["one_process"] is None and seen["more_than_cores"] is None


@pytest.mark.parametrize("engine,local_mode", ENGINE_MODES, ids=MODE_IDS)
def test_failing_worker_fails_the_run_quickly_and_cleanly(engine, local_mode, prepared, spark, tmp_path):
    require_engine(engine)
    before = process_tree()
    started = time.monotonic()
    with pytest.raises(DistributedTrainingError) as failure:
        train_distributed(prepared, tmp_path / "run", engine, num_processes=2, local_mode=local_mode,
                          spark=spark, fail_on_rank=1)
    elapsed = time.monotonic() - started

    message = str(failure.value)
    assert "\n" not in message
    assert message.startswith(f"{engine} training failed: rank 1: InjectedFailure: injected failure at epoch 2")
    assert failure.value.rank == 1
    assert elapsed < FAILURE_DEADLINE_SECONDS, f"the failed run took {elapsed:.0f} s"
    assert list(tmp_path.iterdir()) == [], "a failed run left files behind"
    assert strays(before) == {}


def test_a_failure_in_rank_zero_is_named_and_keeps_the_previous_results(prepared, spark, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    with pytest.raises(DistributedTrainingError, match=r"^torch training failed: rank 0: InjectedFailure"):
        train_distributed(prepared, out, "torch", num_processes=2, local_mode=True, spark=spark, fail_on_rank=0)
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert [p.name for p in out.iterdir()] == ["metrics.json"]


def test_too_many_processes_for_the_spark_slots_is_refused_at_once(prepared, spark, tmp_path):
    slots = spark.sparkContext.defaultParallelism
    with pytest.raises(LabError, match=f"need {slots + 1} Spark task slots; this cluster has {slots}"):
        train_distributed(prepared, tmp_path / "run", "torch", num_processes=slots + 1, local_mode=False, spark=spark)


def test_unknown_engine_is_one_line(prepared, tmp_path):
    with pytest.raises(LabError, match="unknown engine 'mpi'; choose one of horovod, torch"):
        train_distributed(prepared, tmp_path / "run", "mpi")


# --- the job: paths to the prepared Parquet, which every rank reads itself -----------------------------------

def rewritten(source, folder: Path, copies: int = 1, files: int = 1, group_rows: int | None = None) -> str:
    """The prepared Parquet at `source`, `copies` times over (each copy with Row ids of its own), as
    `files` part files of row groups of `group_rows` rows."""
    table = pa.concat_tables([pq.read_table(f) for f in part_files(source)])
    ids = table.column("Row").to_numpy()
    copied = pa.concat_tables([table.set_column(table.schema.get_field_index("Row"), "Row",
                                                pa.array(ids + k * (int(ids.max()) + 1)))
                               for k in range(copies)])
    folder.mkdir(parents=True)
    for k, rows in enumerate(np.array_split(np.arange(copied.num_rows), files)):
        pq.write_table(copied.take(rows), folder / f"part-{k:05d}.parquet", row_group_size=group_rows)
    return str(folder)


def test_a_job_holds_paths_not_arrays(prepared, tmp_path):
    """What every rank receives is a few hundred bytes, whatever the size of the data."""
    large = PreparedData(rewritten(prepared.train_path, tmp_path / "train", copies=200),
                         rewritten(prepared.test_path, tmp_path / "test", copies=200),
                         prepared.island_vocabulary, prepared.counts, prepared.feature_ranges)
    jobs = [DistributedJob.from_prepared(data, TrainConfig(), model_dir=tmp_path / "model")
            for data in (prepared, large)]
    for job in jobs:
        values = [getattr(job, f.name) for f in dataclasses.fields(job)]
        assert not any(isinstance(value, np.ndarray) for value in values), job
        assert isinstance(job.train_path, str) and Path(job.train_path).is_absolute()
    small_size, large_size = (len(pickle.dumps(job)) for job in jobs)
    assert large_size < 2000, large_size
    # Only the paths' lengths differ; the data is 200 times larger.
    assert abs(large_size - small_size) < 200, (small_size, large_size)
    assert parquet_rows_and_bytes(large.train_path)[1] > 500 * large_size


@pytest.mark.parametrize("engine", ["horovod", "torch"])
def test_streamed_ranks_read_disjoint_row_groups_and_end_with_identical_weights(engine, prepared, spark, tmp_path):
    """Past the memory budget (here 1 byte) each rank reads only its own row groups, the test set is
    streamed on rank 0, and every rank still ends with the same weights."""
    require_engine(engine)
    train_path = rewritten(prepared.train_path, tmp_path / "train", files=2, group_rows=24)  # 10 row groups
    every_group = sorted((f.name, g) for f in part_files(train_path) for g in range(pq.ParquetFile(f).num_row_groups))
    assert len(every_group) == 10
    job = DistributedJob.from_prepared(prepared, TrainConfig(epochs=5), model_dir=tmp_path / "model")
    job = dataclasses.replace(job, train_path=train_path, memory_budget_bytes=1, progress_every=0)
    result = run_horovod(job, 2) if engine == "horovod" else run_torch(job, 2, spark=spark)

    assert result["train_streamed"] and result["world_size"] == 2
    shares = [sorted(map(tuple, groups)) for groups in result["train_row_groups_per_rank"]]
    assert all(shares) and not set(shares[0]) & set(shares[1]), shares  # disjoint
    assert sorted(shares[0] + shares[1]) == every_group  # and together every group once
    rows = parquet_rows_and_bytes(train_path)[0]
    assert result["train_rows_per_rank"][0] == result["train_rows_per_rank"][1] <= rows // 2
    checksums = result["rank_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1], f"ranks ended with different weights: {checksums}"
    # The streamed test set was every test row once: the saved model scores the same on the whole set.
    import torch
    model, _ = load_model(tmp_path / "model")
    assert state_checksum(model) == checksums[0]
    with torch.no_grad():
        predicted = model(torch.as_tensor(prepared.x_test)).argmax(dim=1).numpy()
    assert abs((predicted == prepared.y_test).mean() - result["test_accuracy"]) < 1e-6


def test_prepared_data_a_rank_cannot_see_is_one_line(prepared, spark, tmp_path):
    job = dataclasses.replace(DistributedJob.from_prepared(prepared, TrainConfig(epochs=1)),
                              train_path=str(tmp_path / "elsewhere" / "train"), progress_every=0)
    with pytest.raises(DistributedTrainingError,
                       match=r"^torch training failed: rank \d: LabError: .*elsewhere/train: the prepared training "
                             r"set is not on this rank's machine; put the prepared Parquet on storage every node"):
        run_torch(job, 2, spark=spark)


# --- HorovodRunner ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("np", [-2, 2])
def test_horovod_runner_runs_np_processes_and_returns_rank_zeros_value(np):
    require_horovod()

    def main(offset):  # defined here so that it is pickled by value, as in a notebook
        import os

        import horovod.torch as hvd
        hvd.init()
        return {"rank": hvd.rank(), "size": hvd.size(), "value": offset + hvd.rank(), "pid": os.getpid()}

    result = HorovodRunner(np=np, driver_log_verbosity="all").run(main, offset=10)
    assert result["rank"] == 0 and result["size"] == 2 and result["value"] == 10
    assert result["pid"] != os.getpid()


def test_horovod_runner_reports_a_plain_exception_in_one_line():
    require_horovod()

    def main():
        import horovod.torch as hvd
        hvd.init()
        if hvd.rank() == 1:
            raise ValueError("rank one cannot count")
        hvd.allreduce_(__import__("torch").zeros(1), name="wait")  # rank 0 waits for rank 1 here
        return "never"

    before = process_tree()
    with pytest.raises(DistributedTrainingError, match=r"^horovod training failed: rank 1: rank one cannot count$"):
        HorovodRunner(np=-2).run(main)
    assert strays(before) == {}


def test_horovod_runner_rejects_what_sparkdl_rejects():
    with pytest.raises(LabError, match="np must be a non-zero whole number"):
        HorovodRunner(np=0)
    with pytest.raises(TypeError):
        HorovodRunner(2)  # keyword-only, as sparkdl's
    with pytest.raises(LabError, match="driver_log_verbosity must be"):
        HorovodRunner(np=2, driver_log_verbosity="loud")


# --- failure reports (no processes) -------------------------------------------------------------------------

def test_the_first_rank_to_fail_is_named():
    output = WorkerOutput(echo=False)
    output.stream(sys.stderr).write(
        '[0]<stderr>:[penguin-lab:rank-failed] '
        '{"rank": 0, "time": 20.5, "error": "RuntimeError: Connection closed by peer"}\n'
        'noise\n[1]<stderr>:[penguin-lab:rank-failed] {"rank": 1, "time": 20.1, "error": "ValueError: bad row"}\n')
    error = failure_error("horovod", output, RuntimeError("Horovod detected that one or more processes exited"))
    assert str(error) == "horovod training failed: rank 1: ValueError: bad row"
    assert (error.rank, error.error) == (1, "ValueError: bad row")


def test_reports_inside_an_engine_exception_are_found():
    text = ('Py4JJavaError: Job aborted\nRuntimeError: Command [...] failed with return code 1. The task output is '
            'included below: [penguin-lab:rank-failed] {"rank": 1, "time": 3, "error": "KeyError: \'x\'"}\n')
    assert failure_reports(text) == [{"rank": 1, "time": 3, "error": "KeyError: 'x'"}]
    assert str(failure_error("torch", None, RuntimeError(text))) == "torch training failed: rank 1: KeyError: 'x'"


def test_without_reports_the_first_line_of_the_engine_error_is_kept():
    error = failure_error("torch", WorkerOutput(echo=False), RuntimeError("\n  Barrier stage failed\nat line 2\n"))
    assert str(error) == "torch training failed: Barrier stage failed"


# --- command line ---------------------------------------------------------------------------------------------

def test_cli_writes_metrics_and_a_model_that_predict_loads(tmp_path):
    engine = "torch"  # the engines themselves are tested above; this is the command's wiring
    out = tmp_path / "run"
    done = run_cli("distributed", "--engine", engine, "--np", "2", "--epochs", "40", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert f"results in {out}/" in done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["engine"] == engine and metrics["world_size"] == 2 and metrics["epochs"] == 40
    assert metrics["train_seconds"] > 0 and 0 <= metrics["test_accuracy"] <= 1
    # The ranks read the Parquet prepared in the results folder; the read's scratch folder is gone.
    assert sorted(p.name for p in out.iterdir()) == ["accuracy.png", "confusion.png", "loss.png", "metrics.json",
                                                        "model", "prepared"]
    assert metrics["prepared"] == {"train": "prepared/train", "test": "prepared/test", "format": "parquet",
                                   "standardization": json.loads((out / "model" / "model.json").read_text())[
                                       "standardization"]}
    assert parquet_rows_and_bytes(out / "prepared" / "train")[0] == metrics["train_rows"]
    assert parquet_rows_and_bytes(out / "prepared" / "test")[0] == metrics["test_rows"]
    stages = metrics["stage_seconds"]
    assert list(stages) == ["read", "prepare", "train", "write"] and all(v >= 0 for v in stages.values())
    assert sum(stages.values()) <= metrics["total_seconds"]
    assert metrics["train_seconds"] <= stages["train"]
    predicted = run_cli("predict", "--model", str(out / "model"), "--island", "Biscoe", "--culmen-length", "48.6",
                        "--culmen-depth", "16", "--flipper-length", "230", "--body-mass", "5800", "--json")
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout)["species"] == "Gentoo"


def test_cli_failure_is_one_line_exit_2_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    done = run_cli("distributed", "--engine", "torch", "--epochs", "5", "--out", str(out), env={FAIL_ON_RANK_ENV: "1"})
    line = assert_one_line_error(done, "torch training failed: rank 1: InjectedFailure: injected failure at epoch 2")
    assert line.endswith("(test hook fail_on_rank=1)")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_rejects_bad_arguments_in_one_line(tmp_path):
    done = run_cli("distributed", "--engine", "torch", "--np", "0")
    assert done.returncode == 2 and "'0' must be at least 1" in done.stderr
    done = run_cli("distributed", "--engine", "torch", "--data", str(tmp_path / "missing.csv"),
                   "--out", str(tmp_path / "x"))
    assert_one_line_error(done, "missing.csv")
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


# --- notebooks ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["04_distributed_horovod.py", "05_distributed_torch_distributor.py"])
def test_distributed_notebook_runs_top_to_bottom(name, tmp_path):
    if "horovod" in name:
        require_horovod()
    notebook = Path(__file__).resolve().parent.parent / "notebooks" / name
    env = {**os.environ, "PENGUIN_LAB_OUT": str(tmp_path), "PENGUIN_LAB_EPOCHS": "5", "MPLBACKEND": "Agg",
           "PENGUIN_LAB_TRACKING": "true", "MLFLOW_TRACKING_URI": ""}
    done = subprocess.run([sys.executable, str(notebook)], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "def horovod_rank_main" in done.stdout or "def torch_rank_main" in done.stdout
    assert "Prediction:" in done.stdout
    saved = sorted(p.parent.parent.name for p in tmp_path.glob("*/model/model.safetensors"))
    assert saved == (["horovod"] if "horovod" in name else ["torch-barrier", "torch-local"])
    import mlflow  # the driver logged the run once, after the ranks finished

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("penguin-lab").experiment_id])
    assert run.data.params["engine"] == ("horovod" if "horovod" in name else "torch")
    assert run.data.params["world_size"] == "2" and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3, 4, 5]
