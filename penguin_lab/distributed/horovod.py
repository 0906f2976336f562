"""The lab's Horovod section: the per-rank function, and HorovodRunner where Databricks' is not.

On Databricks Runtime ML up to 15.4 LTS, sparkdl.HorovodRunner starts the processes as Spark tasks.
Elsewhere HorovodRunner below has the same interface and starts real Horovod processes on this
machine with horovod.runner.run over gloo. Databricks has deprecated both.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from ..errors import LabError
from .cpu import bind_to_own_core
from .failures import capture_worker_output, failure_error, report_failure
from .job import DistributedJob, epoch_callback, finish_on_rank0, rank0_test_loader, rank_report, rank_share
from .workers import restore, workers_import_this_package


def horovod_rank_main(job: DistributedJob) -> dict:
    """One Horovod process: the lab's train_hvd, on the single-node model and training loop."""
    import horovod.torch as hvd
    import torch

    from ..batches import training_batches
    from ..config import FEATURES, LABEL
    from ..model import PenguinNet
    from ..train import Timer, fit, pick_device, seed_everything, tune_threads

    give_up_on_stalled_peers(job.collective_timeout_seconds)
    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    with report_failure(rank):
        job.check_data_readable()
        tune_threads()
        seed_everything(job.seed)
        device = pick_device()
        if device.type == "cuda":
            torch.cuda.set_device(hvd.local_rank())  # one GPU per process
            device = torch.device("cuda", hvd.local_rank())
        else:  # a core per process: a rank waiting for its peer then slows nobody else
            bind_to_own_core(hvd.local_rank(), hvd.local_size(), training_thread_first=True)

        # Each rank reads its own share of the prepared Parquet (a DistributedSampler over the whole set
        # when it fits in memory, else its own row groups); before_epoch reshuffles the shares every epoch.
        train = training_batches(job.train_path, FEATURES, LABEL, job.batch_size, job.seed,
                                 job.memory_budget_bytes, rank, size)
        test_loader = rank0_test_loader(job) if rank == 0 else None  # only rank 0 tests

        model = PenguinNet(hidden_units=job.hidden_units).to(device)
        # Synchronous training averages `size` batches per step: scale the learning rate to match.
        optimizer = torch.optim.Adam(model.parameters(), lr=job.learning_rate * size)
        # Horovod averages the gradients over all ranks before every step.
        optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
        # Every rank starts from rank 0's weights and optimizer state.
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)

        timer = Timer()
        history = fit(model, train.loader, test_loader, optimizer, job.epochs, device,
                      on_epoch=epoch_callback(job, rank), before_epoch=train.before_epoch)
        train_seconds = timer.seconds()

        # Every rank's checksum goes into the result, so identical weights can be checked.
        # (Names must match across ranks: the default name is the object's type, and None differs from dict.)
        share = rank_share(train, rank, size, job.batch_size)
        reports = hvd.allgather_object(rank_report(model, rank, history, train_seconds, share), name="report")
        result = None
        if rank == 0:
            result = finish_on_rank0(job, model, test_loader, device, history, reports, "horovod", size)
        # The same result from every rank, whichever one the launcher returns.
        return hvd.broadcast_object(result, root_rank=0, name="result")


def give_up_on_stalled_peers(seconds: float) -> None:
    """Horovod only warns when ranks stop meeting in collectives; make it shut down after `seconds`,
    so a rank whose peer died fails instead of waiting forever. Read by hvd.init()."""
    os.environ.setdefault("HOROVOD_STALL_CHECK_TIME_SECONDS", str(int(min(seconds, 60))))
    os.environ.setdefault("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", str(int(seconds)))


class HorovodRunner:
    """sparkdl.HorovodRunner's interface where Databricks Runtime ML is not: real Horovod processes
    on this machine, started with horovod.runner.run over gloo.

    np < 0 starts -np processes on the driver (this machine), as sparkdl does; np > 0 starts np
    processes, which off Databricks are also on this machine. run(main, **kwargs) calls
    main(**kwargs) in every process and returns rank 0's return value.
    driver_log_verbosity="all" shows the workers' output; "log_callback_only" keeps it quiet.
    If a process fails, the others are stopped and run raises a one-line
    DistributedTrainingError naming the failed rank (when main reports it with report_failure).
    """

    def __init__(self, *, np, driver_log_verbosity="log_callback_only"):
        if isinstance(np, bool) or not isinstance(np, int) or np == 0:
            raise LabError(f"HorovodRunner: np must be a non-zero whole number, not {np!r}")
        if driver_log_verbosity not in ("all", "log_callback_only"):
            raise LabError(f"HorovodRunner: driver_log_verbosity must be 'all' or 'log_callback_only', "
                           f"not {driver_log_verbosity!r}")
        self.num_processor = np
        self.driver_log_verbosity = driver_log_verbosity

    def run(self, main, **kwargs):
        import horovod.runner

        num_proc = abs(self.num_processor)
        echo = self.driver_log_verbosity == "all"
        with capture_worker_output(echo) as output, workers_import_this_package(), \
                _main_script_not_rerun(), _signal_handlers_kept():
            driver_env = {key: os.environ.get(key) for key in _GARBLED_BY_HOROVOD_RUN}
            try:
                results = horovod.runner.run(_with_horovod_settings_restored, args=(main, driver_env, kwargs),
                                             num_proc=num_proc, hosts=f"localhost:{num_proc}", use_gloo=True)
            except Exception as e:
                raise failure_error("horovod", output, e) from None
        return results[0]


# horovod.runner.run (0.28.1) passes these to every process as the text "(None,)": its argument defaults
# carry a stray comma. Horovod reads that as 0, which means no pause between background cycles (the
# background thread then keeps most of a core busy in every process) and no response cache.
_GARBLED_BY_HOROVOD_RUN = ("HOROVOD_CYCLE_TIME", "HOROVOD_CACHE_CAPACITY")


def _with_horovod_settings_restored(main, driver_env: dict, kwargs: dict):
    """In each process, before main's hvd.init(): put back the driver's values (or Horovod's defaults)."""
    for key in _GARBLED_BY_HOROVOD_RUN:
        if os.environ.get(key) == "(None,)":
            restore(os.environ, key, driver_env.get(key))
    return main(**kwargs)


@contextlib.contextmanager
def _main_script_not_rerun():
    """horovod.runner starts a helper per worker with multiprocessing's "spawn", which re-runs the
    __main__ script by path. For a notebook run as `python notebooks/04_...py` that would rerun the
    whole notebook in every helper, so the script's path is hidden while the job runs."""
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None or "__file__" not in vars(main):
        yield
        return
    path = main.__file__
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


@contextlib.contextmanager
def _signal_handlers_kept():
    """horovod.runner installs its own SIGINT/SIGTERM handlers (to stop the workers) and leaves them;
    put ours back afterwards so Ctrl-C works again."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


# --- choosing and starting a runner ---------------------------------------------------------------------

def horovod_runner_class():
    """The real sparkdl.HorovodRunner on Databricks Runtime ML (15.4 LTS ML and older), else ours."""
    try:
        from sparkdl import HorovodRunner as DatabricksHorovodRunner
        if hasattr(DatabricksHorovodRunner, "run"):
            return DatabricksHorovodRunner
    except ImportError:
        pass
    return HorovodRunner


def horovod_available() -> bool:
    try:
        import horovod.torch  # noqa: F401
    except ImportError:
        return False
    return True


def require_horovod() -> None:
    if not horovod_available():
        raise LabError("Horovod is not installed: run `make horovod` (builds it once for this PyTorch), "
                       "or use --engine torch")


def run_horovod(job: DistributedJob, num_processes: int, local_mode: bool = True, echo: bool = False) -> dict:
    """Train with `num_processes` Horovod processes; returns rank 0's result."""
    require_horovod()
    runner_class = horovod_runner_class()
    # HorovodRunner's np: negative means processes on the driver.
    np = -num_processes if local_mode else num_processes
    runner = runner_class(np=np, driver_log_verbosity="all" if echo else "log_callback_only")
    if runner_class is HorovodRunner:
        return runner.run(horovod_rank_main, job=job)
    # sparkdl's runner prints and raises its own way; keep its output but shorten its error.
    with capture_worker_output(echo=True) as output:
        try:
            return runner.run(horovod_rank_main, job=job)
        except Exception as e:
            raise failure_error("horovod", output, e) from None
