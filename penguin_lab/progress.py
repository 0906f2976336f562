"""Progress on a terminal: Spark's stages as they run (the epochs have their own bar in pipeline.py)."""

from __future__ import annotations

import contextlib
import sys
import threading


@contextlib.contextmanager
def spark_stages(spark, label: str, enabled: bool):
    """While the block runs, a line on stderr shows the running Spark stage's finished tasks."""
    if not enabled:
        yield
        return
    from tqdm import tqdm

    tracker = spark.sparkContext.statusTracker()
    done = threading.Event()
    bar = tqdm(desc=label, unit="task", file=sys.stderr, leave=False)

    def watch():
        while not done.wait(0.5):
            stages = [tracker.getStageInfo(i) for i in tracker.getActiveStageIds()]
            stages = [s for s in stages if s is not None]
            if stages:
                bar.total = sum(s.numTasks for s in stages)
                bar.n = sum(s.numCompletedTasks for s in stages)
                bar.set_description(f"{label}: Spark stage {', '.join(str(s.stageId) for s in stages)}")
                bar.refresh()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        bar.close()
