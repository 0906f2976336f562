"""Looking at a trained model: the loss curves, the learned weights, and the run's figures."""

from __future__ import annotations

from pathlib import Path


def plot_loss(history, path: Path | None = None):
    """Training and validation loss per epoch, as in the lab. Saves a PNG when `path` is given."""
    import matplotlib

    if path is not None and matplotlib.get_backend().lower() not in ("agg",) and not _in_notebook():
        matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(history.epoch, history.train_loss, label="training")
    axes.plot(history.epoch, history.val_loss, label="validation")
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss")
    axes.legend(loc="upper right")
    axes.set_title("Penguin classifier: loss per epoch")
    if path is not None:
        figure.savefig(path, dpi=100, bbox_inches="tight")
    return figure


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
        return get_ipython() is not None
    except ImportError:
        return False


def weights_report(model) -> str:
    """Each layer's weights and biases, as the lab prints them (fc1 10x5, fc2 10x10, fc3 3x10)."""
    import numpy as np

    lines = []
    with np.printoptions(precision=4, suppress=True, linewidth=120):
        for name, tensor in model.state_dict().items():
            lines.append(f"{name} {tuple(tensor.shape)}\n{tensor.cpu().numpy()}")
    return "\n".join(lines) + "\n"


def plot_accuracy(history, path: Path | None = None):
    """Validation accuracy per epoch. Saves a PNG when `path` is given."""
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(history.epoch, history.val_accuracy, label="validation")
    axes.set_xlabel("epoch")
    axes.set_ylabel("accuracy")
    axes.set_ylim(0, 1.02)
    axes.set_title("Penguin classifier: accuracy per epoch")
    if path is not None:
        figure.savefig(path, dpi=100, bbox_inches="tight")
    return figure


def confusion_counts(model, data_loader, n_classes: int):
    """counts[true, predicted] over held-out batches (a loader of (features, labels))."""
    import torch

    counts = torch.zeros((n_classes, n_classes), dtype=torch.int64)
    model.eval()
    with torch.no_grad():
        for features, labels in data_loader:
            predicted = model(features).argmax(dim=1)
            counts += torch.bincount(labels * n_classes + predicted, minlength=n_classes * n_classes).view(
                n_classes, n_classes)
    return counts.numpy()


def plot_confusion(counts, species: list, path: Path | None = None):
    """The test set's confusion matrix, species names on both axes, a count in every cell."""
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 4.5))
    axes.imshow(counts, cmap="Blues")
    ticks = range(len(species))
    axes.set_xticks(ticks, species)
    axes.set_yticks(ticks, species)
    axes.set_xlabel("predicted species")
    axes.set_ylabel("true species")
    for true in ticks:
        for predicted in ticks:
            value = int(counts[true][predicted])
            color = "white" if value > counts.max() / 2 else "black"
            axes.text(predicted, true, str(value), ha="center", va="center", color=color)
    axes.set_title("Test set: true and predicted species")
    if path is not None:
        figure.savefig(path, dpi=100, bbox_inches="tight")
    return figure
