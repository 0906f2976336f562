"""Distributed training: the lab's Horovod section, and TorchDistributor, locally or on a cluster.

One per-rank function per engine (horovod.horovod_rank_main, torch.torch_rank_main) builds a
DistributedSampler, wraps the single-node PenguinNet and optimizer for its engine, and calls the same
train.fit as the single-node lab. Rank 0 tests and saves the model; every rank returns the same
result (job.py), with the checksums of every rank's weights. A failing rank prints one tagged line;
the driver turns it into a one-line DistributedTrainingError (failures.py). run.py is a whole run.

Importing the package is cheap: torch, numpy and pyspark are imported by the functions that use them.
"""

from .cpu import bind_to_own_core, idle_thread_count, thread_ids
from .failures import (FAIL_ON_RANK_ENV, DistributedTrainingError, InjectedFailure, WorkerOutput,
                       capture_worker_output, fail_on_rank_from_env, failure_error, failure_reports, one_line,
                       report_failure)
from .horovod import HorovodRunner, horovod_available, horovod_rank_main, horovod_runner_class, run_horovod
from .job import (DistributedJob, check_weights_identical, epoch_callback, finish_on_rank0, rank_report,
                  state_checksum)
from .run import ENGINES, run_distributed, train_distributed
from .torch import gpu_available, run_torch, task_slots, torch_rank_main
from .workers import package_root, workers_import_this_package
