"""Data loaders and the training loop, shared by single-node and distributed training."""

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, RandomSampler, Sampler, SequentialSampler, TensorDataset
from torch.utils.data.distributed import DistributedSampler

# The model returns log-probabilities, so negative log-likelihood is the cross-entropy loss.
loss_criteria = nn.NLLLoss()


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    return TensorDataset(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long))


def make_loader(dataset: TensorDataset, batch_size: int, sampler: Optional[Sampler] = None) -> DataLoader:
    """A loader that slices whole batches from the tensors, in this process.

    The lab's num_workers=1 starts a worker process on every pass over the data, which costs far
    more than these tiny batches. Taking a batch of indices at once, as one tensor (instead of one
    row at a time, then stacking) keeps the per-batch cost low too. Pass a sampler to shuffle or to
    shard the data between processes; the default keeps the rows in order.
    """
    sampler = sampler if sampler is not None else SequentialSampler(dataset)
    return DataLoader(dataset, sampler=IndexBatches(sampler, batch_size), batch_size=None)


class IndexBatches(Sampler):
    """The rows `sampler` picks, in its order, as tensors of at most `batch_size` indices:
    indexing a TensorDataset with one tensor gathers a whole batch in one operation."""

    def __init__(self, sampler: Sampler, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.sampler = sampler
        self.batch_size = batch_size

    def __iter__(self):
        return iter(sampled_indices(self.sampler).split(self.batch_size))

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)


def sampled_indices(sampler: Sampler) -> torch.Tensor:
    """One pass of `sampler` as a tensor of row indices, in the order it yields them."""
    if type(sampler) is DistributedSampler:
        return distributed_shard(sampler)
    if type(sampler) is RandomSampler and not sampler.replacement and sampler.generator is not None \
            and sampler.num_samples == len(sampler.data_source):
        # What RandomSampler yields, drawn the same way from its generator, without a Python number per row
        # (it also draws a second, unused permutation for the remainder of num_samples: so do we).
        order = torch.randperm(len(sampler.data_source), generator=sampler.generator)
        torch.randperm(len(sampler.data_source), generator=sampler.generator)
        return order
    return torch.tensor(list(sampler), dtype=torch.long)


def distributed_shard(sampler: DistributedSampler) -> torch.Tensor:
    """The indices DistributedSampler yields for this rank and epoch, computed without turning every
    row's index into a Python number. Each rank draws the permutation of all the rows: at a million
    rows that took 50 ms per epoch as Python numbers, and takes 16 ms as a tensor."""
    rows = len(sampler.dataset)
    if rows == 0:
        return torch.empty(0, dtype=torch.long)
    if sampler.shuffle:
        # The same generator and seed as DistributedSampler.__iter__: the same permutation.
        generator = torch.Generator()
        generator.manual_seed(sampler.seed + sampler.epoch)
        order = torch.randperm(rows, generator=generator)
    else:
        order = torch.arange(rows)
    # Padded (by repeating from the start) or cut to a multiple of the number of ranks, then dealt out.
    order = order.repeat(math.ceil(sampler.total_size / rows))[: sampler.total_size]
    return order[sampler.rank: sampler.total_size: sampler.num_replicas]


def shuffled_sampler(dataset: TensorDataset, seed: int) -> RandomSampler:
    return RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))


def train_one_epoch(model, data_loader, optimizer, device) -> torch.Tensor:
    """One pass over the training data; returns the mean loss per row (a tensor on `device`)."""
    model.train()
    total_loss = torch.zeros((), device=device)
    rows = 0
    for features, labels in data_loader:
        # The model lives on `device`; every batch must be moved there too.
        features, labels = features.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = loss_criteria(model(features), labels)
        loss.backward()
        optimizer.step()
        # Summing on the device avoids a GPU->CPU sync per batch.
        total_loss += loss.detach() * len(labels)
        rows += len(labels)
    return total_loss / rows


@torch.no_grad()
def evaluate(model, data_loader, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss per row and accuracy on held-out data (tensors on `device`)."""
    model.eval()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    rows = 0
    for features, labels in data_loader:
        features, labels = features.to(device), labels.to(device)
        log_probs = model(features)
        total_loss += nn.functional.nll_loss(log_probs, labels, reduction="sum")
        correct += (log_probs.argmax(dim=1) == labels).sum()
        rows += len(labels)
    return total_loss / rows, correct / rows


@dataclass
class History:
    epoch: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_accuracy: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "train_loss": self.train_loss,
                "val_loss": self.val_loss, "val_accuracy": self.val_accuracy}


def fit(model, train_loader, test_loader, optimizer, epochs: int, device,
        on_epoch: Optional[Callable[[int, float, float, float], None]] = None,
        before_epoch: Optional[Callable[[int], None]] = None) -> History:
    """Train for `epochs` passes, checking the held-out data after each one.

    `before_epoch(epoch)` lets distributed training reshuffle its shard (sampler.set_epoch);
    `on_epoch(epoch, train_loss, val_loss, val_accuracy)` reports progress.
    """
    history = History()
    for epoch in range(1, epochs + 1):
        if before_epoch is not None:
            before_epoch(epoch)
        train_loss = train_one_epoch(model, train_loader, optimizer, device).item()
        if test_loader is not None:
            val_loss, val_accuracy = (t.item() for t in evaluate(model, test_loader, device))
        else:
            val_loss = val_accuracy = float("nan")
        history.epoch.append(epoch)
        history.train_loss.append(train_loss)
        history.val_loss.append(val_loss)
        history.val_accuracy.append(val_accuracy)
        if on_epoch is not None:
            on_epoch(epoch, train_loss, val_loss, val_accuracy)
    return history


def seed_everything(seed: int) -> None:
    """Same seed, same weights and same batches: runs are repeatable."""
    torch.manual_seed(seed)
    np.random.seed(seed)


def tune_threads() -> None:
    """Tiny matrices run faster on one thread than split over a pool."""
    torch.set_num_threads(1)


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.start
