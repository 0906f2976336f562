"""A core of its own for each rank on this machine, and what Linux tells about a process's threads."""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Optional


def thread_ids() -> list:
    """Linux's ids of this process's threads; [0] (the calling thread) where /proc cannot tell."""
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def idle_thread_count() -> Optional[int]:
    """Threads of this process in the idle scheduling class (see bind_to_own_core), where Linux tells."""
    if not hasattr(os, "SCHED_IDLE"):
        return None
    count = 0
    for thread in thread_ids():
        with contextlib.suppress(OSError):  # a thread that has just ended
            count += os.sched_getscheduler(thread) == os.SCHED_IDLE
    return count


def bind_to_own_core(local_rank: int, local_size: int, training_thread_first: bool = False) -> Optional[int]:
    """Keep this process, and every thread it has (Horovod's background thread, gloo's), on a core
    of its own, as mpirun does for two processes. Otherwise a rank that waits for its peer (Horovod
    polls while it waits) and the background threads take CPU time from the rank still computing.

    With `training_thread_first`, the threads already started get the idle scheduling class, so on
    that core they run while the calling (training) thread waits, not in the middle of its forward and
    backward passes. Both rank functions ask for it: Horovod's threads and the gloo threads of DDP's
    process group only exchange messages, and training's wait for them yields the core. Threads started
    later (PyTorch's own) keep their class.
    Only for several processes on CPU with a core for each; returns the core, or None."""
    if local_size < 2 or not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    if local_size > len(cores) or not 0 <= local_rank < local_size:
        return None
    core = cores[local_rank]
    training_thread = threading.get_native_id()
    for thread in thread_ids():
        with contextlib.suppress(OSError):  # a thread that has just ended
            os.sched_setaffinity(thread, {core})
            if training_thread_first and thread not in (0, training_thread) and hasattr(os, "SCHED_IDLE"):
                os.sched_setscheduler(thread, os.SCHED_IDLE, os.sched_param(0))
    return core
