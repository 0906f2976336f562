"""Speed and memory of the lab against the original lab's code, in one run, on the same data.

    python bench/bench_lab.py [--epochs 100] [--repeat 1] [--original PATH]

Runs ../shared/bench/lab_original.py (the lab's cells as they are, on local Spark) and then
`penguin-lab run` (100 epochs, batch size 20), each in a fresh process, and prints:
- training time for the epochs (the lab's `train - torch_import` mark; ours from metrics.json),
- the whole run (wall clock of each process, Spark start included),
- peak memory of each Python process,
and the ratios. Goals: training at most 1/20 of the lab's time, the whole run at most 1/4.
"""

import argparse
import ast
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" / "penguins.csv"
DEFAULT_ORIGINAL = REPO.parent / "shared" / "bench" / "lab_original.py"


def timed(command, env=None):
    """Run a command; return (stdout, wall seconds, peak RSS of that Python process in MiB)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True,
                                   env={**os.environ, **(env or {})}, cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)  # wait4 gives this child's own peak memory
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            sys.exit(f"bench: {command[1]} failed ({process.returncode}):\n{err.read()[-2000:]}")
        return out.read(), seconds, usage.ru_maxrss / 1024


def run_original(original: Path, epochs: int, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    stdout, seconds, rss = timed([sys.executable, str(original)],
                                 {"DATA": str(DATA), "LAB_OUT": str(out), "EPOCHS": str(epochs), "QUIET": "1"})
    marks_line = next(line for line in stdout.splitlines() if line.startswith("MARKS "))
    marks = ast.literal_eval(marks_line[len("MARKS "):])
    accuracy_line = next((line for line in stdout.splitlines() if line.startswith("final test accuracy")), "")
    return {"train_seconds": marks["train"] - marks["torch_import"], "total_seconds": seconds,
            "peak_rss_mib": rss, "note": accuracy_line.strip()}


def run_ours(epochs: int, out: Path, tracking: bool = False):
    # The lab's cells track nothing: the comparison runs without MLflow, and one tracked run shows its cost.
    _, seconds, rss = timed([sys.executable, "-m", "penguin_lab.cli", "run", "--epochs", str(epochs),
                             "--batch-size", "20", "--out", str(out), "--tracking" if tracking else "--no-tracking"])
    metrics = json.loads((out / "metrics.json").read_text())
    return {"train_seconds": metrics["train_seconds"], "total_seconds": seconds, "peak_rss_mib": rss,
            "note": f"test accuracy {metrics['test_accuracy']:.4f} (honest split, overlap_rows "
                    f"{metrics['overlap_rows']})"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the best time counts")
    parser.add_argument("--original", type=Path, default=DEFAULT_ORIGINAL)
    args = parser.parse_args()
    if not args.original.is_file():
        sys.exit(f"bench: {args.original}: not found; pass --original PATH to the lab's lab_original.py")

    lab_runs, our_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            lab_runs.append(run_original(args.original, args.epochs, Path(tmp) / f"lab{i}"))
            our_runs.append(run_ours(args.epochs, Path(tmp) / f"ours{i}"))
        tracked = run_ours(args.epochs, Path(tmp) / "runs" / "tracked", tracking=True)

    def best(runs, key):
        return min(run[key] for run in runs)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{args.epochs} epochs, batch size 20, best of {args.repeat}")
    print(f"{'':>22} {'lab (original)':>15} {'penguin-lab':>12} {'ratio':>8}  goal")
    for key, label, goal in (("train_seconds", "training, s", 20), ("total_seconds", "whole run, s", 4)):
        lab, ours = best(lab_runs, key), best(our_runs, key)
        verdict = "met" if lab / ours >= goal else "NOT met"
        print(f"{label:>22} {lab:>15.2f} {ours:>12.2f} {lab / ours:>7.1f}x  >= {goal}x {verdict}")
    print(f"{'whole run, tracked, s':>22} {'':>15} {tracked['total_seconds']:>12.2f}  (MLflow run in a new SQLite "
          f"store, model logged)")
    print(f"{'peak RSS (Python), MiB':>22} {lab_runs[0]['peak_rss_mib']:>15.0f} "
          f"{max(r['peak_rss_mib'] for r in our_runs):>12.0f}")
    print(f"lab: {lab_runs[-1]['note']}")
    print(f"penguin-lab: {our_runs[-1]['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
