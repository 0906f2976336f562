"""Failure reports: one line naming the rank that failed, instead of the engines' pages of tracebacks.

A failing rank prints one tagged line before its engine tears the job down. The driver reads the
workers' output (and the engine's exception text) for these lines and raises a one-line
DistributedTrainingError naming the first rank that failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import time
import traceback
from typing import Optional

from ..errors import LabError

# Environment variable read by `penguin-lab distributed`: make this rank raise (a test hook, not a feature).
FAIL_ON_RANK_ENV = "PENGUIN_LAB_TEST_FAIL_ON_RANK"

FAILURE_TAG = "[penguin-lab:rank-failed]"
_FAILURE_LINE = re.compile(re.escape(FAILURE_TAG) + r" (\{.*\})")
# What horovod.runner's worker prints for a function that raised without report_failure.
_HOROVOD_USER_ERROR = re.compile(r"\[(\d+)\]<stderr>:User function raise error: ?(.*)")


class InjectedFailure(RuntimeError):
    """Raised by the fail_on_rank test hook."""


class DistributedTrainingError(LabError):
    """A rank failed: the message is one line naming the rank and its error."""

    def __init__(self, message: str, rank: Optional[int] = None, error: Optional[str] = None):
        super().__init__(message)
        self.rank = rank
        self.error = error


def fail_on_rank_from_env() -> Optional[int]:
    """The rank that FAIL_ON_RANK_ENV asks to fail, or None."""
    value = os.environ.get(FAIL_ON_RANK_ENV)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise LabError(f"{FAIL_ON_RANK_ENV}={value!r} is not a rank number") from None


def one_line(error: BaseException) -> str:
    return _shorten(f"{type(error).__name__}: {' '.join(str(error).split()) or '(no message)'}")


@contextlib.contextmanager
def report_failure(rank: int):
    """Around a rank's work: on an exception, print the traceback and one tagged line, then re-raise."""
    try:
        yield
    except BaseException as error:
        if isinstance(error, SystemExit) and error.code in (0, None):
            raise
        traceback.print_exc()
        report = {"rank": rank, "time": time.time(), "error": one_line(error)}
        print(f"{FAILURE_TAG} {json.dumps(report)}", file=sys.stderr, flush=True)
        raise


def failure_reports(text: str) -> list:
    reports = []
    for match in _FAILURE_LINE.finditer(text or ""):
        try:
            report = json.loads(match.group(1))
        except json.JSONDecodeError:
            continue
        if isinstance(report, dict) and "rank" in report and "error" in report:
            reports.append(report)
    return reports


def failure_error(engine: str, output: Optional[WorkerOutput], exception: BaseException) -> DistributedTrainingError:
    """Turn an engine's exception into one line. The first rank to fail is the cause: the others
    usually fail afterwards only because their peer went away."""
    text = (output.text() if output is not None else "") + "\n" + str(exception)
    reports = failure_reports(text)
    if reports:
        first = min(reports, key=lambda report: report.get("time", float("inf")))
        return DistributedTrainingError(f"{engine} training failed: rank {first['rank']}: {first['error']}",
                                        rank=first["rank"], error=first["error"])
    # A function without report_failure, run by horovod.runner: its worker prints this line, and the
    # traceback follows on the same line.
    raised = _HOROVOD_USER_ERROR.search(text)
    if raised:
        message = raised.group(2).split("Traceback (most recent call last):")[0]
        rank, error = int(raised.group(1)), _shorten(message.strip() or "(no message)")
        return DistributedTrainingError(f"{engine} training failed: rank {rank}: {error}", rank=rank, error=error)
    lines = [line.strip() for line in str(exception).splitlines() if line.strip()]
    summary = _shorten(lines[0] if lines else type(exception).__name__)
    return DistributedTrainingError(f"{engine} training failed: {summary}", error=summary)


def _shorten(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- the workers' output ---------------------------------------------------------------------------------

class WorkerOutput:
    """Stands in for sys.stdout and sys.stderr while the workers run (the engines forward their
    output there): keeps every line for failure reports, and echoes it to the real stream or not."""

    def __init__(self, echo: bool):
        self.echo = echo
        self._lines: list[str] = []
        self._lock = threading.Lock()

    def stream(self, original):
        return _Tee(self, original)

    def _keep(self, text: str) -> None:
        with self._lock:
            self._lines.append(text)

    def text(self) -> str:
        with self._lock:
            return "".join(self._lines)


class _Tee:
    def __init__(self, output: WorkerOutput, original):
        self._output = output
        self._original = original

    def write(self, text) -> int:
        self._output._keep(text)
        if self._output.echo:
            self._original.write(text)
        return len(text)

    def flush(self) -> None:
        if self._output.echo:
            self._original.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name):  # encoding, errors, ... of the real stream
        return getattr(self._original, name)


@contextlib.contextmanager
def capture_worker_output(echo: bool):
    output = WorkerOutput(echo)
    with contextlib.redirect_stdout(output.stream(sys.stdout)), contextlib.redirect_stderr(output.stream(sys.stderr)):
        yield output
