"""The whole single-node lab as one call: read, prepare with Spark, train, evaluate, save."""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .config import DEFAULT_DATA, TrainConfig
from .errors import LabError


def train_model(prepared, config: TrainConfig, progress: bool = False):
    """PenguinNet trained with Adam on the prepared data. Returns (model, history, seconds)."""
    import torch

    from .model import PenguinNet
    from .train import fit, make_dataset, make_loader, pick_device, seed_everything, shuffled_sampler, tune_threads

    tune_threads()
    seed_everything(config.seed)
    device = pick_device()
    train_ds = make_dataset(prepared.x_train, prepared.y_train)
    test_ds = make_dataset(prepared.x_test, prepared.y_test)
    train_loader = make_loader(train_ds, config.batch_size, shuffled_sampler(train_ds, config.seed))
    test_loader = make_loader(test_ds, config.batch_size)
    model = PenguinNet(hidden_units=config.hidden_units).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)

    bar = _progress_bar(config.epochs) if progress else None
    on_epoch = None
    if bar is not None:
        def on_epoch(epoch, train_loss, val_loss, val_accuracy):
            bar.set_postfix(loss=f"{train_loss:.4f}", val_loss=f"{val_loss:.4f}", acc=f"{val_accuracy:.3f}")
            bar.update()
    started = time.perf_counter()
    history = fit(model, train_loader, test_loader, optimizer, config.epochs, device, on_epoch=on_epoch)
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


def write_run(out_dir: Path, model, prepared, history, metrics: dict) -> Path:
    """Write metrics.json, loss.png, weights.txt and model/ into `out_dir`, all at once."""
    from matplotlib import pyplot as plt

    from .artifacts import save_model, staged_dir
    from .evaluate import plot_loss, weights_report

    summary = {k: v for k, v in metrics.items() if k != "history"}
    try:
        with staged_dir(Path(out_dir)) as staging:
            save_model(model, staging / "model", prepared.island_vocabulary, prepared.feature_ranges, summary)
            plt.close(plot_loss(history, staging / "loss.png"))
            (staging / "weights.txt").write_text(weights_report(model))
            (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    except OSError as e:  # a full disk or a lost mount: nothing was left behind, say why
        raise LabError(f"{out_dir}: cannot write the results: {e.strerror or e}; nothing was written") from None
    return Path(out_dir)


def warm_up_imports() -> None:
    """Import what training and plotting load on first use (the first optimizer alone pulls in
    torch._dynamo, over a second), so that it overlaps with the JVM's start."""
    import torch
    from matplotlib import pyplot  # noqa: F401

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def run_lab(data_path=DEFAULT_DATA, out_dir=None, config: TrainConfig = TrainConfig(),
            progress: bool = False, drop_invalid: bool = False) -> dict:
    """The single-node lab end to end. Returns the metrics written to out_dir/metrics.json.

    Bad input (the data file, the output folder) is a LabError before any training; nothing is
    written to out_dir unless the whole run succeeds.
    """
    from .artifacts import check_output_dir
    from .data import get_spark, prepare_splits
    from .validate import read_penguins_csv

    started = time.perf_counter()
    check_output_dir(out_dir)
    # Checking the file takes milliseconds: do it before starting anything, so bad input fails at once.
    raw, invalid_rows = read_penguins_csv(data_path, drop_invalid=drop_invalid)
    # Start the JVM while Python loads PyTorch and matplotlib: they do not depend on each other.
    with ThreadPoolExecutor(max_workers=1) as pool:
        spark_ready = pool.submit(get_spark)
        warm_up_imports()
        spark = spark_ready.result()
    prepared = prepare_splits(spark, raw, config, where=str(data_path))
    model, history, train_seconds = train_model(prepared, config, progress)
    metrics = run_metrics(prepared, history, train_seconds, config, invalid_rows,
                          raw.attrs.get("repeated_header_rows", 0))
    metrics["data"] = str(data_path)
    metrics["total_seconds"] = round(time.perf_counter() - started, 4)
    write_run(Path(out_dir), model, prepared, history, metrics)
    return metrics
