"""The training loop: device handling, loaders without worker processes, determinism, quality."""

import json

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, SequentialSampler, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from penguin_lab.config import TrainConfig
from penguin_lab.distributed import state_checksum
from penguin_lab.model import PenguinNet
from penguin_lab.pipeline import train_model
from penguin_lab.train import (IndexBatches, distributed_shard, evaluate, make_dataset, make_loader,
                                shuffled_sampler, train_one_epoch)


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


# --- batches of indices --------------------------------------------------------------------------

def batches_the_usual_way(sampler, batch_size):
    """What DataLoader's own batching would take: the sampler's indices, batch_size at a time."""
    return list(BatchSampler(sampler, batch_size, drop_last=False))


@pytest.mark.parametrize("rows", [1, 2, 3, 7, 10, 33])
@pytest.mark.parametrize("replicas", [1, 2, 3, 4])
@pytest.mark.parametrize("shuffle,drop_last", [(True, False), (False, False), (True, True), (False, True)])
def test_distributed_shards_are_exactly_what_distributed_sampler_yields(rows, replicas, shuffle, drop_last):
    """distributed_shard computes DistributedSampler's indices as a tensor; it must match the
    sampler for every rank and epoch, padding included (fewer rows than ranks too)."""
    dataset = TensorDataset(torch.arange(rows))
    for rank in range(replicas):
        sampler = DistributedSampler(dataset, num_replicas=replicas, rank=rank, shuffle=shuffle,
                                     seed=7, drop_last=drop_last)
        for epoch in (0, 1, 5):
            sampler.set_epoch(epoch)
            shard = distributed_shard(sampler)
            assert shard.dtype == torch.long
            assert shard.tolist() == list(sampler), (rank, epoch)


def test_loader_batches_follow_the_sampler_order(prepared):
    """Single-node (a seeded RandomSampler) and distributed (a DistributedSampler) training see the
    same batches as DataLoader's own batching would give, in the same order, epoch after epoch."""
    dataset = make_dataset(prepared.x_train, prepared.y_train)
    features_of, labels_of = dataset.tensors
    ours = make_loader(dataset, 16, shuffled_sampler(dataset, seed=3))
    usual_sampler = shuffled_sampler(dataset, seed=3)
    for _ in range(2):  # each epoch draws a new order from the same seeded generator, in both
        usual = batches_the_usual_way(usual_sampler, 16)
        got = list(ours)
        assert len(got) == len(usual) == len(ours)
        for (features, labels), indices in zip(got, usual):
            assert torch.equal(features, features_of[indices]) and torch.equal(labels, labels_of[indices])

    sampler = DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=0)
    loader = make_loader(dataset, 16, sampler)
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        got = [labels for _, labels in loader]
        expected = [labels_of[indices] for indices in batches_the_usual_way(sampler, 16)]
        assert len(got) == len(expected) == len(loader)
        assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_index_batches_refuses_an_empty_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        IndexBatches(SequentialSampler(range(3)), 0)


@pytest.mark.parametrize("rows", [1, 7, 1000])
def test_a_seeded_random_sampler_as_one_tensor_gives_its_own_order_every_epoch(rows):
    from torch.utils.data import RandomSampler

    from penguin_lab.train import sampled_indices

    dataset = make_dataset(np.zeros((rows, 5), np.float32), np.zeros(rows, np.int64))
    fast = RandomSampler(dataset, generator=torch.Generator().manual_seed(3))
    reference = RandomSampler(dataset, generator=torch.Generator().manual_seed(3))
    for _ in range(3):
        assert torch.equal(sampled_indices(fast), torch.tensor(list(reference)))
