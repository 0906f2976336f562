"""Training throughput of 1 and 2 processes, with Horovod and with TorchDistributor.

    python bench/bench_distributed.py [--rows 1000000] [--epochs 20] [--batch-sizes 16384,65536,131072]
                                      [--engines horovod,torch] [--repeat 3]

The 344 real penguins are far too few to measure anything, so this draws a larger synthetic set from
them: for each species, a Gaussian with the mean and covariance of its four measurements, and the
islands it was seen on in their real proportions; species in their real proportions too. Rows are
encoded and scaled exactly as the lab's preparation does.

Each engine trains the same model on it with 1 and then 2 processes (processes on this machine,
one thread each, 2 processes bound to a core each) through the same per-rank functions as
`penguin-lab distributed`. Throughput is training rows per second over all processes: rows x epochs
divided by the slowest rank's training time (process start-up is not counted). The goal: 2 processes
at least 1.6x the rows per second of 1.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from penguin_lab.config import DEFAULT_DATA, FEATURES, ISLAND, LABEL, MEASUREMENTS, SCALE  # noqa: E402
from penguin_lab.read import read_penguins_csv  # noqa: E402

GOAL = 1.6  # 2 processes against 1, on 2 cores



def fitted_gaussians(path=DEFAULT_DATA) -> dict:
    """Per species: share of all penguins, mean and covariance of the measurements, island shares."""
    raw, _ = read_penguins_csv(path)
    complete = raw[[ISLAND, *MEASUREMENTS, LABEL]].dropna()
    species = {}
    for label, rows in complete.groupby(LABEL):
        islands = rows[ISLAND].value_counts(normalize=True)
        species[int(label)] = {
            "share": len(rows) / len(complete),
            "mean": rows[MEASUREMENTS].to_numpy(float).mean(axis=0),
            "cov": np.cov(rows[MEASUREMENTS].to_numpy(float), rowvar=False),
            "islands": (list(islands.index), islands.to_numpy(float)),
        }
    vocabulary = sorted(complete[ISLAND].unique())
    return {"species": species, "vocabulary": vocabulary}


def synthetic_penguins(model: dict, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`rows` penguins as model inputs (FEATURES order, the lab's scaling) and labels."""
    rng = np.random.default_rng(seed)
    labels = sorted(model["species"])
    y = rng.choice(labels, size=rows, p=[model["species"][k]["share"] for k in labels])
    x = np.empty((rows, len(FEATURES)), dtype=np.float32)
    scale = np.array([SCALE[m] for m in MEASUREMENTS])
    for label in labels:
        where = np.flatnonzero(y == label)
        fitted = model["species"][label]
        names, shares = fitted["islands"]
        islands = rng.choice([model["vocabulary"].index(n) for n in names], size=len(where), p=shares)
        measurements = rng.multivariate_normal(fitted["mean"], fitted["cov"], size=len(where))
        x[where, 0] = islands
        x[where, 1:] = measurements * scale
    return x, y.astype(np.int64)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        total = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        kib = int(total.split()[1])
        memory = f", {kib / 2**20:.0f} GiB"
    except (OSError, StopIteration):
        pass
    return (f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} cores{memory}, "
            f"Python {platform.python_version()}")


def versions() -> str:
    import pyspark
    import torch
    parts = [f"torch {torch.__version__}", f"pyspark {pyspark.__version__}"]
    try:
        import horovod
        parts.append(f"horovod {horovod.__version__}")
    except ImportError:
        pass
    return ", ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic training rows")
    parser.add_argument("--epochs", type=int, default=20, help="enough for the larger batches to learn")
    parser.add_argument("--batch-sizes", default="16384,65536,131072",
                        help="rows per batch, per process (comma-separated)")
    parser.add_argument("--engines", default="horovod,torch")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the fastest counts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    engines = [e for e in args.engines.split(",") if e]

    from penguin_lab.spark import get_spark
    from penguin_lab.distributed import DistributedJob, horovod_available, run_horovod, run_torch

    if "horovod" in engines and not horovod_available():
        sys.exit("bench: Horovod is not installed (make horovod), or pass --engines torch")
    started = time.perf_counter()
    fitted = fitted_gaussians()
    x_train, y_train = synthetic_penguins(fitted, args.rows, args.seed)
    x_test, y_test = synthetic_penguins(fitted, 10_000, args.seed + 1)
    print(f"{args.rows:,} synthetic training rows, {len(y_test):,} test rows "
          f"({time.perf_counter() - started:.1f} s to draw)")
    print(f"machine: {machine()}; {versions()}")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    spark = get_spark() if "torch" in engines else None
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]

    results = {}
    for batch_size in batch_sizes:
        job = DistributedJob(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                             island_vocabulary=fitted["vocabulary"], epochs=args.epochs, batch_size=batch_size,
                             seed=args.seed, progress_every=0)
        for engine in engines:
            for processes in (1, 2):
                best = None
                for _ in range(args.repeat):
                    if engine == "horovod":
                        result = run_horovod(job, processes, local_mode=True)
                    else:
                        result = run_torch(job, processes, local_mode=True, spark=spark)
                    if best is None or result["train_seconds"] < best["train_seconds"]:
                        best = result
                rows_per_second = args.rows * args.epochs / best["train_seconds"]
                results[batch_size, engine, processes] = rows_per_second
                print(f"  batch {batch_size:>6}  {engine:<8} {processes} process{'es' if processes > 1 else '  '}: "
                      f"{best['train_seconds']:7.2f} s, {rows_per_second:12,.0f} rows/s, "
                      f"test accuracy {best['test_accuracy']:.3f}", flush=True)

    print()
    print("| batch size per process | engine | 1 process (rows/s) | 2 processes (rows/s) | 2 vs 1 |")
    print("|---:|---|---:|---:|---:|")
    for batch_size in batch_sizes:
        for engine in engines:
            one, two = results[batch_size, engine, 1], results[batch_size, engine, 2]
            print(f"| {batch_size} | {engine} | {one:,.0f} | {two:,.0f} | {two / one:.2f}x |")
    for engine in engines:
        reached = [b for b in batch_sizes if results[b, engine, 2] >= GOAL * results[b, engine, 1]]
        print(f"{engine}: 2 processes reach {GOAL}x the rows per second of 1 "
              + (f"from batch size {reached[0]}" if reached else "at none of these batch sizes"))
    print()
    print(f"{args.epochs} epochs of {args.rows:,} rows, fastest of {args.repeat} runs each; "
          f"whole benchmark {time.perf_counter() - started:.0f} s; "
          f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
