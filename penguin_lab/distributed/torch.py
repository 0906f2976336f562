"""TorchDistributor, what Databricks recommends now: DistributedDataParallel processes started by Spark.

local_mode=True starts the processes on the driver; local_mode=False starts them in Spark barrier
tasks (with a local[N] master, on this machine). The imports of torch below are absolute, so they
reach PyTorch, not this module.
"""

from __future__ import annotations

import contextlib
import os

from ..errors import LabError
from .cpu import bind_to_own_core
from .failures import capture_worker_output, failure_error, report_failure
from .job import DistributedJob, epoch_callback, finish_on_rank0, rank0_test_loader, rank_report, rank_share
from .workers import workers_import_this_package


def torch_rank_main(job: DistributedJob) -> dict:
    """One DDP process: the single-node model and training loop, with gradients averaged over ranks."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from ..batches import training_batches
    from ..config import FEATURES, LABEL
    from ..model import PenguinNet
    from ..train import Timer, fit, pick_device, seed_everything, tune_threads

    with report_failure(int(os.environ.get("RANK", -1))):
        job.check_data_readable()
        device = pick_device()  # TorchDistributor hides the GPUs when use_gpu=False
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)  # one GPU per process
            device = torch.device("cuda", local_rank)
        # The launcher sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; a rank that loses its peer
        # gives up after the timeout instead of waiting forever.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(seconds=job.collective_timeout_seconds))
        rank, size = dist.get_rank(), dist.get_world_size()
        if device.type == "cpu":  # a core per process, as for Horovod, where gloo's threads yield to training
            # (Spark barrier tasks each start one process, so LOCAL_WORLD_SIZE is 1 and they are not bound:
            # bound, a barrier job now and then waited 5 minutes at the end for a rank that had aborted.)
            bind_to_own_core(local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", 1)), training_thread_first=True)
        tune_threads()
        seed_everything(job.seed)

        # Each rank reads its own share of the prepared Parquet (a DistributedSampler over the whole set
        # when it fits in memory, else its own row groups); before_epoch reshuffles the shares every epoch.
        train = training_batches(job.train_path, FEATURES, LABEL, job.batch_size, job.seed,
                                 job.memory_budget_bytes, rank, size)
        # Only rank 0 tests. Its evaluation through DDP runs no collective: PenguinNet has no buffers to sync.
        test_loader = rank0_test_loader(job) if rank == 0 else None

        model = PenguinNet(hidden_units=job.hidden_units).to(device)
        # DDP copies rank 0's weights to every rank, then averages the gradients during backward().
        ddp_model = DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
        # Synchronous training averages `size` batches per step: scale the learning rate to match.
        optimizer = torch.optim.Adam(ddp_model.parameters(), lr=job.learning_rate * size)

        timer = Timer()
        history = fit(ddp_model, train.loader, test_loader, optimizer, job.epochs, device,
                      on_epoch=epoch_callback(job, rank), before_epoch=train.before_epoch)
        train_seconds = timer.seconds()

        # Every rank's checksum goes into the result, so identical weights can be checked.
        reports = [None] * size
        share = rank_share(train, rank, size, job.batch_size)
        dist.all_gather_object(reports, rank_report(model, rank, history, train_seconds, share))
        result = None
        if rank == 0:
            result = finish_on_rank0(job, model, test_loader, device, history, reports, "torch", size)
        # The same result from every rank: in local mode TorchDistributor returns whichever rank ends last.
        box = [result]
        dist.broadcast_object_list(box, src=0)
        dist.barrier()  # nobody tears down its connections while a peer still reads from them
        dist.destroy_process_group()
        return box[0]


def gpu_available(spark, local_mode: bool) -> bool:
    """use_gpu for TorchDistributor: GPUs on the driver (local mode) or GPUs assigned to tasks."""
    if local_mode:
        import torch
        return torch.cuda.is_available()
    amount = spark.conf.get("spark.task.resource.gpu.amount", "0")
    try:
        return float(amount) > 0
    except ValueError:
        return False


def task_slots(spark) -> int:
    with contextlib.suppress(Exception):
        return int(spark.sparkContext.defaultParallelism)
    return 0


def run_torch(job: DistributedJob, num_processes: int, local_mode: bool = True, spark=None, echo: bool = False) -> dict:
    """Train with `num_processes` DDP processes started by TorchDistributor; returns rank 0's result."""
    from pyspark.ml.torch.distributor import TorchDistributor

    if spark is None:
        from ..spark import get_spark
        spark = get_spark()
    if not local_mode:
        slots = task_slots(spark)
        # A barrier stage waits (for many minutes) for slots that will never come: refuse it now.
        if slots and num_processes > slots:
            raise LabError(f"{num_processes} processes need {num_processes} Spark task slots; "
                           f"this cluster has {slots} (lower --np or use --local-mode)")
    distributor = TorchDistributor(num_processes=num_processes, local_mode=local_mode,
                                   use_gpu=gpu_available(spark, local_mode))
    logger_was_disabled = distributor.logger.disabled
    distributor.logger.disabled = not echo  # its "Started ... training" lines
    try:
        with capture_worker_output(echo) as output, workers_import_this_package(spark):
            try:
                return distributor.run(torch_rank_main, job)
            except Exception as e:
                raise failure_error("torch", output, e) from None
    finally:
        distributor.logger.disabled = logger_was_disabled
