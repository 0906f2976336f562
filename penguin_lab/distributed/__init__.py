"""Distributed training: the lab's Horovod section, and TorchDistributor, locally or on a cluster.

Both engines run one per-rank function (horovod_rank_main, torch_rank_main) that builds a
DistributedSampler, wraps the single-node PenguinNet and optimizer for its engine, and calls the
same train.fit as the single-node lab. Rank 0 tests and saves the model; every rank returns the
same result, with the checksums of every rank's weights.

Importing this module is cheap (the CLI imports it to register `penguin-lab distributed`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ..config import DEFAULT_DATA, TrainConfig
from ..errors import LabError
from .common import FAIL_ON_RANK_ENV, DistributedJob, DistributedTrainingError, check_weights_identical
from .horovod_engine import HorovodRunner, horovod_available, horovod_rank_main, run_horovod
from .torch_engine import run_torch, torch_rank_main

ENGINES = ("horovod", "torch")

__all__ = ["ENGINES", "DistributedJob", "DistributedTrainingError", "HorovodRunner", "horovod_available",
           "horovod_rank_main", "torch_rank_main", "run_horovod", "run_torch", "train_distributed", "register"]


def train_distributed(prepared, out_dir, engine: str = "torch", num_processes: int = 2, local_mode: bool = True,
                      config: TrainConfig = TrainConfig(), spark=None, echo: bool = False,
                      fail_on_rank=None) -> dict:
    """Train on `prepared` with `engine`; write out_dir/metrics.json and out_dir/model/ all at once.

    Nothing appears under out_dir unless every rank finished and all ranks ended with identical
    weights. Returns the metrics. `fail_on_rank` is a test hook: that rank raises during training.
    """
    from ..artifacts import staged_dir

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
            "config": config.to_dict(),
            "total_seconds": round(time.perf_counter() - started, 4),
            "history": result["history"],
        }
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def cmd_distributed(args) -> int:
    import contextlib

    from ..data import get_spark, prepare_splits
    from ..validate import read_penguins_csv

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)
    out = Path(args.out) if args.out else _default_out(args.engine)
    if args.engine == "horovod" and not horovod_available():
        raise LabError("Horovod is not installed: run `make horovod` (builds it once for this PyTorch), "
                       "or use --engine torch")
    fail_on_rank = _fail_on_rank_from_env()
    raw, _invalid_rows = read_penguins_csv(args.data)
    spark = get_spark()
    prepared = prepare_splits(spark, raw, config, where=str(args.data))
    # Workers' output (with --verbose) goes to stderr: stdout is for the summary.
    with contextlib.redirect_stdout(sys.stderr):
        metrics = train_distributed(prepared, out, args.engine, args.np, args.local_mode, config, spark,
                                    echo=args.verbose, fail_on_rank=fail_on_rank)
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
    from ..cli import positive_int

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
    parser.add_argument("--batch-size", type=positive_int, default=TrainConfig.batch_size, help="rows per batch, per process")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="penguin CSV (default: the shipped data)")
    parser.add_argument("--verbose", action="store_true", help="show the workers' output (on stderr)")
    parser.set_defaults(func=cmd_distributed)

