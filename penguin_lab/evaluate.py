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
