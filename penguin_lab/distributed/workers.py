"""What the worker processes need from the driver's environment: this package, importable."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Optional


def package_root() -> Optional[str]:
    """The folder holding the penguin_lab package, if it is a source checkout (not site-packages)."""
    root = Path(__file__).resolve().parents[2]  # penguin_lab/distributed/workers.py -> the checkout
    return None if root.name in ("site-packages", "dist-packages") else str(root)


def _prepend_path(current: Optional[str], root: str) -> str:
    parts = [p for p in (current or "").split(os.pathsep) if p]
    return os.pathsep.join([root] + [p for p in parts if p != root])


@contextlib.contextmanager
def workers_import_this_package(spark=None):
    """Worker processes must import the same penguin_lab as the driver, even when the driver only has
    it on sys.path (a notebook run from a checkout): put its folder on the workers' PYTHONPATH.
    Local processes inherit os.environ; Spark's Python workers get the SparkContext's environment."""
    root = package_root()
    if root is None:
        yield
        return
    saved_env = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = _prepend_path(saved_env, root)
    spark_env = None
    if spark is not None:
        with contextlib.suppress(Exception):  # Spark Connect has no SparkContext; nothing to do there
            spark_env = spark.sparkContext.environment
    saved_spark = spark_env.get("PYTHONPATH") if spark_env is not None else None
    if spark_env is not None:
        spark_env["PYTHONPATH"] = _prepend_path(saved_spark, root)
    try:
        yield
    finally:
        restore(os.environ, "PYTHONPATH", saved_env)
        if spark_env is not None:
            restore(spark_env, "PYTHONPATH", saved_spark)


def restore(mapping, key, value) -> None:
    """Put back a saved environment value; None means the key was not set."""
    if value is None:
        mapping.pop(key, None)
    else:
        mapping[key] = value
