"""Spark failures as one line: out of memory or disk names the setting to change; others lose the JVM stack.

Spark reports failures as a py4j Py4JJavaError or a pyspark.errors exception whose text carries JVM
stack traces. When the embedded JVM itself died or never started, Python sees only a lost connection
or JAVA_GATEWAY_EXITED; the reason is then in the JVM's own output, which get_spark keeps in
`spark.jvm_log()`.
"""

from __future__ import annotations

import re

from .errors import LabError
from .spark import jvm_log

DRIVER_MEMORY_ENV = "PENGUIN_LAB_DRIVER_MEMORY"
_RAISE_DRIVER = f"raise spark.driver.memory (locally: {DRIVER_MEMORY_ENV}=4g)"

_OOM = re.compile(r"\b(?:java\.lang\.OutOfMemoryError|(?:[\w.]+\.)?SparkOutOfMemoryError)\b(?::[^\n]*)?")
_LOST_TASK = re.compile(r"Lost task \S+ in stage \S+ \(TID \d+\) \([^()]*executor ([^\s)]+)\)")
_EXECUTOR_EXIT_52 = re.compile(r"ExecutorLostFailure \(executor ([^\s)]+) exited[^\n]*code 52\b")  # Spark's exit code for OOM
_SMALL_HEAP = re.compile(r"(Driver|Executor) memory \d+ must be at least \d+|System memory \d+ must be at least \d+")
_RESULT_SIZE = re.compile(r"Total size of serialized results[^\n]*?spark\.driver\.maxResultSize \([^)]*\)")
_NO_SPACE = re.compile(r"(?:[\w.]+(?:Exception|Error): )?No space left on device")
_PYTHON_MEMORY = re.compile(r"^\s*MemoryError\b[^\n]*", re.MULTILINE)
_PYTHON_CRASHED = re.compile(r"Python worker exited unexpectedly \(crashed\)")
_JVM_GONE = re.compile(r"SparkContext was shut down|Answer from Java side is empty|Connection refused|"
                       r"Error while (?:sending|receiving)|Py4JNetworkError")
# What the JVM launcher prints around the real reason it did not start.
_LAUNCH_NOISE = re.compile(r"WARNING: Using incubator modules|Error: Could not create the Java Virtual Machine|"
                           r"Error: A fatal exception has occurred|Error occurred during initialization of VM|"
                           r"Setting default log level|To adjust logging level")


def error_text(exc: BaseException) -> str:
    """The text of `exc` and the exceptions it was raised from (a Py4JJavaError's needs a live JVM)."""
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        try:
            parts.append(f"{type(exc).__name__}: {exc}")
        except Exception:  # the JVM that held the Java exception is gone
            parts.append(f"{type(exc).__name__}: {getattr(exc, 'errmsg', '')}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def _jvm_output(limit: int = 1 << 20) -> str:
    try:
        with open(jvm_log(), "rb") as log:
            log.seek(0, 2)
            log.seek(max(0, log.tell() - limit))
            return log.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _memory_failure(text: str) -> LabError | None:
    if m := _SMALL_HEAP.search(text):
        if m[1] == "Executor":
            return LabError(f"Spark's executors have too little memory to start ({m[0]}); raise spark.executor.memory")
        return LabError(f"Spark's driver has too little memory to start ({m[0]}); {_RAISE_DRIVER}")
    if m := _RESULT_SIZE.search(text):
        return LabError(f"Spark's results are too big for the driver ({m[0]}); raise spark.driver.maxResultSize "
                        f"and spark.driver.memory with it (locally: {DRIVER_MEMORY_ENV}=4g), or collect less")
    if m := _NO_SPACE.search(text):
        return LabError(f"Spark ran out of disk space ({m[0]}); point spark.local.dir at a disk "
                        "with room (locally: SPARK_LOCAL_DIRS=/path/with/room)")
    if m := _PYTHON_MEMORY.search(text):
        return LabError(f"a Python worker ran out of memory ({m[0].strip()}); raise spark.executor.pyspark.memory "
                        "(for aggregations in Python, a lower spark.python.worker.memory spills to disk sooner)")
    if _PYTHON_CRASHED.search(text):
        return LabError("a Python worker died (killed or crashed, often for want of memory); raise "
                        "spark.executor.pyspark.memory or spark.executor.memoryOverhead, or lower "
                        "spark.python.worker.memory so aggregations spill to disk sooner")
    if m := _EXECUTOR_EXIT_52.search(text):
        return LabError(f"Spark ran out of memory in executor {m[1]} (it exited with code 52, "
                        "java.lang.OutOfMemoryError); raise spark.executor.memory")
    if m := _OOM.search(text):
        lost = [task for task in _LOST_TASK.finditer(text) if task.start() < m.start()]
        executor = lost[-1][1] if lost else "driver"
        if executor != "driver":  # in local mode tasks run in the driver's JVM ("executor driver")
            return LabError(f"Spark ran out of memory in executor {executor} ({m[0]}); raise spark.executor.memory")
        return LabError(f"Spark ran out of memory in the driver ({m[0]}); {_RAISE_DRIVER}")
    return None


def spark_failure(exc: BaseException) -> LabError | None:
    """A one-line LabError naming what to change when `exc` is Spark running out of memory or disk, or
    its JVM failing to start; None for any other error."""
    text = error_text(exc)
    if "JAVA_GATEWAY_EXITED" in text:
        lines = [line.strip() for line in _jvm_output().splitlines() if line.strip()]
        reasons = [line for line in lines if not _LAUNCH_NOISE.search(line)]
        if not reasons:
            return None
        hint = f"; check spark.driver.memory (locally: {DRIVER_MEMORY_ENV})" if "heap" in reasons[-1] else ""
        return LabError(f"Spark's JVM did not start ({reasons[-1]}){hint}")
    failure = _memory_failure(text)
    if failure is None and _JVM_GONE.search(text):  # the driver's JVM died: its own output says why
        jvm = _OOM.search(_jvm_output())
        failure = LabError(f"Spark ran out of memory in the driver ({jvm[0]}); {_RAISE_DRIVER}") if jvm else None
    return failure


_PY4J_CALL = re.compile(r"^Py4JJavaError: An error occurred while calling [^\n]*\n: ")
_STAGE_FAILURE = re.compile(r"Job aborted due to stage failure: .*?most recent failure: Lost task [^:]*: ", re.DOTALL)
_NOT_THE_EXCEPTION = re.compile(r"Traceback \(most recent call last\)|During handling of the above|The above exception")


def _python_exception(traceback: str) -> str | None:
    """The exception line of a Python traceback (the last one raised), ignoring the JVM stack after it."""
    raised = None
    for line in traceback.splitlines():
        if line.startswith(("\tat ", "JVM stacktrace:")):
            break
        if line and not line[0].isspace() and not _NOT_THE_EXCEPTION.match(line):
            raised = line.strip()
    return raised


def short_spark_error(exc: BaseException) -> str:
    """Any Spark error as one line: the exception and its message, without JVM stacks or query plans."""
    text = _PY4J_CALL.sub("", error_text(exc))  # a Py4JJavaError: the Java exception after py4j's preamble
    if m := _STAGE_FAILURE.search(text):
        text = text[m.end():]
        prefix = "a Spark task failed: "
    else:
        prefix = ""
    if "Traceback (most recent call last):" in text:  # Python code failed in a task: its exception
        raised = _python_exception(text.split("Traceback (most recent call last):", 1)[1])
        if raised:
            return f"a Spark task failed: {raised}"
    return prefix + _first_line(text).rstrip(";")  # an AnalysisException's plan follows a ";"
