"""Distributed training: the lab's Horovod section, and TorchDistributor, locally or on a cluster.

One per-rank function per engine (horovod_rank_main, torch_rank_main) builds a DistributedSampler,
wraps the single-node PenguinNet and optimizer for its engine, and calls the same train.fit as the
single-node lab. Rank 0 tests and saves the model; every rank returns the same result, with the
checksums of every rank's weights.

- Horovod: on Databricks Runtime ML up to 15.4 LTS, sparkdl.HorovodRunner starts the processes as
  Spark tasks. Elsewhere HorovodRunner below has the same interface and starts real Horovod processes
  on this machine with horovod.runner.run over gloo. Databricks has deprecated both.
- TorchDistributor (what Databricks recommends now): local_mode=True starts the processes on the
  driver; local_mode=False starts them in Spark barrier tasks (with a local[N] master, on this machine).

A failing rank prints one tagged line; the driver turns it into a one-line DistributedTrainingError.
Importing this module is cheap: the CLI imports it to register `penguin-lab distributed`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from .config import DEFAULT_DATA, TrainConfig
from .errors import LabError

if TYPE_CHECKING:  # numpy is imported by the workers, not to register the command
    import numpy as np

ENGINES = ("horovod", "torch")


# Environment variable read by `penguin-lab distributed`: make this rank raise (a test hook, not a feature).
FAIL_ON_RANK_ENV = "PENGUIN_LAB_TEST_FAIL_ON_RANK"


# --- what every rank receives and returns --------------------------------------------------------------------

@dataclass(frozen=True)
class DistributedJob:
    """Everything one rank needs. The prepared arrays travel with the job: they are small."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    island_vocabulary: list
    feature_ranges: dict = field(default_factory=dict)
    epochs: int = TrainConfig.epochs
    batch_size: int = TrainConfig.batch_size  # per rank, as in the lab
    learning_rate: float = TrainConfig.learning_rate  # for one process; ranks multiply it by the world size
    hidden_units: int = TrainConfig.hidden_units
    seed: int = TrainConfig.seed
    model_dir: Optional[str] = None  # rank 0 saves the model here (atomically); None: not saved
    progress_every: int = 10  # rank 0 prints a progress line every this many epochs (0: never)
    collective_timeout_seconds: float = 120.0  # a rank waiting on a dead peer gives up after this
    # Test hook: this rank raises at the end of epoch `fail_at_epoch`, while its peers wait for it.
    fail_on_rank: Optional[int] = None
    fail_at_epoch: int = 2

    @classmethod
    def from_prepared(cls, prepared, config: TrainConfig = TrainConfig(), model_dir=None, **options):
        return cls(x_train=prepared.x_train, y_train=prepared.y_train,
                   x_test=prepared.x_test, y_test=prepared.y_test,
                   island_vocabulary=list(prepared.island_vocabulary),
                   feature_ranges=dict(prepared.feature_ranges),
                   epochs=config.epochs, batch_size=config.batch_size, learning_rate=config.learning_rate,
                   hidden_units=config.hidden_units, seed=config.seed,
                   model_dir=None if model_dir is None else str(model_dir), **options)


class InjectedFailure(RuntimeError):
    """Raised by the fail_on_rank test hook."""


def epoch_callback(job: DistributedJob, rank: int):
    """fit's on_epoch for one rank: rank 0 reports progress; the test hook fails the chosen rank."""
    def on_epoch(epoch, train_loss, val_loss, val_accuracy):
        if job.fail_on_rank == rank and epoch == job.fail_at_epoch:
            raise InjectedFailure(f"injected failure at epoch {epoch} (test hook fail_on_rank={rank})")
        if rank == 0 and job.progress_every and (epoch % job.progress_every == 0 or epoch == job.epochs):
            print(f"epoch {epoch}/{job.epochs}: training loss {train_loss:.4f} (rank 0's share), "
                  f"validation loss {val_loss:.4f}, accuracy {val_accuracy:.3f}", flush=True)
    return on_epoch


def state_checksum(model) -> str:
    """SHA-256 over every tensor's name and bytes, in state_dict order: equal only for identical weights."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


def rank_report(model, rank: int, history, train_seconds: float, train_rows: int) -> dict:
    """What each rank contributes to the result; every rank's report is gathered before the end."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"rank": rank, "pid": os.getpid(), "cpus": cpus, "idle_threads": idle_thread_count(),
            "checksum": state_checksum(model),
            "train_seconds": train_seconds, "train_rows": train_rows,
            "final_train_loss": history.train_loss[-1] if history.train_loss else float("nan")}


def thread_ids() -> list:
    """Linux's ids of this process's threads; [0] (the calling thread) where /proc cannot tell."""
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def idle_thread_count() -> Optional[int]:
    """Threads of this process in the idle scheduling class (see bind_to_own_core), where Linux tells."""
    if not hasattr(os, "SCHED_IDLE"):
        return None
    count = 0
    for thread in thread_ids():
        with contextlib.suppress(OSError):  # a thread that has just ended
            count += os.sched_getscheduler(thread) == os.SCHED_IDLE
    return count


def finish_on_rank0(job: DistributedJob, model, test_loader, device, history, reports: list,
                    engine: str, world_size: int) -> dict:
    """Rank 0's last step: test the trained model, save it atomically, and build the run's result."""
    from .artifacts import save_model, staged_dir
    from .train import evaluate

    test_loss, test_accuracy = (t.item() for t in evaluate(model, test_loader, device))
    checksums = [report["checksum"] for report in reports]
    result = {
        "engine": engine,
        "world_size": world_size,
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
        "weights_identical": len(set(checksums)) == 1,
        "rank_checksums": checksums,
        "rank_pids": [report["pid"] for report in reports],
        "rank_cpus": [report["cpus"] for report in reports],
        "rank_idle_threads": [report["idle_threads"] for report in reports],
        "train_seconds": round(max(report["train_seconds"] for report in reports), 4),
        "train_rows_per_rank": [report["train_rows"] for report in reports],
        "final_train_loss": sum(report["final_train_loss"] for report in reports) / len(reports),
        "epochs": job.epochs,
        "batch_size_per_rank": job.batch_size,
        "learning_rate": job.learning_rate * world_size,
        "device": str(device),
        "history": history.to_dict(),
        "model_dir": None,
    }
    if job.model_dir is not None and result["weights_identical"]:
        summary = {k: v for k, v in result.items() if k not in ("history", "model_dir")}
        with staged_dir(Path(job.model_dir)) as staging:
            save_model(model, staging, job.island_vocabulary, job.feature_ranges, summary)
        result["model_dir"] = job.model_dir
    return result


def bind_to_own_core(local_rank: int, local_size: int, training_thread_first: bool = False) -> Optional[int]:
    """Keep this process, and every thread it has (Horovod's background thread, gloo's), on a core
    of its own, as mpirun does for two processes. Otherwise a rank that waits for its peer (Horovod
    polls while it waits) and the background threads take CPU time from the rank still computing.

    With `training_thread_first`, the threads already started get the idle scheduling class, so on
    that core they run while the calling (training) thread waits, not in the middle of its forward and
    backward passes. Horovod's rank function asks for it: its threads only exchange messages, and its
    wait for them yields the core. PyTorch's threads keep their class.
    Only for several processes on CPU with a core for each; returns the core, or None."""
    if local_size < 2 or not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    if local_size > len(cores) or not 0 <= local_rank < local_size:
        return None
    core = cores[local_rank]
    training_thread = threading.get_native_id()
    for thread in thread_ids():
        with contextlib.suppress(OSError):  # a thread that has just ended
            os.sched_setaffinity(thread, {core})
            if training_thread_first and thread not in (0, training_thread) and hasattr(os, "SCHED_IDLE"):
                os.sched_setscheduler(thread, os.SCHED_IDLE, os.sched_param(0))
    return core


# --- failure reports --------------------------------------------------------------------------------
# A failing rank prints one tagged line before its engine tears the job down. The driver reads the
# workers' output (and the engine's exception text) for these lines, so the user gets one line naming
# the rank and the error instead of the engines' pages of tracebacks.

FAILURE_TAG = "[penguin-lab:rank-failed]"
_FAILURE_LINE = re.compile(re.escape(FAILURE_TAG) + r" (\{.*\})")


def one_line(error: BaseException) -> str:
    return _shorten(f"{type(error).__name__}: {' '.join(str(error).split()) or '(no message)'}")


@contextlib.contextmanager
def report_failure(rank: int):
    """Around a rank's work: on an exception, print the traceback and one tagged line, then re-raise."""
    try:
        yield
    except BaseException as error:
        if isinstance(error, SystemExit) and error.code in (0, None):
            raise
        traceback.print_exc()
        report = {"rank": rank, "time": time.time(), "error": one_line(error)}
        print(f"{FAILURE_TAG} {json.dumps(report)}", file=sys.stderr, flush=True)
        raise


def failure_reports(text: str) -> list:
    reports = []
    for match in _FAILURE_LINE.finditer(text or ""):
        try:
            report = json.loads(match.group(1))
        except json.JSONDecodeError:
            continue
        if isinstance(report, dict) and "rank" in report and "error" in report:
            reports.append(report)
    return reports


class DistributedTrainingError(LabError):
    """A rank failed: the message is one line naming the rank and its error."""

    def __init__(self, message: str, rank: Optional[int] = None, error: Optional[str] = None):
        super().__init__(message)
        self.rank = rank
        self.error = error


_HOROVOD_USER_ERROR = re.compile(r"\[(\d+)\]<stderr>:User function raise error: ?(.*)")


def failure_error(engine: str, output: "WorkerOutput", exception: BaseException) -> DistributedTrainingError:
    """Turn an engine's exception into one line. The first rank to fail is the cause: the others
    usually fail afterwards only because their peer went away."""
    text = (output.text() if output is not None else "") + "\n" + str(exception)
    reports = failure_reports(text)
    if reports:
        first = min(reports, key=lambda report: report.get("time", float("inf")))
        return DistributedTrainingError(f"{engine} training failed: rank {first['rank']}: {first['error']}",
                                        rank=first["rank"], error=first["error"])
    # A function without report_failure, run by horovod.runner: its worker prints this line, and the
    # traceback follows on the same line.
    raised = _HOROVOD_USER_ERROR.search(text)
    if raised:
        message = raised.group(2).split("Traceback (most recent call last):")[0]
        rank, error = int(raised.group(1)), _shorten(message.strip() or "(no message)")
        return DistributedTrainingError(f"{engine} training failed: rank {rank}: {error}", rank=rank, error=error)
    lines = [line.strip() for line in str(exception).splitlines() if line.strip()]
    summary = _shorten(lines[0] if lines else type(exception).__name__)
    return DistributedTrainingError(f"{engine} training failed: {summary}", error=summary)


def _shorten(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class WorkerOutput:
    """Stands in for sys.stdout and sys.stderr while the workers run (the engines forward their
    output there): keeps every line for failure reports, and echoes it to the real stream or not."""

    def __init__(self, echo: bool):
        self.echo = echo
        self._lines: list[str] = []
        self._lock = threading.Lock()

    def stream(self, original):
        return _Tee(self, original)

    def _keep(self, text: str) -> None:
        with self._lock:
            self._lines.append(text)

    def text(self) -> str:
        with self._lock:
            return "".join(self._lines)


class _Tee:
    def __init__(self, output: WorkerOutput, original):
        self._output = output
        self._original = original

    def write(self, text) -> int:
        self._output._keep(text)
        if self._output.echo:
            self._original.write(text)
        return len(text)

    def flush(self) -> None:
        if self._output.echo:
            self._original.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name):  # encoding, errors, ... of the real stream
        return getattr(self._original, name)


@contextlib.contextmanager
def capture_worker_output(echo: bool):
    output = WorkerOutput(echo)
    with contextlib.redirect_stdout(output.stream(sys.stdout)), contextlib.redirect_stderr(output.stream(sys.stderr)):
        yield output


# --- launching ------------------------------------------------------------------------------------------

def package_root() -> Optional[str]:
    """The folder holding the penguin_lab package, if it is a source checkout (not site-packages)."""
    root = Path(__file__).resolve().parents[1]
    return None if root.name in ("site-packages", "dist-packages") else str(root)


def _prepend_path(current: Optional[str], root: str) -> str:
    parts = [p for p in (current or "").split(os.pathsep) if p]
    return os.pathsep.join([root] + [p for p in parts if p != root])


@contextlib.contextmanager
def workers_import_this_package(spark=None):
    """Worker processes must import the same penguin_lab as the driver, even when the driver only has
    it on sys.path (a notebook run from a checkout): put its folder on the workers' PYTHONPATH.
    Local processes inherit os.environ; Spark's Python workers get the SparkContext's environment."""
    root = package_root()
    if root is None:
        yield
        return
    saved_env = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = _prepend_path(saved_env, root)
    spark_env = None
    if spark is not None:
        with contextlib.suppress(Exception):  # Spark Connect has no SparkContext; nothing to do there
            spark_env = spark.sparkContext.environment
    saved_spark = spark_env.get("PYTHONPATH") if spark_env is not None else None
    if spark_env is not None:
        spark_env["PYTHONPATH"] = _prepend_path(saved_spark, root)
    try:
        yield
    finally:
        _restore(os.environ, "PYTHONPATH", saved_env)
        if spark_env is not None:
            _restore(spark_env, "PYTHONPATH", saved_spark)


def _restore(mapping, key, value) -> None:
    if value is None:
        mapping.pop(key, None)
    else:
        mapping[key] = value


def check_weights_identical(result: dict) -> None:
    if not result.get("weights_identical"):
        checksums = ", ".join(f"rank {i}: {c[:12]}" for i, c in enumerate(result.get("rank_checksums", [])))
        raise LabError(f"{result.get('engine')} training ended with different weights on different ranks ({checksums})")


# --- Horovod ---------------------------------------------------------------------------------------------

def horovod_rank_main(job: DistributedJob) -> dict:
    """One Horovod process: the lab's train_hvd, on the single-node model and training loop."""
    import horovod.torch as hvd
    import torch
    from torch.utils.data.distributed import DistributedSampler

    from .model import PenguinNet
    from .train import Timer, fit, make_dataset, make_loader, pick_device, seed_everything, tune_threads

    give_up_on_stalled_peers(job.collective_timeout_seconds)
    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    with report_failure(rank):
        tune_threads()
        seed_everything(job.seed)
        device = pick_device()
        if device.type == "cuda":
            torch.cuda.set_device(hvd.local_rank())  # one GPU per process
            device = torch.device("cuda", hvd.local_rank())
        else:  # a core per process: a rank waiting for its peer then slows nobody else
            bind_to_own_core(hvd.local_rank(), hvd.local_size(), training_thread_first=True)

        # Each rank trains on its own share of the rows; set_epoch (before every epoch) reshuffles the shares.
        train_ds = make_dataset(job.x_train, job.y_train)
        sampler = DistributedSampler(train_ds, num_replicas=size, rank=rank, shuffle=True, seed=job.seed)
        train_loader = make_loader(train_ds, job.batch_size, sampler)
        test_loader = make_loader(make_dataset(job.x_test, job.y_test), job.batch_size)

        model = PenguinNet(hidden_units=job.hidden_units).to(device)
        # Synchronous training averages `size` batches per step: scale the learning rate to match.
        optimizer = torch.optim.Adam(model.parameters(), lr=job.learning_rate * size)
        # Horovod averages the gradients over all ranks before every step.
        optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
        # Every rank starts from rank 0's weights and optimizer state.
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)

        timer = Timer()
        history = fit(model, train_loader, test_loader, optimizer, job.epochs, device,
                      on_epoch=epoch_callback(job, rank), before_epoch=sampler.set_epoch)
        train_seconds = timer.seconds()

        # Every rank's checksum goes into the result, so identical weights can be checked.
        # (Names must match across ranks: the default name is the object's type, and None differs from dict.)
        reports = hvd.allgather_object(rank_report(model, rank, history, train_seconds, len(sampler)), name="report")
        result = None
        if rank == 0:
            result = finish_on_rank0(job, model, test_loader, device, history, reports, "horovod", size)
        # The same result from every rank, whichever one the launcher returns.
        return hvd.broadcast_object(result, root_rank=0, name="result")


def give_up_on_stalled_peers(seconds: float) -> None:
    """Horovod only warns when ranks stop meeting in collectives; make it shut down after `seconds`,
    so a rank whose peer died fails instead of waiting forever. Read by hvd.init()."""
    os.environ.setdefault("HOROVOD_STALL_CHECK_TIME_SECONDS", str(int(min(seconds, 60))))
    os.environ.setdefault("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", str(int(seconds)))


class HorovodRunner:
    """sparkdl.HorovodRunner's interface where Databricks Runtime ML is not: real Horovod processes
    on this machine, started with horovod.runner.run over gloo.

    np < 0 starts -np processes on the driver (this machine), as sparkdl does; np > 0 starts np
    processes, which off Databricks are also on this machine. run(main, **kwargs) calls
    main(**kwargs) in every process and returns rank 0's return value.
    driver_log_verbosity="all" shows the workers' output; "log_callback_only" keeps it quiet.
    If a process fails, the others are stopped and run raises a one-line
    DistributedTrainingError naming the failed rank (when main reports it with report_failure).
    """

    def __init__(self, *, np, driver_log_verbosity="log_callback_only"):
        if isinstance(np, bool) or not isinstance(np, int) or np == 0:
            raise LabError(f"HorovodRunner: np must be a non-zero whole number, not {np!r}")
        if driver_log_verbosity not in ("all", "log_callback_only"):
            raise LabError(f"HorovodRunner: driver_log_verbosity must be 'all' or 'log_callback_only', "
                           f"not {driver_log_verbosity!r}")
        self.num_processor = np
        self.driver_log_verbosity = driver_log_verbosity

    def run(self, main, **kwargs):
        import horovod.runner

        num_proc = abs(self.num_processor)
        echo = self.driver_log_verbosity == "all"
        with capture_worker_output(echo) as output, workers_import_this_package(), \
                _main_script_not_rerun(), _signal_handlers_kept():
            driver_env = {key: os.environ.get(key) for key in _GARBLED_BY_HOROVOD_RUN}
            try:
                results = horovod.runner.run(_with_horovod_settings_restored, args=(main, driver_env, kwargs),
                                             num_proc=num_proc, hosts=f"localhost:{num_proc}", use_gloo=True)
            except Exception as e:
                raise failure_error("horovod", output, e) from None
        return results[0]


# horovod.runner.run (0.28.1) passes these to every process as the text "(None,)": its argument defaults
# carry a stray comma. Horovod reads that as 0, which means no pause between background cycles (the
# background thread then keeps most of a core busy in every process) and no response cache.
_GARBLED_BY_HOROVOD_RUN = ("HOROVOD_CYCLE_TIME", "HOROVOD_CACHE_CAPACITY")


def _with_horovod_settings_restored(main, driver_env: dict, kwargs: dict):
    """In each process, before main's hvd.init(): put back the driver's values (or Horovod's defaults)."""
    for key in _GARBLED_BY_HOROVOD_RUN:
        if os.environ.get(key) == "(None,)":
            _restore(os.environ, key, driver_env.get(key))
    return main(**kwargs)


def horovod_runner_class():
    """The real sparkdl.HorovodRunner on Databricks Runtime ML (15.4 LTS ML and older), else ours."""
    try:
        from sparkdl import HorovodRunner as DatabricksHorovodRunner
        if hasattr(DatabricksHorovodRunner, "run"):
            return DatabricksHorovodRunner
    except ImportError:
        pass
    return HorovodRunner


def horovod_available() -> bool:
    try:
        import horovod.torch  # noqa: F401
    except ImportError:
        return False
    return True


def run_horovod(job: DistributedJob, num_processes: int, local_mode: bool = True, echo: bool = False) -> dict:
    """Train with `num_processes` Horovod processes; returns rank 0's result."""
    if not horovod_available():
        raise LabError("Horovod is not installed: run `make horovod` (builds it once for this PyTorch), "
                       "or use --engine torch")
    runner_class = horovod_runner_class()
    # HorovodRunner's np: negative means processes on the driver.
    np = -num_processes if local_mode else num_processes
    runner = runner_class(np=np, driver_log_verbosity="all" if echo else "log_callback_only")
    if runner_class is HorovodRunner:
        return runner.run(horovod_rank_main, job=job)
    # sparkdl's runner prints and raises its own way; keep its output but shorten its error.
    with capture_worker_output(echo=True) as output:
        try:
            return runner.run(horovod_rank_main, job=job)
        except Exception as e:
            raise failure_error("horovod", output, e) from None


@contextlib.contextmanager
def _main_script_not_rerun():
    """horovod.runner starts a helper per worker with multiprocessing's "spawn", which re-runs the
    __main__ script by path. For a notebook run as `python notebooks/04_...py` that would rerun the
    whole notebook in every helper, so the script's path is hidden while the job runs."""
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None or "__file__" not in vars(main):
        yield
        return
    path = main.__file__
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


@contextlib.contextmanager
def _signal_handlers_kept():
    """horovod.runner installs its own SIGINT/SIGTERM handlers (to stop the workers) and leaves them;
    put ours back afterwards so Ctrl-C works again."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


# --- TorchDistributor -------------------------------------------------------------------------------------

def torch_rank_main(job: DistributedJob) -> dict:
    """One DDP process: the single-node model and training loop, with gradients averaged over ranks."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data.distributed import DistributedSampler

    from .model import PenguinNet
    from .train import Timer, fit, make_dataset, make_loader, pick_device, seed_everything, tune_threads

    with report_failure(int(os.environ.get("RANK", -1))):
        device = pick_device()  # TorchDistributor hides the GPUs when use_gpu=False
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)  # one GPU per process
            device = torch.device("cuda", local_rank)
        # The launcher sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; a rank that loses its peer
        # gives up after the timeout instead of waiting forever.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(seconds=job.collective_timeout_seconds))
        rank, size = dist.get_rank(), dist.get_world_size()
        if device.type == "cpu":  # a core per process, as for Horovod
            # (Spark barrier tasks each start one process, so LOCAL_WORLD_SIZE is 1 and they are not bound:
            # bound, a barrier job now and then waited 5 minutes at the end for a rank that had aborted.)
            bind_to_own_core(local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        tune_threads()
        seed_everything(job.seed)

        # Each rank trains on its own share of the rows; set_epoch (before every epoch) reshuffles the shares.
        train_ds = make_dataset(job.x_train, job.y_train)
        sampler = DistributedSampler(train_ds, num_replicas=size, rank=rank, shuffle=True, seed=job.seed)
        train_loader = make_loader(train_ds, job.batch_size, sampler)
        test_loader = make_loader(make_dataset(job.x_test, job.y_test), job.batch_size)

        model = PenguinNet(hidden_units=job.hidden_units).to(device)
        # DDP copies rank 0's weights to every rank, then averages the gradients during backward().
        ddp_model = DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
        # Synchronous training averages `size` batches per step: scale the learning rate to match.
        optimizer = torch.optim.Adam(ddp_model.parameters(), lr=job.learning_rate * size)

        timer = Timer()
        history = fit(ddp_model, train_loader, test_loader, optimizer, job.epochs, device,
                      on_epoch=epoch_callback(job, rank), before_epoch=sampler.set_epoch)
        train_seconds = timer.seconds()

        # Every rank's checksum goes into the result, so identical weights can be checked.
        reports = [None] * size
        dist.all_gather_object(reports, rank_report(model, rank, history, train_seconds, len(sampler)))
        result = None
        if rank == 0:
            result = finish_on_rank0(job, model, test_loader, device, history, reports, "torch", size)
        # The same result from every rank: in local mode TorchDistributor returns whichever rank ends last.
        box = [result]
        dist.broadcast_object_list(box, src=0)
        dist.barrier()  # nobody tears down its connections while a peer still reads from them
        dist.destroy_process_group()
        return box[0]


def gpu_available(spark, local_mode: bool) -> bool:
    """use_gpu for TorchDistributor: GPUs on the driver (local mode) or GPUs assigned to tasks."""
    if local_mode:
        import torch
        return torch.cuda.is_available()
    amount = spark.conf.get("spark.task.resource.gpu.amount", "0")
    try:
        return float(amount) > 0
    except ValueError:
        return False


def task_slots(spark) -> int:
    with contextlib.suppress(Exception):
        return int(spark.sparkContext.defaultParallelism)
    return 0


def run_torch(job: DistributedJob, num_processes: int, local_mode: bool = True, spark=None, echo: bool = False) -> dict:
    """Train with `num_processes` DDP processes started by TorchDistributor; returns rank 0's result."""
    from pyspark.ml.torch.distributor import TorchDistributor

    if spark is None:
        from .spark import get_spark
        spark = get_spark()
    if not local_mode:
        slots = task_slots(spark)
        # A barrier stage waits (for many minutes) for slots that will never come: refuse it now.
        if slots and num_processes > slots:
            raise LabError(f"{num_processes} processes need {num_processes} Spark task slots; "
                           f"this cluster has {slots} (lower --np or use --local-mode)")
    distributor = TorchDistributor(num_processes=num_processes, local_mode=local_mode,
                                   use_gpu=gpu_available(spark, local_mode))
    logger_was_disabled = distributor.logger.disabled
    distributor.logger.disabled = not echo  # its "Started ... training" lines
    try:
        with capture_worker_output(echo) as output, workers_import_this_package(spark):
            try:
                return distributor.run(torch_rank_main, job)
            except Exception as e:
                raise failure_error("torch", output, e) from None
    finally:
        distributor.logger.disabled = logger_was_disabled


# --- a whole run, and the command line ----------------------------------------------------------------------

def train_distributed(prepared, out_dir, engine: str = "torch", num_processes: int = 2, local_mode: bool = True,
                      config: TrainConfig = TrainConfig(), spark=None, echo: bool = False,
                      fail_on_rank=None, extra_metrics: dict | None = None) -> dict:
    """Train on `prepared` with `engine`; write out_dir/metrics.json and out_dir/model/ all at once.

    Nothing appears under out_dir unless every rank finished and all ranks ended with identical
    weights. Returns the metrics. `fail_on_rank` is a test hook: that rank raises during training.
    """
    from .artifacts import staged_dir

    if engine not in ENGINES:
        raise LabError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if num_processes < 1:
        raise LabError(f"need at least 1 process, not {num_processes}")
    started = time.perf_counter()
    with staged_dir(Path(out_dir)) as staging:
        job = DistributedJob.from_prepared(prepared, config, model_dir=staging / "model", fail_on_rank=fail_on_rank,
                                           progress_every=10 if echo else 0)
        if engine == "horovod":
            result = run_horovod(job, num_processes, local_mode, echo)
        else:
            result = run_torch(job, num_processes, local_mode, spark, echo)
        check_weights_identical(result)
        metrics = {
            **{k: v for k, v in result.items() if k not in ("history", "model_dir")},
            "local_mode": local_mode,
            "num_processes": num_processes,
            **prepared.counts,
            **(extra_metrics or {}),
            "config": config.to_dict(),
            "total_seconds": round(time.perf_counter() - started, 4),
            "history": result["history"],
        }
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def cmd_distributed(args) -> int:
    from .data import prepare_splits
    from .spark import get_spark
    from .validate import read_penguins_csv

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)
    out = Path(args.out) if args.out else _default_out(args.engine)
    if args.engine == "horovod" and not horovod_available():
        raise LabError("Horovod is not installed: run `make horovod` (builds it once for this PyTorch), "
                       "or use --engine torch")
    fail_on_rank = _fail_on_rank_from_env()
    raw, invalid_rows = read_penguins_csv(args.data, drop_invalid=args.drop_invalid)
    spark = get_spark()
    prepared = prepare_splits(spark, raw, config, where=str(args.data))
    # Workers' output (with --verbose) goes to stderr: stdout is for the summary.
    with contextlib.redirect_stdout(sys.stderr):
        metrics = train_distributed(prepared, out, args.engine, args.np, args.local_mode, config, spark,
                                    echo=args.verbose, fail_on_rank=fail_on_rank,
                                    extra_metrics={"invalid_rows": invalid_rows, "data": str(args.data)})
    mode = "processes on this machine" if args.local_mode else "Spark tasks"
    print(f"{args.engine}: {metrics['world_size']} {mode}, test accuracy {metrics['test_accuracy']:.4f} "
          f"on {metrics['test_rows']} held-out penguins; {metrics['epochs']} epochs in "
          f"{metrics['train_seconds']:.2f} s, whole run {metrics['total_seconds']:.2f} s")
    print(f"weights identical on all {metrics['world_size']} ranks (sha256 {metrics['rank_checksums'][0][:16]}...)")
    print(f"results in {out}/: metrics.json, model/")
    return 0


def _default_out(engine: str) -> Path:
    from datetime import datetime

    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{engine}"


def _fail_on_rank_from_env():
    value = os.environ.get(FAIL_ON_RANK_ENV)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise LabError(f"{FAIL_ON_RANK_ENV}={value!r} is not a rank number") from None


def register(subparsers) -> None:
    from .cli import positive_int, seed_int

    parser = subparsers.add_parser(
        "distributed", help="train with several processes: Horovod (as in the lab) or TorchDistributor",
        description="Train the penguin classifier with several processes and save rank 0's model. "
                    "--engine horovod uses HorovodRunner (sparkdl's on Databricks Runtime ML <= 15.4 LTS, "
                    "real Horovod processes over gloo elsewhere); --engine torch uses Spark's TorchDistributor.")
    parser.add_argument("--engine", choices=ENGINES, required=True)
    parser.add_argument("--np", type=positive_int, default=2, help="number of processes (default 2)")
    parser.add_argument("--local-mode", action=argparse.BooleanOptionalAction, default=True,
                        help="processes on this machine (default), or --no-local-mode: Spark barrier tasks "
                             "(torch) / HorovodRunner np>0 (horovod)")
    parser.add_argument("--out", help="results folder (default: runs/<timestamp>-<engine>)")
    parser.add_argument("--epochs", type=positive_int, default=TrainConfig.epochs)
    parser.add_argument("--batch-size", type=positive_int, default=TrainConfig.batch_size,
                        help="rows per batch, per process")
    parser.add_argument("--seed", type=seed_int, default=TrainConfig.seed)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="penguin CSV (default: the shipped data)")
    parser.add_argument("--drop-invalid", action="store_true", help="drop rows with invalid values instead of stopping")
    parser.add_argument("--verbose", action="store_true", help="show the workers' output (on stderr)")
    parser.set_defaults(func=cmd_distributed)
