"""Training batches from a prepared Parquet folder (Spark's part files), in bounded memory.

Data that fits the memory budget is loaded whole and batched exactly as today (train.make_loader);
larger data is streamed: one row group at a time through a shuffle buffer, so memory stays at the
buffer plus one row group whatever the size of the data.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data.distributed import DistributedSampler

from . import config
from .train import make_dataset, make_loader, shuffled_sampler

# Spark writes a unique row id with the data: sorting by it makes the rows independent of the file split.
ROW = "Row"
DEFAULT_SHUFFLE_BUFFER_ROWS = 1 << 20  # 28 MiB of PenguinNet rows: small next to any budget, mixes well


def row_bytes(n_features: int) -> int:
    """Bytes one row takes in training: float32 features and an int64 label."""
    return 4 * n_features + 8


class RowGroup(NamedTuple):
    file: int  # index into the sorted part files
    index: int  # row group within that file
    rows: int


class Footers(NamedTuple):
    files: list
    metadata: list  # pq.FileMetaData per file, kept so each read skips parsing the footer again
    groups: list  # non-empty row groups, by file name then index


def part_files(path) -> list[Path]:
    """The Parquet files of a folder, by name; Spark's _SUCCESS and hidden .crc files are skipped.
    A path to one Parquet file is that file."""
    path = Path(path)
    if path.is_file():
        return [path]
    files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix == ".parquet"
                    and not p.name.startswith(("_", "."))), key=lambda p: p.name)
    if not files:
        raise FileNotFoundError(f"{path}: no .parquet files")
    return files


def read_footers(path, columns: Sequence[str]) -> Footers:
    """Every part file's footer (no data read), checking that each has `columns`."""
    files = part_files(path)
    metadata = [pq.read_metadata(f) for f in files]
    for file, meta in zip(files, metadata):
        schema = meta.schema.to_arrow_schema()
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise ValueError(f"{file}: no column {', '.join(missing)} (has {', '.join(schema.names)})")
    groups = [RowGroup(f, g, meta.row_group(g).num_rows) for f, meta in enumerate(metadata)
              for g in range(meta.num_row_groups) if meta.row_group(g).num_rows > 0]
    return Footers(files, metadata, groups)


def read_group(footers: Footers, group: RowGroup, columns: Sequence[str]) -> pa.Table:
    with pq.ParquetFile(footers.files[group.file], metadata=footers.metadata[group.file]) as file:
        return file.read_row_group(group.index, columns=list(columns))


def column(table: pa.Table, name: str) -> np.ndarray:
    values = table.column(name)
    if values.null_count:
        raise ValueError(f"column {name} has {values.null_count} missing values; prepare the data first")
    return values.to_numpy()


def parquet_rows_and_bytes(path, features: Sequence[str] = config.FEATURES,
                           label: str = config.LABEL) -> tuple[int, int]:
    """(rows, bytes) of a Parquet folder from its footers alone: bytes is what the arrays of
    `load_arrays` take (float32 features, int64 label). Loading them peaks at about 1.3 times that."""
    footers = read_footers(path, [*features, label])
    rows = sum(g.rows for g in footers.groups)
    return rows, rows * row_bytes(len(features))


def load_arrays(path, features: Sequence[str], label: str) -> tuple[np.ndarray, np.ndarray]:
    """The whole folder as (x float32 [n, len(features)], y int64 [n]), rows in `Row` order.

    The ids are read first, so that every row group can then be written straight to its sorted place:
    memory is the result plus each row's place (8 bytes) and one row group, not a second copy.
    """
    footers = read_footers(path, [*features, label, ROW])
    ids = np.concatenate([column(read_group(footers, g, [ROW]), ROW) for g in footers.groups]
                         or [np.empty(0, np.int64)])
    order = np.argsort(ids, kind="stable")
    if len(ids) > 1 and np.any(ids[order[1:]] == ids[order[:-1]]):
        raise ValueError(f"{path}: column {ROW} repeats ids; it must be unique")
    place = np.empty_like(order)
    place[order] = np.arange(len(order))
    del ids, order  # not needed past here; freed before the result is allocated
    x = np.empty((len(place), len(features)), np.float32)
    y = np.empty(len(place), np.int64)
    start = 0
    for group in footers.groups:
        table = read_group(footers, group, [*features, label])
        rows = place[start: start + table.num_rows]
        for j, name in enumerate(features):
            x[rows, j] = column(table, name)
        y[rows] = column(table, label)
        start += table.num_rows
    return x, y


class StreamingBatches:
    """Shuffled batches streamed from a Parquet folder: an iterable for `fit` (one epoch per `iter()`)
    yielding (features float32 [b, len(features)], labels int64 [b]).

    Each epoch the row groups are shuffled (seed, epoch) and dealt out by rank, `groups[rank::world_size]`.
    Each rank reads its groups one at a time into a buffer of `shuffle_buffer_rows` rows and, once the
    buffer is full, emits rows drawn at random from it (seed, epoch, rank). On one rank every row comes
    once per epoch, the last batch possibly short. On several ranks all ranks emit the same number of
    full batches, the smallest rank's, so collective ops never wait on a rank that has run out; the
    rows left over differ from epoch to epoch as the groups are dealt anew.

    `peak_rows_held` is the most rows held at once (buffer plus the row group being read), never more
    than `max_rows_held` = shuffle_buffer_rows + the largest row group.
    """

    def __init__(self, path, features: Sequence[str], label: str, batch_size: int, seed: int,
                 shuffle_buffer_rows: Optional[int] = None, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        if shuffle_buffer_rows is None:
            shuffle_buffer_rows = max(DEFAULT_SHUFFLE_BUFFER_ROWS, batch_size)
        if shuffle_buffer_rows < batch_size:
            raise ValueError(f"shuffle_buffer_rows ({shuffle_buffer_rows}) must hold a batch ({batch_size})")
        if seed < 0:
            raise ValueError(f"seed must be at least 0, not {seed}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of world_size {world_size}")
        self.features, self.label = list(features), label
        self.batch_size, self.seed = batch_size, seed
        self.shuffle_buffer_rows = shuffle_buffer_rows
        self.rank, self.world_size = rank, world_size
        self.footers = read_footers(path, [*self.features, label])
        self.rows = sum(g.rows for g in self.footers.groups)
        if self.rows == 0:
            raise ValueError(f"{path}: no rows")
        if len(self.footers.groups) < world_size:
            raise ValueError(f"{path}: {len(self.footers.groups)} row groups for {world_size} ranks; "
                             "write smaller row groups or load the data whole")
        self.max_rows_held = shuffle_buffer_rows + max(g.rows for g in self.footers.groups)
        self.peak_rows_held = 0
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for `epoch` (pass as fit's before_epoch)."""
        if epoch < 0:
            raise ValueError(f"epoch must be at least 0, not {epoch}")
        self.epoch = epoch

    def shares(self) -> list[list[RowGroup]]:
        """This epoch's row groups of every rank. The trailing 0 and 1 keep this generator's seed apart
        from the buffer's: numpy's seeding treats [a, b] and [a, b, 0] alike."""
        order = np.random.default_rng([self.seed, self.epoch, 0]).permutation(len(self.footers.groups))
        shuffled = [self.footers.groups[i] for i in order]
        return [shuffled[r:: self.world_size] for r in range(self.world_size)]

    def _batches_per_epoch(self, shares) -> int:
        if self.world_size == 1:
            return math.ceil(self.rows / self.batch_size)
        return min(sum(g.rows for g in share) // self.batch_size for share in shares)

    def __len__(self) -> int:
        return self._batches_per_epoch(self.shares())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        shares = self.shares()
        limit = self._batches_per_epoch(shares)
        if limit == 0:
            raise ValueError(f"a rank has fewer than batch_size ({self.batch_size}) rows this epoch")
        mine = shares[self.rank]
        return self._stream(mine, limit, np.random.default_rng([self.seed, self.epoch, 1, self.rank]))

    def _stream(self, groups: list, limit: int, rng: np.random.Generator):
        capacity = min(self.shuffle_buffer_rows, sum(g.rows for g in groups))
        buffer_x = np.empty((capacity, len(self.features)), np.float32)
        buffer_y = np.empty(capacity, np.int64)
        # Slots holding no row. A batch leaves holes where it was drawn; the next rows fill them.
        free = np.arange(capacity)
        emitted = 0

        def batch(slots):
            # Fancy indexing copies: the batch must not change when its slots are refilled.
            return torch.from_numpy(buffer_x[slots]), torch.from_numpy(buffer_y[slots])

        for group in groups:
            table = read_group(self.footers, group, [*self.features, self.label])
            self.peak_rows_held = max(self.peak_rows_held, capacity - len(free) + table.num_rows)
            xs = [column(table, name) for name in self.features]
            ys = column(table, self.label)
            start = 0
            while start < table.num_rows:
                if len(free) == 0:
                    # A uniform draw of distinct slots from the full buffer (a partial shuffle: O(buffer)).
                    free = rng.choice(capacity, self.batch_size, replace=False)
                    yield batch(free)
                    emitted += 1
                    if emitted == limit:
                        return
                take = min(len(free), table.num_rows - start)
                slots, free = free[:take], free[take:]
                for j, values in enumerate(xs):
                    buffer_x[slots, j] = values[start: start + take]
                buffer_y[slots] = ys[start: start + take]
                start += take
            del table, xs, ys  # let the group go before the next one is read
        held = np.ones(capacity, bool)
        held[free] = False
        rest = rng.permutation(np.flatnonzero(held))
        for begin in range(0, len(rest), self.batch_size):
            if emitted == limit:
                return
            yield batch(rest[begin: begin + self.batch_size])
            emitted += 1


@dataclass
class TrainingBatches:
    """Where training's batches come from. Pass `loader` and `before_epoch` to fit, whichever path:
    fit(model, data.loader, ..., before_epoch=data.before_epoch)."""

    streaming: bool  # False: loaded whole (x and y set); True: streamed from Parquet
    rows: int
    bytes: int  # of the arrays, had they been loaded
    budget_bytes: int
    loader: Iterable
    before_epoch: Optional[Callable[[int], None]]
    x: Optional[np.ndarray] = None
    y: Optional[np.ndarray] = None


def training_batches(path, features: Sequence[str], label: str, batch_size: int, seed: int,
                     memory_budget_bytes: Optional[int] = None, rank: int = 0, world_size: int = 1,
                     shuffle_buffer_rows: Optional[int] = None) -> TrainingBatches:
    """Load the data whole if its arrays fit `memory_budget_bytes` (default
    config.TRAIN_MEMORY_BUDGET_BYTES), else stream it.

    Loaded whole, the batches are today's: on one rank make_loader with shuffled_sampler(seed); on
    several, a DistributedSampler as the distributed ranks build today (x and y are there for another).
    """
    budget = config.TRAIN_MEMORY_BUDGET_BYTES if memory_budget_bytes is None else memory_budget_bytes
    rows, size = parquet_rows_and_bytes(path, features, label)
    if size > budget:
        stream = StreamingBatches(path, features, label, batch_size, seed, shuffle_buffer_rows, rank, world_size)
        return TrainingBatches(True, rows, size, budget, stream, stream.set_epoch)
    x, y = load_arrays(path, features, label)
    dataset = make_dataset(x, y)
    if world_size == 1:
        loader, before_epoch = make_loader(dataset, batch_size, shuffled_sampler(dataset, seed)), None
    else:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        loader, before_epoch = make_loader(dataset, batch_size, sampler), sampler.set_epoch
    return TrainingBatches(False, rows, size, budget, loader, before_epoch, x, y)
