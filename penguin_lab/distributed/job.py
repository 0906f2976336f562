"""What every rank receives (a DistributedJob) and what it returns: its report, and rank 0's result."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..config import TRAIN_MEMORY_BUDGET_BYTES, TrainConfig
from ..errors import LabError
from .cpu import idle_thread_count
from .failures import InjectedFailure


@dataclass(frozen=True)
class DistributedJob:
    """Everything one rank needs: where the prepared Parquet is, not the data. Every rank reads it
    itself, so the paths must be on storage every rank reads (this machine, or a shared file system)."""

    train_path: str  # prepared training set, a Parquet folder
    test_path: str  # prepared test set, read by rank 0 only
    island_vocabulary: list
    feature_ranges: dict = field(default_factory=dict)
    standardization: dict = field(default_factory=dict)  # the prepared sets' [mean, std] per feature
    epochs: int = TrainConfig.epochs
    batch_size: int = TrainConfig.batch_size  # per rank, as in the lab
    learning_rate: float = TrainConfig.learning_rate  # for one process; ranks multiply it by the world size
    hidden_units: int = TrainConfig.hidden_units
    seed: int = TrainConfig.seed
    # A set whose arrays take more than this is streamed from its row groups; None: the rank's own default.
    memory_budget_bytes: Optional[int] = None
    model_dir: Optional[str] = None  # rank 0 saves the model here (atomically); None: not saved
    progress_every: int = 10  # rank 0 prints a progress line every this many epochs (0: never)
    collective_timeout_seconds: float = 120.0  # a rank waiting on a dead peer gives up after this
    # Test hook: this rank raises at the end of epoch `fail_at_epoch`, while its peers wait for it.
    fail_on_rank: Optional[int] = None
    fail_at_epoch: int = 2

    @classmethod
    def from_prepared(cls, prepared, config: TrainConfig = TrainConfig(), model_dir=None, **options):
        """A job for `prepared` (data.PreparedData); the driver's memory budget unless options say otherwise."""
        if getattr(prepared, "oversample", 1) > 1:
            raise LabError(f"oversample={prepared.oversample}: distributed training reads the prepared Parquet "
                           f"as written; copies of the rows are for single-node training")
        options.setdefault("memory_budget_bytes", TRAIN_MEMORY_BUDGET_BYTES)
        return cls(train_path=_absolute(prepared.train_path), test_path=_absolute(prepared.test_path),
                   island_vocabulary=list(prepared.island_vocabulary),
                   feature_ranges=dict(prepared.feature_ranges),
                   standardization=dict(prepared.standardization),
                   epochs=config.epochs, batch_size=config.batch_size, learning_rate=config.learning_rate,
                   hidden_units=config.hidden_units, seed=config.seed,
                   model_dir=None if model_dir is None else _absolute(model_dir), **options)

    def check_data_readable(self) -> None:
        """On a rank: a one-line LabError if this machine cannot see the prepared Parquet."""
        for name, path in (("training", self.train_path), ("test", self.test_path)):
            if not Path(path).exists():
                raise LabError(f"{path}: the prepared {name} set is not on this rank's machine; put the prepared "
                               f"Parquet on storage every node reads (a shared file system, /dbfs or /Volumes)")


def _absolute(path) -> str:
    """Ranks may run in another working directory (Spark tasks, other nodes): give them absolute paths."""
    return os.path.abspath(path)


def rank0_test_loader(job: DistributedJob):
    """Rank 0's test loader: the whole test set when its arrays fit the memory budget, else streamed."""
    from ..batches import StreamingBatches, load_arrays, parquet_rows_and_bytes
    from ..config import FEATURES, LABEL
    from ..train import make_dataset, make_loader

    budget = TRAIN_MEMORY_BUDGET_BYTES if job.memory_budget_bytes is None else job.memory_budget_bytes
    if parquet_rows_and_bytes(job.test_path, FEATURES, LABEL)[1] <= budget:
        return make_loader(make_dataset(*load_arrays(job.test_path, FEATURES, LABEL)), job.batch_size)
    return StreamingBatches(job.test_path, FEATURES, LABEL, job.batch_size, job.seed)


def rank_share(train, rank: int, world_size: int, batch_size: int) -> tuple[int, Optional[list]]:
    """(rows this rank trained on per epoch, the row groups it read in the last epoch) for
    batches.training_batches' result. Loaded whole there are no groups of its own: (rows, None)."""
    if not train.streaming:
        return -(-train.rows // world_size), None  # DistributedSampler pads to an even split
    stream = train.loader
    groups = [[stream.footers.files[g.file].name, g.index] for g in stream.shares()[rank]]
    return (train.rows if world_size == 1 else len(stream) * batch_size), groups


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


def rank_report(model, rank: int, history, train_seconds: float, share: tuple) -> dict:
    """What each rank contributes to the result (`share` from rank_share); every rank's report is gathered."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"rank": rank, "pid": os.getpid(), "cpus": cpus, "idle_threads": idle_thread_count(),
            "checksum": state_checksum(model),
            "train_seconds": train_seconds, "train_rows": share[0], "row_groups": share[1],
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
        "rank_cpus": [report["cpus"] for report in reports],
        "rank_idle_threads": [report["idle_threads"] for report in reports],
        "train_seconds": round(max(report["train_seconds"] for report in reports), 4),
        "train_rows_per_rank": [report["train_rows"] for report in reports],
        "train_streamed": reports[0]["row_groups"] is not None,
        # Streamed: the row groups each rank read in the last epoch (None: every rank loaded the set whole).
        "train_row_groups_per_rank": [report["row_groups"] for report in reports],
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
            save_model(model, staging, job.island_vocabulary, job.feature_ranges, summary,
                       standardization=job.standardization)
        result["model_dir"] = job.model_dir
    return result


def check_weights_identical(result: dict) -> None:
    if not result.get("weights_identical"):
        checksums = ", ".join(f"rank {i}: {c[:12]}" for i, c in enumerate(result.get("rank_checksums", [])))
        raise LabError(f"{result.get('engine')} training ended with different weights on different ranks ({checksums})")
