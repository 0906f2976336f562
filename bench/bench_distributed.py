"""Training throughput of 1 and 2 processes, with Horovod and with TorchDistributor.

    python bench/bench_distributed.py [--rows 1000000] [--epochs 20] [--batch-sizes 16384,65536,131072]
                                      [--engines horovod,torch] [--repeat 3]

The 344 real penguins are far too few to measure anything, so this draws a larger synthetic set from
them (penguin_lab.synth: per species, a Gaussian with the mean and covariance of its four measurements,
and the islands it was seen on in their real proportions), written as Parquet. Spark then reads and
checks it and prepares it as every run does (read_penguins, prepare), into a temporary folder, with a
test share of about 10,000 rows.

Each engine trains the same model on it with 1 and then 2 processes (processes on this machine,
one thread each, 2 processes bound to a core each) through the same per-rank functions as
`penguin-lab distributed`: every rank reads the prepared Parquet itself. Throughput is training rows
per second over all processes: rows x epochs divided by the slowest rank's training time (process
start-up and reading the Parquet are not counted). The goal: 2 processes at least 1.6x the rows per
second of 1.

Beside each batch size, measured in the same run: the training steps alone, on a random batch, as many
rows in all, in 1 and then 2 processes that never communicate and read no data, bound to cores as the
ranks are and counted as they are (all rows over the slowest process's time, from a common start). What
2 of those reach against 1 is what the second core adds to the arithmetic itself, in the same minutes as
the engines: this VM's speed drifts.
"""

from __future__ import annotations

import argparse
import os
import platform
import queue
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GOAL = 1.6  # 2 processes against 1, on 2 cores
TEST_ROWS = 10_000
STEPS_ALONE = "steps alone, no communication"  # its row in the results, beside the engines


def prepared_synthetic(spark, rows: int, seed: int, folder: Path):
    """About `rows` training rows and TEST_ROWS test rows, drawn, read and prepared as a run prepares its data."""
    from penguin_lab.config import TrainConfig
    from penguin_lab.data import prepare
    from penguin_lab.read import read_penguins
    from penguin_lab.synth import synthesize

    synthesize(spark, rows + TEST_ROWS, folder / "synthetic", fmt="parquet", seed=seed)
    penguins = read_penguins(spark, folder / "synthetic")
    config = TrainConfig(seed=seed, test_fraction=TEST_ROWS / (rows + TEST_ROWS))
    return prepare(spark, penguins, config, folder / "prepared")


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


def _steps_alone(rank: int, processes: int, batch_size: int, steps: int, start, results) -> None:
    """One process's training steps on a random batch, one thread, on a core of its own when there are
    several (bind_to_own_core, as the engines' ranks are): (rows, seconds) into `results`."""
    import torch

    from penguin_lab.distributed import bind_to_own_core
    from penguin_lab.model import PenguinNet

    bind_to_own_core(rank, processes)
    torch.set_num_threads(1)
    torch.manual_seed(rank)
    model = PenguinNet()
    optimizer = torch.optim.Adam(model.parameters())
    features, labels = torch.rand(batch_size, 5), torch.randint(0, 3, (batch_size,))

    def step():
        optimizer.zero_grad()
        torch.nn.functional.nll_loss(model(features), labels).backward()
        optimizer.step()

    for _ in range(5):  # warm up
        step()
    start.wait()  # every process starts timing together, as the engines' ranks start training together
    started = time.perf_counter()
    for _ in range(steps):
        step()
    results.put((steps * batch_size, time.perf_counter() - started))


def steps_alone_rows_per_second(batch_size: int, processes: int, rows: int) -> float:
    """Rows/s of `processes` processes that each take `rows` rows of training steps and never communicate:
    all rows over the slowest process's time, as the engines are counted."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_steps_alone, args=(rank, processes, batch_size, max(1, rows // batch_size),
                                                          start, results)) for rank in range(processes)]
    for worker in workers:
        worker.start()
    try:
        found = [results.get(timeout=600) for _ in workers]
    except queue.Empty:
        raise SystemExit(f"bench: a process of the steps alone ended without a result "
                         f"(exit codes {[worker.exitcode for worker in workers]})") from None
    finally:
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.kill()
    return sum(rows for rows, _ in found) / max(seconds for _, seconds in found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000,
                        help="synthetic training rows (a few fewer once exact repeats are dropped)")
    parser.add_argument("--epochs", type=int, default=20, help="enough for the larger batches to learn")
    parser.add_argument("--batch-sizes", default="16384,65536,131072",
                        help="rows per batch, per process (comma-separated)")
    parser.add_argument("--engines", default="horovod,torch")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the fastest counts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    engines = [e for e in args.engines.split(",") if e]

    from penguin_lab.distributed import DistributedJob, horovod_available, run_horovod, run_torch
    from penguin_lab.spark import get_spark

    if "horovod" in engines and not horovod_available():
        sys.exit("bench: Horovod is not installed (make horovod), or pass --engines torch")
    started = time.perf_counter()
    spark = get_spark()
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as folder:
        prepared = prepared_synthetic(spark, args.rows, args.seed, Path(folder))
        train_rows = prepared.counts["train_rows"]
        print(f"{train_rows:,} synthetic training rows, {prepared.counts['test_rows']:,} test rows "
              f"({time.perf_counter() - started:.1f} s to draw, read and prepare with Spark)")
        print(f"machine: {machine()}; {versions()}")
        print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]

        results = {}
        for batch_size in batch_sizes:
            # The job holds the paths of the prepared Parquet: every rank reads its share itself.
            job = DistributedJob(train_path=prepared.train_path, test_path=prepared.test_path,
                                 island_vocabulary=prepared.island_vocabulary, epochs=args.epochs,
                                 batch_size=batch_size, seed=args.seed, progress_every=0)
            for processes in (1, 2):
                # As many rows in all as an engine's run trains, shared out as the engines share them.
                share = train_rows * args.epochs // processes
                steps_alone = max(steps_alone_rows_per_second(batch_size, processes, share) for _ in range(args.repeat))
                results[batch_size, STEPS_ALONE, processes] = steps_alone
                print(f"  batch {batch_size:>6}  {STEPS_ALONE}, {processes} "
                      f"process{'es' if processes > 1 else '  '}: {steps_alone:12,.0f} rows/s", flush=True)
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
                    rows_per_second = train_rows * args.epochs / best["train_seconds"]
                    results[batch_size, engine, processes] = rows_per_second
                    print(f"  batch {batch_size:>6}  {engine:<8} {processes} process{'es' if processes > 1 else '  '}: "
                          f"{best['train_seconds']:7.2f} s, {rows_per_second:12,.0f} rows/s, "
                          f"test accuracy {best['test_accuracy']:.3f}", flush=True)

    print()
    print("| batch size per process | engine | 1 process (rows/s) | 2 processes (rows/s) | 2 vs 1 |")
    print("|---:|---|---:|---:|---:|")
    for batch_size in batch_sizes:
        for engine in [STEPS_ALONE, *engines]:
            one, two = results[batch_size, engine, 1], results[batch_size, engine, 2]
            print(f"| {batch_size} | {engine} | {one:,.0f} | {two:,.0f} | {two / one:.2f}x |")
    for engine in engines:
        reached = [b for b in batch_sizes if results[b, engine, 2] >= GOAL * results[b, engine, 1]]
        print(f"{engine}: 2 processes reach {GOAL}x the rows per second of 1 "
              + (f"from batch size {reached[0]}" if reached else "at none of these batch sizes"))
    print()
    print(f"{args.epochs} epochs of {train_rows:,} rows, fastest of {args.repeat} runs each; "
          f"whole benchmark {time.perf_counter() - started:.0f} s; "
          f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
