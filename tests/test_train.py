"""The training loop: device handling, loaders without worker processes, determinism, quality."""

import json

import numpy as np
import pytest
import torch

from penguin_lab.config import TrainConfig
from penguin_lab.distributed import state_checksum
from penguin_lab.model import PenguinNet
from penguin_lab.pipeline import train_model
from penguin_lab.train import evaluate, make_dataset, make_loader, train_one_epoch


def test_batches_follow_the_model_to_its_device(prepared):
    """On a GPU the lab moved the model but not the batches and crashed. The 'meta' device (no data, shapes
    only) stands in for a second device here: any batch left on the CPU would fail the same way."""
    device = torch.device("meta")
    model = PenguinNet().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    loader = make_loader(make_dataset(prepared.x_train, prepared.y_train), 20)
    loss = train_one_epoch(model, loader, optimizer, device)
    val_loss, accuracy = evaluate(model, loader, device)
    assert loss.device.type == val_loss.device.type == accuracy.device.type == "meta"


def test_a_batch_left_on_another_device_is_what_fails():
    model = PenguinNet().to("meta")
    with pytest.raises(RuntimeError):
        model(torch.zeros(2, 5))  # what the lab's loop does: CPU data into a model on another device


def test_loader_uses_no_worker_processes_and_yields_whole_batches(prepared):
    loader = make_loader(make_dataset(prepared.x_train, prepared.y_train), 20)
    assert loader.num_workers == 0
    sizes = [len(labels) for _, labels in loader]
    assert sizes[:-1] == [20] * (len(sizes) - 1) and sum(sizes) == len(prepared.y_train)
    features, labels = next(iter(loader))
    assert features.dtype == torch.float32 and labels.dtype == torch.long
    assert torch.equal(features, torch.as_tensor(prepared.x_train[:20]))


def test_same_seed_same_weights_and_metrics(prepared):
    config = TrainConfig(epochs=5)
    first, history1, _ = train_model(prepared, config)
    second, history2, _ = train_model(prepared, config)
    assert state_checksum(first) == state_checksum(second)
    assert json.dumps(history1.to_dict()) == json.dumps(history2.to_dict())
    other, _, _ = train_model(prepared, TrainConfig(epochs=5, seed=1))
    assert state_checksum(other) != state_checksum(first)


def test_loss_falls(prepared):
    _, history, _ = train_model(prepared, TrainConfig(epochs=10))
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.val_loss[-1] < history.val_loss[0]


def test_100_epochs_reach_097_on_the_honest_split(lab_run):
    out, _ = lab_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overlap_rows"] == 0
    assert metrics["epochs"] == 100 and len(metrics["history"]["train_loss"]) == 100
    assert metrics["test_accuracy"] >= 0.97
    assert np.isclose(metrics["final_val_loss"], metrics["history"]["val_loss"][-1])
