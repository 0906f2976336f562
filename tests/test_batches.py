"""Training batches from a prepared Parquet folder: footers, the whole load, streaming, the choice."""

import os
import shutil
import subprocess
import sys
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data.distributed import DistributedSampler

from penguin_lab import config
from penguin_lab.batches import (ROW, StreamingBatches, load_arrays, parquet_rows_and_bytes, row_bytes,
                                 training_batches)
from penguin_lab.config import FEATURES, LABEL
from penguin_lab.model import PenguinNet
from penguin_lab.train import evaluate, fit, make_dataset, make_loader, seed_everything, shuffled_sampler

ROWS, GROUP_ROWS = 10_000, 700
# Three species as three well separated clusters, at the scale of the prepared penguin columns.
CENTERS = np.array([[0, 39, 18, 19, 37], [1, 47, 15, 22, 50], [2, 49, 18, 20, 37]], np.float32)


def synthetic(rows, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, rows)
    x = (CENTERS[y] + rng.normal(0, 1, (rows, 5))).astype(np.float32)
    return x, y


def write_parts(folder, x, y, seed=0, files=4, group_rows=GROUP_ROWS):
    """Rows of `x`, `y` (Row = their index) as Spark leaves them: shuffled over part files of uneven
    sizes, each in several row groups, beside a _SUCCESS marker and hidden .crc files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = rng.permutation(len(y))
    cuts = np.sort(rng.choice(np.arange(1, len(y)), files - 1, replace=False))
    for k, part in enumerate(np.split(ids, cuts)):
        table = pa.table({**{name: x[part, j] for j, name in enumerate(FEATURES)},
                          LABEL: y[part].astype(np.int32), ROW: part.astype(np.int64)})
        pq.write_table(table, folder / f"part-{k:05d}-c000.snappy.parquet", row_group_size=group_rows)
        (folder / f".part-{k:05d}-c000.snappy.parquet.crc").write_bytes(b"crc")
    (folder / "_SUCCESS").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def data():
    return synthetic(ROWS)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, data):
    return write_parts(tmp_path_factory.mktemp("prepared") / "train", *data)


def epoch_batches(stream, epoch):
    stream.set_epoch(epoch)
    return list(stream)


def group_row_ids(batches, group):
    """The Row ids a row group holds, read here with pyarrow directly."""
    file = pq.ParquetFile(batches.footers.files[group.file])
    return file.read_row_group(group.index, columns=[ROW]).column(ROW).to_numpy()


def row_ids(batches):
    return np.concatenate([labels.numpy() for _, labels in batches])


# --- footers and the whole load ------------------------------------------------------------------

def test_footers_give_rows_and_bytes_without_reading_data(folder, tmp_path):
    assert parquet_rows_and_bytes(folder) == (ROWS, ROWS * (5 * 4 + 8))
    # The same files with every data page zeroed: the footers still answer, a real read fails.
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    for file in broken.glob("part-*.parquet"):
        raw = bytearray(file.read_bytes())
        footer = int.from_bytes(raw[-8:-4], "little")
        raw[4: len(raw) - 8 - footer] = bytes(len(raw) - 12 - footer)
        file.write_bytes(bytes(raw))
    assert parquet_rows_and_bytes(broken) == (ROWS, ROWS * row_bytes(5))
    with pytest.raises((OSError, pa.ArrowException)):
        load_arrays(broken, FEATURES, LABEL)


def test_load_arrays_is_in_row_order_whatever_the_split(folder, data, tmp_path):
    x, y = load_arrays(folder, FEATURES, LABEL)
    assert x.dtype == np.float32 and x.shape == (ROWS, 5) and y.dtype == np.int64
    np.testing.assert_array_equal(x, data[0])
    np.testing.assert_array_equal(y, data[1])
    other = write_parts(tmp_path / "other", *data, seed=7, files=3, group_rows=333)
    x2, y2 = load_arrays(other, FEATURES, LABEL)
    assert np.array_equal(x2, x) and np.array_equal(y2, y)


def test_loaded_arrays_give_todays_batches(folder, data):
    def batches(x, y):
        dataset = make_dataset(x, y)
        return list(make_loader(dataset, 64, shuffled_sampler(dataset, 3)))

    for (fa, la), (fb, lb) in zip(batches(*load_arrays(folder, FEATURES, LABEL)), batches(*data), strict=True):
        assert torch.equal(fa, fb) and torch.equal(la, lb)


def test_bad_folders_are_refused(tmp_path, data):
    x, y = data
    table = pa.table({**{name: x[:10, j] for j, name in enumerate(FEATURES)}, LABEL: y[:10].astype(np.int32),
                      ROW: np.zeros(10, np.int64)})
    (tmp_path / "dup").mkdir()
    pq.write_table(table, tmp_path / "dup" / "part-0.parquet")
    with pytest.raises(ValueError, match="unique"):
        load_arrays(tmp_path / "dup", FEATURES, LABEL)
    with pytest.raises(ValueError, match="no column Nope"):
        parquet_rows_and_bytes(tmp_path / "dup", FEATURES, "Nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        parquet_rows_and_bytes(tmp_path / "empty")


# --- streaming -----------------------------------------------------------------------------------
# With the Row id as the label, every batch says exactly which rows it holds.

def stream(folder, batch_size=128, seed=0, buffer=1000, rank=0, world_size=1, features=FEATURES):
    return StreamingBatches(folder, features, ROW, batch_size, seed, shuffle_buffer_rows=buffer,
                            rank=rank, world_size=world_size)


@pytest.mark.parametrize("batch_size, buffer", [(128, 1000), (1000, 1000), (64, 50_000)])
def test_one_rank_sees_every_row_once_per_epoch(folder, data, batch_size, buffer):
    batches_ = stream(folder, batch_size, buffer=buffer)
    for epoch in (1, 2):
        batches = epoch_batches(batches_, epoch)
        ids = row_ids(batches)
        assert np.array_equal(np.sort(ids), np.arange(ROWS))
        assert len(batches) == len(batches_) == -(-ROWS // batch_size)
        assert all(len(labels) == batch_size for _, labels in batches[:-1])
        features = torch.cat([f for f, _ in batches]).numpy()
        np.testing.assert_array_equal(features, data[0][ids])  # features stay with their row
        assert batches[0][0].dtype == torch.float32 and batches[0][1].dtype == torch.int64


def test_same_seed_same_batches_and_epochs_differ(folder):
    first = epoch_batches(stream(folder), 3)
    again = epoch_batches(stream(folder), 3)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(row_ids(first), row_ids(epoch_batches(stream(folder), 4)))
    assert not np.array_equal(row_ids(first), row_ids(epoch_batches(stream(folder, seed=1), 3)))


def test_a_batch_mixes_the_row_groups_in_the_buffer(folder):
    """With room for about 7 row groups, the first batch draws from most of them, not from one."""
    batches = stream(folder, batch_size=128, buffer=5000)
    group_of = {row: i for i, group in enumerate(batches.footers.groups) for row in group_row_ids(batches, group)}
    first = row_ids(epoch_batches(batches, 1)[:1])
    assert len({group_of[row] for row in first}) >= 6


@pytest.mark.parametrize("world_size, batch_size", [(2, 128), (3, 100), (4, 500)])
def test_ranks_are_disjoint_and_take_the_same_number_of_batches(folder, world_size, batch_size):
    for epoch in (1, 2):
        ranks = [stream(folder, batch_size, rank=r, world_size=world_size) for r in range(world_size)]
        batches = [epoch_batches(rank, epoch) for rank in ranks]
        counts = {len(b) for b in batches} | {len(rank) for rank in ranks}
        assert len(counts) == 1 and counts.pop() > 0
        assert all(len(labels) == batch_size for b in batches for _, labels in b)
        ids = [row_ids(b) for b in batches]
        everything = np.concatenate(ids)
        assert len(np.unique(everything)) == len(everything)  # no row on two ranks, or twice on one
        # Each rank's rows come from the row groups dealt to it; each takes the smallest share's full batches.
        shares = ranks[0].shares()
        assert len(ranks[0]) == min(sum(g.rows for g in share) // batch_size for share in shares)
        for rank_ids, share in zip(ids, shares, strict=True):
            assert set(rank_ids) <= set(np.concatenate([group_row_ids(ranks[0], g) for g in share]))


def test_more_ranks_than_row_groups_are_refused(folder):
    with pytest.raises(ValueError, match="row groups"):
        stream(folder, rank=0, world_size=100)
    with pytest.raises(ValueError, match="hold a batch"):
        stream(folder, batch_size=2000, buffer=1000)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        iter(stream(folder, batch_size=6000, buffer=6000, rank=0, world_size=2))  # ~5000 rows a rank


def test_rows_held_stay_within_the_buffer_and_one_row_group(folder):
    batches = stream(folder, batch_size=100, buffer=1000)
    assert batches.max_rows_held == 1000 + GROUP_ROWS
    assert len(row_ids(epoch_batches(batches, 1))) == ROWS
    assert 1000 < batches.peak_rows_held <= batches.max_rows_held


ARROW_POOLS = []


def test_peak_memory_does_not_grow_with_the_data(tmp_path):
    """2M rows (56 MB as arrays): streaming them keeps numpy (tracemalloc) and Arrow (its own pool)
    within a few MB; loading them whole takes their full size, which shows both are measured."""
    rows = 2_000_000
    x, y = synthetic(rows, seed=1)
    folder = write_parts(tmp_path / "big", x, y, files=3, group_rows=65_536)
    del x, y
    size = rows * row_bytes(5)

    def peak(work):
        pool = pa.proxy_memory_pool(pa.default_memory_pool())  # this run's Arrow allocations, alone
        ARROW_POOLS.append(pool)  # a pool must outlive every buffer taken from it, whenever freed
        saved = pa.default_memory_pool()
        pa.set_memory_pool(pool)
        tracemalloc.start()
        try:
            work()
            return tracemalloc.get_traced_memory()[1] + pool.max_memory()
        finally:
            tracemalloc.stop()
            pa.set_memory_pool(saved)

    batches = StreamingBatches(folder, FEATURES, LABEL, 4096, 0, shuffle_buffer_rows=65_536)
    streamed = peak(lambda: sum(len(labels) for _, labels in batches))
    loaded = peak(lambda: load_arrays(folder, FEATURES, LABEL))
    bound = (batches.max_rows_held + 4096) * row_bytes(5)
    assert streamed < 2 * bound < size / 4
    assert loaded > size


# --- training ------------------------------------------------------------------------------------

def train(folder, data, seed, epochs=4):
    seed_everything(seed)
    model = PenguinNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    batches = StreamingBatches(folder, FEATURES, LABEL, 100, seed, shuffle_buffer_rows=2000)
    history = fit(model, batches, make_loader(make_dataset(*data), 1000), optimizer, epochs,
                  torch.device("cpu"), before_epoch=batches.set_epoch)
    return model, history


def test_training_on_streamed_batches_learns_and_repeats(folder, data):
    model, history = train(folder, data, seed=0)
    assert history.val_accuracy[-1] > 0.95  # chance is 1/3
    assert history.train_loss[-1] < history.train_loss[0]
    _, accuracy = evaluate(model, make_loader(make_dataset(*data), 1000), torch.device("cpu"))
    assert accuracy.item() == history.val_accuracy[-1]
    again, _ = train(folder, data, seed=0)
    first, second = model.state_dict(), again.state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    other, _ = train(folder, data, seed=1, epochs=1)
    assert not torch.equal(other.state_dict()["fc1.weight"], first["fc1.weight"])


# --- the choice ----------------------------------------------------------------------------------

def test_data_within_budget_is_loaded_and_batched_as_today(folder, data):
    size = ROWS * row_bytes(5)
    chosen = training_batches(folder, FEATURES, LABEL, 64, 5, memory_budget_bytes=size)
    assert not chosen.streaming and (chosen.rows, chosen.bytes, chosen.budget_bytes) == (ROWS, size, size)
    assert chosen.before_epoch is None and np.array_equal(chosen.x, data[0]) and np.array_equal(chosen.y, data[1])
    dataset = make_dataset(*data)
    expected = make_loader(dataset, 64, shuffled_sampler(dataset, 5))
    for (fa, la), (fb, lb) in zip(chosen.loader, expected, strict=True):
        assert torch.equal(fa, fb) and torch.equal(la, lb)


def test_several_ranks_within_budget_get_todays_distributed_sampler(folder, data):
    chosen = training_batches(folder, FEATURES, LABEL, 64, 5, 1 << 30, rank=1, world_size=2)
    assert not chosen.streaming
    dataset = make_dataset(*data)
    sampler = DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=5)
    chosen.before_epoch(3)
    sampler.set_epoch(3)
    for (fa, la), (fb, lb) in zip(chosen.loader, make_loader(dataset, 64, sampler), strict=True):
        assert torch.equal(fa, fb) and torch.equal(la, lb)


def test_data_over_budget_is_streamed(folder, monkeypatch):
    chosen = training_batches(folder, FEATURES, LABEL, 64, 5, ROWS * row_bytes(5) - 1, rank=1, world_size=2)
    assert chosen.streaming and chosen.x is None and isinstance(chosen.loader, StreamingBatches)
    assert chosen.before_epoch == chosen.loader.set_epoch and chosen.loader.rank == 1
    monkeypatch.setattr(config, "TRAIN_MEMORY_BUDGET_BYTES", 1000)  # the default is read at each call
    assert training_batches(folder, FEATURES, LABEL, 64, 5).streaming


def test_budget_default_and_its_variable():
    def budget(env):
        code = "from penguin_lab import config; print(config.TRAIN_MEMORY_BUDGET_BYTES)"
        environ = {k: v for k, v in os.environ.items() if k != "PENGUIN_LAB_TRAIN_MEMORY_BYTES"}
        result = subprocess.run([sys.executable, "-c", code], env={**environ, **env},
                                capture_output=True, text=True, check=True)
        return int(result.stdout)

    assert budget({}) == 64 << 20
    assert budget({"PENGUIN_LAB_TRAIN_MEMORY_BYTES": "12345"}) == 12345
