"""What every rank receives (a DistributedJob) and what it returns: its report, and rank 0's result."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..config import TrainConfig
from ..errors import LabError
from .cpu import idle_thread_count
from .failures import InjectedFailure

if TYPE_CHECKING:  # numpy is imported by the workers, not by importing the package
    import numpy as np


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


def check_weights_identical(result: dict) -> None:
    if not result.get("weights_identical"):
        checksums = ", ".join(f"rank {i}: {c[:12]}" for i, c in enumerate(result.get("rank_checksums", [])))
        raise LabError(f"{result.get('engine')} training ended with different weights on different ranks ({checksums})")
