"""A whole distributed run: read and prepare the data, train with an engine, write the results."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Optional

from ..config import TrainConfig
from ..errors import LabError
from .horovod import require_horovod, run_horovod
from .job import DistributedJob, check_weights_identical
from .torch import run_torch

ENGINES = ("horovod", "torch")


def run_distributed(data, out, engine: str, np: int, local_mode: bool, config: TrainConfig,
                    drop_invalid: bool = False, verbose: bool = False, fail_on_rank: Optional[int] = None,
                    started: Optional[float] = None) -> dict:
    """`penguin-lab distributed`'s work: read `data`, prepare it with Spark, train, write `out`.

    `started` is the time.perf_counter() at which the command began (default: now), so that
    total_seconds counts reading and preparing too. Returns the metrics.
    """
    from ..data import prepare_splits
    from ..spark import get_spark
    from ..read import read_penguins_csv

    started = time.perf_counter() if started is None else started
    if engine == "horovod":
        require_horovod()  # before minutes of Spark preparation
    raw, invalid_rows = read_penguins_csv(data, drop_invalid=drop_invalid)
    spark = get_spark()
    prepared = prepare_splits(spark, raw, config, where=str(data))
    # Workers' output (with --verbose) goes to stderr: stdout is for the summary.
    with contextlib.redirect_stdout(sys.stderr):
        return train_distributed(prepared, out, engine, np, local_mode, config, spark, echo=verbose,
                                 fail_on_rank=fail_on_rank, started=started,
                                 extra_metrics={"invalid_rows": invalid_rows, "data": str(data)})


def train_distributed(prepared, out_dir, engine: str = "torch", num_processes: int = 2, local_mode: bool = True,
                      config: TrainConfig = TrainConfig(), spark=None, echo: bool = False,
                      fail_on_rank=None, extra_metrics: dict | None = None, started: Optional[float] = None) -> dict:
    """Train on `prepared` with `engine`; write out_dir/metrics.json and out_dir/model/ all at once.

    Nothing appears under out_dir unless every rank finished and all ranks ended with identical
    weights. Returns the metrics. `fail_on_rank` is a test hook: that rank raises during training.
    total_seconds counts from `started` (a time.perf_counter(); default: now).
    """
    from ..artifacts import staged_dir

    if engine not in ENGINES:
        raise LabError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if num_processes < 1:
        raise LabError(f"need at least 1 process, not {num_processes}")
    started = time.perf_counter() if started is None else started
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
