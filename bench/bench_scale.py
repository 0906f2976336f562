"""How `penguin-lab run` scales: 1 epoch at 65536 rows a batch on synthetic penguins of growing size.

    python bench/bench_scale.py [--rows 1000000,10000000] [--work DIR] [--keep]

For each size it writes a synthetic CSV with `penguin-lab synth`, times pyarrow parsing the same
files (the floor for any reader on this machine) and Spark alone reading them (a fresh process: the
JVM's start, then every line read and split into its fields as the run reads them, nothing parsed or
checked: the floor for any run in which Spark reads the input), then runs `penguin-lab run` in a fresh
process and prints each stage's time and rows/s (from metrics.json), the whole command's wall time, its
ratio to each floor, and the Python driver's peak RSS (the JVM is a separate process).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The command under test, in a child that reports its own peak RSS (not the JVM's) as it exits.
RUN = ("import resource, sys; from penguin_lab.cli import main; code = main(sys.argv[1:]); "
       "print('peak_rss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)")


def synthesize(rows: int, folder: Path) -> Path:
    out = folder / f"penguins-{rows}"
    if not out.exists():
        subprocess.run([sys.executable, "-m", "penguin_lab.cli", "synth", "--rows", str(rows), "--out", str(out),
                        "--format", "csv", "--seed", "0"], check=True, cwd=REPO)
    return out


def pyarrow_parse_seconds(folder: Path) -> float:
    """Fastest of 2: pyarrow's multi-threaded CSV parser over every part file."""
    from pyarrow import csv

    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        for part in sorted(folder.glob("*.csv")):
            csv.read_csv(part)
        best = min(best, time.perf_counter() - started)
    return best


# Spark alone, as a run of that size starts it (penguin_lab.spark's settings): the session, then a pass over the
# lines of the files as the run reads them (Spark's text source), each split into its fields, nothing parsed or
# checked. Prints the seconds of each part.
SPARK_READ = """
import sys, time
started = time.perf_counter()
from pyspark.sql import functions as F
from penguin_lab.spark import get_spark
spark = get_spark(large_input=True)
ready = time.perf_counter()
spark.read.text(sys.argv[1]).agg(F.sum(F.size(F.split("value", ",")))).collect()
print("spark_seconds", ready - started, time.perf_counter() - ready)
"""


def spark_read_seconds(folder: Path) -> tuple[float, float, float]:
    """(wall, session start, read) of Spark alone reading the CSV's lines in a fresh process."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", SPARK_READ, str(folder)], capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"Spark could not read {folder}: {result.stderr.strip()[-500:]}")
    start, read = (float(x) for x in result.stdout.rsplit("spark_seconds", 1)[1].split())
    return wall, start, read


def run_lab(data: Path, out: Path) -> tuple[dict, float, int]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", RUN, "run", "--data", str(data), "--out", str(out),
                             "--epochs", "1", "--batch-size", "65536", "--no-tracking"], capture_output=True, text=True,
                            cwd=REPO)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"penguin-lab run failed on {data}: {result.stderr.strip()[-500:]}")
    rss = int(result.stderr.rsplit("peak_rss_kib", 1)[1].split()[0])
    return json.loads((out / "metrics.json").read_text()), wall, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000,10000000", help="comma-separated sizes (100000000 needs ~6 GB)")
    parser.add_argument("--work", help="folder for the synthetic data and runs (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic data for another run")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="penguin-lab-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    lines = []
    try:
        for rows in [int(r) for r in args.rows.split(",")]:
            data = synthesize(rows, work)
            floor = pyarrow_parse_seconds(data)
            spark_wall, spark_start, spark_read = spark_read_seconds(data)
            out = work / f"run-{rows}"
            shutil.rmtree(out, ignore_errors=True)
            metrics, wall, rss = run_lab(data, out)
            stages = metrics["stage_seconds"]
            shutil.rmtree(out, ignore_errors=True)
            per_stage = "  ".join(f"{name} {stages[name]:6.1f} s ({rows / stages[name] / 1e6:5.2f}M/s)"
                                  for name in ("read", "prepare", "train", "write"))
            lines.append(f"{rows:>11,}  {per_stage}  whole {wall:6.1f} s  pyarrow {floor:5.2f} s  "
                         f"whole/pyarrow {wall / floor:5.1f}x  Spark alone {spark_wall:5.1f} s (start "
                         f"{spark_start:4.1f} + read {spark_read:5.1f}; {spark_wall / floor:5.1f}x pyarrow)  "
                         f"whole/Spark alone {wall / spark_wall:4.1f}x  "
                         f"driver peak RSS {rss / 1024:5.0f} MiB  test accuracy {metrics['test_accuracy']:.3f}")
            print(lines[-1], flush=True)
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print("\nrows: read = read and check every record; prepare = deduplicate, encode, split, write Parquet;")
    print("train = 1 epoch at 65536 rows a batch; write = model, plots, metrics; whole = the command's wall time;")
    print("Spark alone = a fresh process that starts Spark as a run does, reads every line and splits it at commas")


if __name__ == "__main__":
    main()
