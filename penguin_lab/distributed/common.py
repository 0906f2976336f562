"""What both engines share: the job every rank receives, the end of a rank's run, and failure reports.

Nothing here imports Horovod or starts processes; the engines' modules do that.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..config import TrainConfig
from ..errors import LabError

# Environment variable read by `penguin-lab distributed`: make this rank raise (a test hook, not a feature).
FAIL_ON_RANK_ENV = "PENGUIN_LAB_TEST_FAIL_ON_RANK"


@dataclass(frozen=True)
class DistributedJob:
    """Everything one rank needs. The prepared arrays travel with the job: they are small."""

    x_train: "np.ndarray"
    y_train: "np.ndarray"
    x_test: "np.ndarray"
    y_test: "np.ndarray"
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
    return {"rank": rank, "pid": os.getpid(), "checksum": state_checksum(model),
            "train_seconds": train_seconds, "train_rows": train_rows,
            "final_train_loss": history.train_loss[-1] if history.train_loss else float("nan")}


def finish_on_rank0(job: DistributedJob, model, test_loader, device, history, reports: list,
                    engine: str, world_size: int) -> dict:
    """Rank 0's last step: test the trained model, save it atomically, and build the run's result."""
    from ..artifacts import save_model, staged_dir
    from ..train import evaluate

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


def failure_error(engine: str, output: "WorkerOutput", exception: BaseException) -> DistributedTrainingError:
    """Turn an engine's exception into one line. The first rank to fail is the cause: the others
    usually fail afterwards only because their peer went away."""
    text = (output.text() if output is not None else "") + "\n" + str(exception)
    reports = failure_reports(text)
    if reports:
        first = min(reports, key=lambda report: report.get("time", float("inf")))
        return DistributedTrainingError(f"{engine} training failed: rank {first['rank']}: {first['error']}",
                                        rank=first["rank"], error=first["error"])
    # A function without report_failure, run by horovod.runner: its worker prints this line.
    raised = _HOROVOD_USER_ERROR.search(text)
    if raised:
        message = raised.group(2).split("Traceback (most recent call last):")[0]  # the traceback follows on the same line
        rank, error = int(raised.group(1)), _shorten(message.strip() or "(no message)")
        return DistributedTrainingError(f"{engine} training failed: rank {rank}: {error}", rank=rank, error=error)
    lines = [line.strip() for line in str(exception).splitlines() if line.strip()]
    summary = _shorten(lines[0] if lines else type(exception).__name__)
    return DistributedTrainingError(f"{engine} training failed: {summary}", error=summary)


_HOROVOD_USER_ERROR = re.compile(r"\[(\d+)\]<stderr>:User function raise error: ?(.*)")


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
    root = Path(__file__).resolve().parents[2]
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
