"""PySpark's Python worker daemon, with what batch scoring's workers use imported once, before it forks them.

Each forked worker inherits the imports instead of paying for them again (PyTorch alone is over a second of
CPU; pyarrow imports pandas on its first array), on a machine whose cores the workers share with the JVM.
`penguin-lab score` asks Spark for it with spark.python.daemon.module; the workers themselves are PySpark's own.
Nothing runs here but imports, so no thread pool has started when the daemon forks; each worker loads the model
on its first batch (score._worker_predictor).
"""

import pandas  # noqa: F401
import pyarrow.compute  # noqa: F401
import pyarrow.parquet  # noqa: F401
import torch  # noqa: F401
from pyspark.daemon import manager

import penguin_lab.predict  # noqa: F401
import penguin_lab.score  # noqa: F401

if __name__ == "__main__":
    manager()
