"""The whole single-node lab as one call: read, prepare with Spark, train, evaluate, save."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .config import DEFAULT_DATA, TrainConfig
from .errors import LabError


def data_loaders(prepared, config: TrainConfig):
    """(train loader, its before_epoch, test loader): whole in memory when a set fits the budget, else streamed
    from its Parquet row groups (batches.py)."""
    from .batches import StreamingBatches, parquet_rows_and_bytes, training_batches
    from .config import FEATURES, LABEL, TRAIN_MEMORY_BUDGET_BYTES
    from .train import make_dataset, make_loader, shuffled_sampler

    budget = TRAIN_MEMORY_BUDGET_BYTES
    streamed = training_batches(prepared.train_path, FEATURES, LABEL, config.batch_size, config.seed, budget)
    if streamed.streaming:
        if config.oversample > 1:
            raise LabError(f"--oversample {config.oversample}: the training set is larger than the memory budget "
                           f"({budget >> 20} MiB, PENGUIN_LAB_TRAIN_MEMORY_BYTES) and is streamed; copies need it "
                           f"in memory")
        train_loader, before_epoch = streamed.loader, streamed.before_epoch
    else:
        train_ds = make_dataset(prepared.x_train, prepared.y_train)  # with the --oversample copies
        train_loader, before_epoch = make_loader(train_ds, config.batch_size, shuffled_sampler(train_ds, config.seed)), None
    if parquet_rows_and_bytes(prepared.test_path, FEATURES, LABEL)[1] <= budget:
        test_loader = make_loader(make_dataset(prepared.x_test, prepared.y_test), config.batch_size)
    else:
        test_loader = StreamingBatches(prepared.test_path, FEATURES, LABEL, config.batch_size, config.seed)
    return train_loader, before_epoch, test_loader


def train_model(prepared, config: TrainConfig, progress: bool = False, on_epoch=None):
    """PenguinNet trained with Adam on the prepared data. Returns (model, history, seconds).

    `on_epoch(epoch, train_loss, val_loss, val_accuracy)` hears of every epoch as it ends (MLflow)."""
    import torch

    from .model import PenguinNet
    from .train import fit, pick_device, seed_everything, tune_threads

    tune_threads()
    seed_everything(config.seed)
    device = pick_device()
    train_loader, before_epoch, test_loader = data_loaders(prepared, config)
    model = PenguinNet(hidden_units=config.hidden_units).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)

    bar = _progress_bar(config.epochs) if progress else None

    def epoch_ended(epoch, train_loss, val_loss, val_accuracy):
        if bar is not None:
            bar.set_postfix(loss=f"{train_loss:.4f}", val_loss=f"{val_loss:.4f}", acc=f"{val_accuracy:.3f}")
            bar.update()
        if on_epoch is not None:
            on_epoch(epoch, train_loss, val_loss, val_accuracy)
    started = time.perf_counter()
    history = fit(model, train_loader, test_loader, optimizer, config.epochs, device, on_epoch=epoch_ended,
                  before_epoch=before_epoch)
    seconds = time.perf_counter() - started
    if bar is not None:
        bar.close()
    return model, history, seconds


def _progress_bar(total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="epochs", unit="epoch", file=sys.stderr, leave=False)


def run_metrics(prepared, history, train_seconds: float, config: TrainConfig, invalid_rows: int = 0,
                repeated_header_rows: int = 0) -> dict:
    """What a run reports, including every row it did not train on and why (incomplete, invalid, duplicate)."""
    return {
        "test_accuracy": history.val_accuracy[-1],
        **prepared.counts,
        "invalid_rows": invalid_rows,
        "repeated_header_rows": repeated_header_rows,
        "epochs": config.epochs,
        "final_train_loss": history.train_loss[-1],
        "final_val_loss": history.val_loss[-1],
        "train_seconds": round(train_seconds, 4),
        "config": config.to_dict(),
        "island_vocabulary": prepared.island_vocabulary,
        "history": history.to_dict(),
    }


def prepared_entry(prepared) -> dict:
    """metrics.json's word on the prepared Parquet in a results folder. Its features are standardized:
    the [mean, std] of each turn them back into the lab's values."""
    return {"train": "prepared/train", "test": "prepared/test", "format": "parquet",
            "standardization": prepared.standardization}


def write_results(staging: Path, model, prepared, history, metrics: dict) -> None:
    """metrics.json, the plots, weights.txt, model/ and prepared/ (the Parquet training and test sets) in `staging`."""
    import shutil

    from .artifacts import save_model
    from .evaluate import weights_report

    for side, path in (("train", prepared.train_path), ("test", prepared.test_path)):
        target = staging / "prepared" / side
        if Path(path).resolve() != target.resolve():  # prepared elsewhere (a notebook's temporary folder)
            shutil.copytree(path, target)
    metrics["prepared"] = prepared_entry(prepared)
    summary = {k: v for k, v in metrics.items() if k != "history"}
    save_model(model, staging / "model", prepared.island_vocabulary, prepared.feature_ranges, summary,
               standardization=prepared.standardization)
    write_plots(staging, model, history, prepared.test_path)
    (staging / "weights.txt").write_text(weights_report(model))
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def write_plots(folder: Path, model, history, test_path: str) -> None:
    """loss.png and accuracy.png per epoch, and confusion.png: the test set's true and predicted species."""
    from matplotlib import pyplot as plt

    from .batches import StreamingBatches
    from .config import FEATURES, LABEL, SPECIES
    from .evaluate import confusion_counts, plot_accuracy, plot_confusion, plot_loss

    plt.close(plot_loss(history, folder / "loss.png"))
    plt.close(plot_accuracy(history, folder / "accuracy.png"))
    counts = confusion_counts(model, StreamingBatches(test_path, FEATURES, LABEL, 1 << 16, 0), len(SPECIES))
    plt.close(plot_confusion(counts, SPECIES, folder / "confusion.png"))


def write_run(out_dir: Path, model, prepared, history, metrics: dict) -> Path:
    """Write a run's results into `out_dir`, all at once."""
    from .artifacts import staged_dir

    with output_errors(out_dir), staged_dir(Path(out_dir)) as staging:
        write_results(staging, model, prepared, history, metrics)
    return Path(out_dir)


@contextlib.contextmanager
def output_errors(out_dir):
    """A full disk or a lost mount: nothing was left behind (staged_dir), say why in one line."""
    try:
        yield
    except OSError as e:
        raise LabError(f"{out_dir}: cannot write the results: {e.strerror or e}; nothing was written") from None


def warm_up_imports() -> None:
    """Import what training and plotting load on first use (the first optimizer alone pulls in
    torch._dynamo, over a second), so that it overlaps with the JVM's start."""
    import torch
    from matplotlib import pyplot  # noqa: F401

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def run_lab(data_path=DEFAULT_DATA, out_dir=None, config: TrainConfig = TrainConfig(),
            progress: bool = False, drop_invalid: bool = False, track: bool | None = None,
            register: str | None = None) -> dict:
    """The single-node lab end to end. Returns the metrics written to out_dir/metrics.json.

    Spark reads and checks the data, then prepares it into Parquet inside the run's staging folder;
    bad input is a LabError before any training, and nothing appears in out_dir unless all succeeds.
    The run is also an MLflow run (tracking.py) unless `track` is False; `register` names the model.
    """
    from .artifacts import check_output_dir
    from .spark import LARGE_INPUT_BYTES, get_spark, input_bytes
    from .tracking import Tracking, run_params, tracked, tracking_enabled

    started = time.perf_counter()
    out_dir = check_output_dir(out_dir)
    tracking = Tracking(tracking_enabled(track), out_dir.parent)
    # Start the JVM while Python loads PyTorch and matplotlib (and MLflow): they do not depend on each other.
    with ThreadPoolExecutor(max_workers=1) as pool:
        spark_ready = pool.submit(get_spark, large_input=input_bytes(data_path) >= LARGE_INPUT_BYTES)
        warm_up_imports()
        tracking.start(out_dir.name, run_params(config, data_path))
        spark = spark_ready.result()
    with tracked(tracking):
        metrics = _run_stages(spark, data_path, out_dir, config, progress, drop_invalid, tracking, started)
    registered = tracking.finish(out_dir, metrics, register)
    if registered:
        metrics["mlflow"]["registered"] = registered
    return metrics


def _run_stages(spark, data_path, out_dir: Path, config: TrainConfig, progress: bool, drop_invalid: bool,
                tracking, started: float) -> dict:
    from .artifacts import staged_dir
    from .data import prepare
    from .progress import spark_stages
    from .read import read_penguins

    seconds = {}
    with output_errors(out_dir), staged_dir(Path(out_dir)) as staging, jobs_stopped_on_error(spark):
        with stage(seconds, "read"), spark_stages(spark, "reading", progress):
            penguins = read_penguins(spark, data_path, _scratch(staging), drop_invalid=drop_invalid)
        with stage(seconds, "prepare"), spark_stages(spark, "preparing", progress):
            prepared = prepare(spark, penguins, config, staging / "prepared")
        model, history, train_seconds = train_model(prepared, config, progress, on_epoch=tracking.epoch)
        metrics = run_metrics(prepared, history, train_seconds, config, penguins.summary.invalid_rows,
                              penguins.repeated_header_rows)
        metrics["data"] = str(data_path)
        metrics.update(tracking.reference())
        with stage(seconds, "write"):
            shutil.rmtree(staging / ".scratch", ignore_errors=True)
            write_results(staging, model, prepared, history, metrics)
        # metrics.json again, with the time it took to write the rest
        metrics["stage_seconds"] = {**seconds, "train": round(train_seconds, 4)}
        metrics["total_seconds"] = round(time.perf_counter() - started, 4)
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    metrics["total_seconds"] = round(time.perf_counter() - started, 4)  # the last file is in place
    return metrics


@contextlib.contextmanager
def jobs_stopped_on_error(spark, wait_seconds: float = 30):
    """On an error or Ctrl-C, Spark's running jobs are cancelled and awaited before the staging folder is
    removed: a task still writing Parquet there would otherwise leave files behind."""
    try:
        yield
    except BaseException:
        spark.sparkContext.cancelAllJobs()
        tracker, deadline = spark.sparkContext.statusTracker(), time.monotonic() + wait_seconds
        while tracker.getActiveJobsIds() and time.monotonic() < deadline:
            time.sleep(0.1)
        raise


def _scratch(staging: Path) -> Path:
    folder = staging / ".scratch"  # UTF-8 copies of inputs that need one; removed before the results appear
    folder.mkdir()
    return folder


@contextlib.contextmanager
def stage(seconds: dict, name: str):
    started = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - started, 4)
