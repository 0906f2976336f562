"""Training throughput from Parquet: the data loaded whole against the data streamed.

    python bench/bench_streaming.py [--rows 1000000] [--batch-size 65536] [--buffer-rows 262144] [--repeat 3]

Writes synthetic rows as Parquet part files (row groups of 64k rows) in a temporary folder, then trains
PenguinNet with Adam for one epoch through `fit`, on one thread (train.tune_threads):
- in memory: load_arrays once (its time shown apart), then make_loader with shuffled_sampler, as today;
- streaming: StreamingBatches, reading and shuffling the row groups within the epoch.
The fastest of --repeat epochs counts. Goal: streaming at least 80% of the in-memory rows/s.
The buffer is kept smaller than the data, so that streaming really streams.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from penguin_lab.batches import ROW, StreamingBatches, load_arrays  # noqa: E402
from penguin_lab.config import FEATURES, LABEL  # noqa: E402
from penguin_lab.model import PenguinNet  # noqa: E402
from penguin_lab.train import (Timer, fit, make_dataset, make_loader, seed_everything,  # noqa: E402
                               shuffled_sampler, tune_threads)

GROUP_ROWS = 1 << 16
FILES = 4


def write_data(folder: Path, rows: int) -> None:
    """Three species as separable clusters, rows shuffled over FILES part files, as Spark would."""
    rng = np.random.default_rng(0)
    centers = np.array([[0, 39, 18, 19, 37], [1, 47, 15, 22, 50], [2, 49, 18, 20, 37]], np.float32)
    y = rng.integers(0, 3, rows)
    x = (centers[y] + rng.normal(0, 1, (rows, len(FEATURES)))).astype(np.float32)
    for k, part in enumerate(np.array_split(rng.permutation(rows), FILES)):
        table = pa.table({**{name: x[part, j] for j, name in enumerate(FEATURES)},
                          LABEL: y[part].astype(np.int32), ROW: part.astype(np.int64)})
        pq.write_table(table, folder / f"part-{k:05d}.snappy.parquet", row_group_size=GROUP_ROWS)


def best_epoch(loader, before_epoch, repeat: int) -> float:
    """Seconds of the fastest one-epoch fit over `loader`."""
    best = float("inf")
    for run in range(repeat):
        seed_everything(0)
        model = PenguinNet()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
        timer = Timer()
        fit(model, loader, None, optimizer, 1, torch.device("cpu"), before_epoch=before_epoch)
        best = min(best, timer.seconds())
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=65_536)
    parser.add_argument("--buffer-rows", type=int, default=1 << 18)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tune_threads()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_data(folder, args.rows)
        timer = Timer()
        x, y = load_arrays(folder, FEATURES, LABEL)
        load_seconds = timer.seconds()
        dataset = make_dataset(x, y)
        in_memory = best_epoch(make_loader(dataset, args.batch_size, shuffled_sampler(dataset, 0)), None,
                               args.repeat)
        stream = StreamingBatches(folder, FEATURES, LABEL, args.batch_size, 0, shuffle_buffer_rows=args.buffer_rows)
        streaming = best_epoch(stream, stream.set_epoch, args.repeat)

    memory_rate, stream_rate = args.rows / in_memory, args.rows / streaming
    print(f"{args.rows:,} rows, batch size {args.batch_size:,}, row groups of {GROUP_ROWS:,}, "
          f"buffer {args.buffer_rows:,} rows, 1 thread, best of {args.repeat}")
    print(f"{'path':<12}{'epoch s':>10}{'rows/s':>14}")
    print(f"{'in memory':<12}{in_memory:>10.3f}{memory_rate:>14,.0f}   (+ {load_seconds:.3f} s to load once)")
    print(f"{'streaming':<12}{streaming:>10.3f}{stream_rate:>14,.0f}   (peak rows held {stream.peak_rows_held:,})")
    ratio = stream_rate / memory_rate
    print(f"streaming / in memory: {ratio:.2f} (goal >= 0.80: {'met' if ratio >= 0.8 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
