"""PySpark's Python worker daemon, with PyTorch imported once before it forks the workers.

Each forked worker inherits the import instead of paying for it again (over a second of CPU each, on a
machine whose cores the workers share with the JVM). `penguin-lab score` asks Spark for it with
spark.python.daemon.module; the workers themselves are PySpark's own.
"""

import torch  # noqa: F401  (imported for the forked workers; no thread pool has started yet)
from pyspark.daemon import manager

if __name__ == "__main__":
    manager()
