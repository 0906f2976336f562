"""Record the class-data archive that makes the embedded JVM start faster (see spark.py).

`make install` runs `python -m penguin_lab.spark_archive`: a child process reads and prepares the
shipped data in a JVM that writes every class it loaded to the archive as it exits.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .spark import GENERATED_CODE, INTERPRETED, class_archive, get_spark


def _record(archive: Path) -> None:
    """Read and prepare the shipped data in a JVM that writes its classes to `archive` at exit."""
    from .config import DEFAULT_DATA, TrainConfig
    from .data import prepare
    from .read import read_penguins

    spark = get_spark(record_archive=archive)
    # Small inputs run with interpreted expressions, large ones with generated code: the classes of both.
    for mode in (INTERPRETED, GENERATED_CODE):
        for key, value in mode.items():
            spark.conf.set(key, value)
        with tempfile.TemporaryDirectory(prefix="penguin-lab-archive-") as folder:
            scratch = Path(folder) / "scratch"
            scratch.mkdir()
            prepare(spark, read_penguins(spark, DEFAULT_DATA, scratch), TrainConfig(), Path(folder) / "prepared")
    # The JVM writes the archive as it exits, which it does when its stdin closes; wait for that.
    jvm = spark.sparkContext._gateway.proc
    spark.stop()
    jvm.stdin.close()
    jvm.wait(timeout=300)


def build_class_archive() -> Path:
    """Record the archive in a child process; it is complete once that JVM has exited, then renamed."""
    final = class_archive()
    partial = final.with_name(f"{final.name}.partial-{os.getpid()}")
    try:
        subprocess.run([sys.executable, "-m", "penguin_lab.spark_archive", "--record", str(partial)], check=True,
                       stdout=subprocess.DEVNULL, timeout=600)
        if not partial.is_file() or partial.stat().st_size == 0:
            raise RuntimeError(f"the JVM wrote no class archive to {partial}")
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    return final


if __name__ == "__main__":
    if sys.argv[1:2] == ["--record"]:
        _record(Path(sys.argv[2]))
    else:
        path = build_class_archive()
        print(f"Spark class-data archive: {path} ({path.stat().st_size >> 20} MiB)")
