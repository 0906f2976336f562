"""A whole distributed run: read and prepare the data with Spark, train with an engine, write the results."""

from __future__ import annotations

import contextlib
import json
import shutil
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
                    started: Optional[float] = None, track: Optional[bool] = None,
                    register: Optional[str] = None) -> dict:
    """`penguin-lab distributed`'s work: read `data`, prepare it with Spark, train, write `out`.

    The prepared Parquet is written inside the run's staging folder, so every rank reads it from
    there and it ends up in out/prepared/. Nothing appears in `out` unless all succeeds. `started` is
    the time.perf_counter() at which the command began (default: now), so that total_seconds counts
    the whole command. Returns the metrics. The run is logged to MLflow once, from this driver, after the
    ranks finish (tracking.py), unless `track` is False.
    """
    from ..artifacts import check_output_dir
    from ..spark import LARGE_INPUT_BYTES, get_spark, input_bytes
    from ..tracking import Tracking, run_params, tracked, tracking_enabled

    started = time.perf_counter() if started is None else started
    check_engine(engine, np)
    if engine == "horovod":
        require_horovod()  # before minutes of Spark preparation
    out = check_output_dir(out)
    spark = get_spark(large_input=input_bytes(data) >= LARGE_INPUT_BYTES)
    tracking = Tracking(tracking_enabled(track), out.parent)
    tracking.start(out.name, run_params(config, data, engine, np), {"local_mode": str(local_mode)})
    with tracked(tracking):
        metrics = _distributed_stages(spark, data, out, engine, np, local_mode, config, drop_invalid, verbose,
                                      fail_on_rank, started, tracking)
    tracking.history(metrics["history"])
    registered = tracking.finish(out, metrics, register)
    if registered:
        metrics["mlflow"]["registered"] = registered
    return metrics


def _distributed_stages(spark, data, out: Path, engine: str, np: int, local_mode: bool, config: TrainConfig,
                        drop_invalid: bool, verbose: bool, fail_on_rank, started: float, tracking) -> dict:
    from ..artifacts import load_model, staged_dir
    from ..data import prepare
    from ..pipeline import output_errors, prepared_entry, stage, write_plots
    from ..read import read_penguins
    from ..train import History

    seconds = {}
    with output_errors(out), staged_dir(Path(out)) as staging:
        scratch = staging / ".scratch"  # UTF-8 copies of inputs that need one; removed before the results appear
        scratch.mkdir()
        with stage(seconds, "read"):
            penguins = read_penguins(spark, data, scratch, drop_invalid=drop_invalid)
        with stage(seconds, "prepare"):
            prepared = prepare(spark, penguins, config, staging / "prepared")
        # Workers' output (with --verbose) goes to stderr: stdout is for the summary.
        with stage(seconds, "train"), contextlib.redirect_stdout(sys.stderr):
            metrics = train_into(staging, prepared, engine, np, local_mode, config, spark, echo=verbose,
                                 fail_on_rank=fail_on_rank)
        # train: starting the processes, training and rank 0's save (train_seconds is the training alone).
        with stage(seconds, "write"):
            shutil.rmtree(scratch, ignore_errors=True)
            metrics.update(invalid_rows=penguins.summary.invalid_rows,
                           repeated_header_rows=penguins.repeated_header_rows, data=str(data),
                           prepared=prepared_entry(prepared),
                           **tracking.reference())
            write_plots(staging, load_model(staging / "model")[0], History(**metrics["history"]), prepared.test_path)
            write_metrics(staging, metrics, started)
        metrics["stage_seconds"] = seconds
        write_metrics(staging, metrics, started)  # again, with the write stage's time (a few KB)
    metrics["total_seconds"] = round(time.perf_counter() - started, 4)  # the last file is in place
    return metrics


def train_distributed(prepared, out_dir, engine: str = "torch", num_processes: int = 2, local_mode: bool = True,
                      config: TrainConfig = TrainConfig(), spark=None, echo: bool = False,
                      fail_on_rank=None, extra_metrics: dict | None = None, started: Optional[float] = None) -> dict:
    """Train on `prepared` (data.PreparedData, its Parquet where every rank reads it) with `engine`;
    write out_dir/metrics.json and out_dir/model/ all at once.

    Nothing appears under out_dir unless every rank finished and all ranks ended with identical
    weights. Returns the metrics. `fail_on_rank` is a test hook: that rank raises during training.
    total_seconds counts from `started` (a time.perf_counter(); default: now).
    """
    from ..artifacts import staged_dir

    check_engine(engine, num_processes)
    started = time.perf_counter() if started is None else started
    with staged_dir(Path(out_dir)) as staging:
        metrics = train_into(staging, prepared, engine, num_processes, local_mode, config, spark, echo,
                             fail_on_rank)
        metrics.update(extra_metrics or {})
        write_metrics(staging, metrics, started)
    return metrics


def check_engine(engine: str, num_processes: int) -> None:
    if engine not in ENGINES:
        raise LabError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if num_processes < 1:
        raise LabError(f"need at least 1 process, not {num_processes}")


def train_into(staging: Path, prepared, engine: str, num_processes: int, local_mode: bool, config: TrainConfig,
               spark=None, echo: bool = False, fail_on_rank=None) -> dict:
    """Train with `engine`; rank 0 saves the model in staging/model. Returns the metrics (not yet written)."""
    job = DistributedJob.from_prepared(prepared, config, model_dir=staging / "model", fail_on_rank=fail_on_rank,
                                       progress_every=10 if echo else 0)
    if engine == "horovod":
        result = run_horovod(job, num_processes, local_mode, echo)
    else:
        result = run_torch(job, num_processes, local_mode, spark, echo)
    check_weights_identical(result)
    return {
        **{k: v for k, v in result.items() if k not in ("history", "model_dir")},
        "local_mode": local_mode,
        "num_processes": num_processes,
        **prepared.counts,
        "island_vocabulary": list(prepared.island_vocabulary),
        "config": config.to_dict(),
        "history": result["history"],
    }


def write_metrics(staging: Path, metrics: dict, started: float) -> None:
    """metrics.json, with total_seconds up to now; the history last, as it is the longest."""
    metrics["total_seconds"] = round(time.perf_counter() - started, 4)
    metrics["history"] = metrics.pop("history")
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
