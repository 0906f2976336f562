"""Batch scoring throughput: `penguin-lab score`, Parquet to Parquet, on local[2], against PyTorch's forward pass.

    python bench/bench_score.py [--rows 1000000,10000000] [--repeat N] [--work DIR]

Each size is scored by the real command in a fresh process, the fastest of N runs (a difference of two
short wall times is otherwise at the mercy of one slow start). Fixed costs (the JVM, the session, the model's
load) cancel out in the difference between the two sizes: the marginal throughput is the extra rows over
the extra wall time. The floor is plain PyTorch inference over the same number of rows, in this process, on
one thread, the best of as many runs. Goal: the marginal throughput is at least a quarter of that floor.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def penguin_lab(*args: str) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "penguin_lab.cli", *args], capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f"penguin-lab {args[0]} failed: {result.stderr.strip()[-500:]}")
    return time.perf_counter() - started


def forward_rows_per_second(model_dir: Path, rows: int) -> float:
    """PenguinNet's forward pass alone, one thread, in batches of 65536: the floor for any scorer."""
    import torch

    from penguin_lab.artifacts import load_model

    torch.set_num_threads(1)
    model, _ = load_model(model_dir)
    batch = torch.rand(65536, 5)
    with torch.no_grad():
        model(batch)
        started = time.perf_counter()
        for _ in range(rows // 65536):
            model(batch).exp().argmax(dim=1)
    return (rows // 65536) * 65536 / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000,10000000", help="two comma-separated sizes")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each size; the fastest counts (default 2)")
    parser.add_argument("--work", help="folder for the data, model and output (default: a temporary one)")
    args = parser.parse_args()
    small, large = (int(r) for r in args.rows.split(","))
    work = Path(args.work or tempfile.mkdtemp(prefix="penguin-lab-score-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        model = work / "run" / "model"
        if not model.is_dir():
            penguin_lab("run", "--out", str(work / "run"), "--no-tracking")
        seconds = {}
        for rows in (small, large):
            data = work / f"penguins-{rows}.parquet"
            if not data.exists():
                penguin_lab("synth", "--rows", str(rows), "--out", str(data), "--format", "parquet", "--seed", "0")
            out = work / f"scored-{rows}"
            runs = []
            for _ in range(args.repeat):
                shutil.rmtree(out, ignore_errors=True)
                runs.append(penguin_lab("score", "--model", str(model), "--data", str(data), "--out", str(out)))
            shutil.rmtree(out, ignore_errors=True)
            seconds[rows] = min(runs)
            print(f"{rows:>11,} rows: {seconds[rows]:6.1f} s wall ({rows / seconds[rows] / 1e6:5.2f}M rows/s, "
                  f"fixed costs included; runs {', '.join(f'{r:.1f}' for r in runs)} s)", flush=True)
        marginal = (large - small) / (seconds[large] - seconds[small])
        # The floor is measured as the scoring is: the best of --repeat runs, each as long as the large size.
        floors = [forward_rows_per_second(model, large) for _ in range(args.repeat)]
        floor = max(floors)
        verdict = "met" if marginal >= floor / 4 else "NOT met"
        print(f"marginal: {marginal / 1e6:.2f}M rows/s ({large - small:,} rows in "
              f"{seconds[large] - seconds[small]:.1f} s)")
        print(f"floor: PyTorch forward alone, 1 thread, {floor / 1e6:.2f}M rows/s (best of "
              f"{', '.join(f'{f / 1e6:.2f}' for f in floors)}); marginal / floor "
              f"{marginal / floor:.2f} (goal >= 0.25: {verdict})")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
