"""Watching a one-time Databricks job run: its states as they change, why it failed, what it reached.

The test accuracy comes from the run's MLflow metrics when the task was tracked in the workspace
(a wheel task prints its MLflow run id; a notebook's run is found in the notebook's experiment by
the job-run tag Databricks puts on it), otherwise from the task's own output.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from typing import Callable

from penguin_lab.errors import LabError

TERMINAL_STATES = {"TERMINATED", "SKIPPED", "INTERNAL_ERROR"}
WAITING_STATES = {"QUEUED", "PENDING", "BLOCKED", "WAITING_FOR_RETRY"}  # their message says what for
# Lines that `penguin-lab run` and `distributed` print (cli.py) and that a notebook may return.
ACCURACY_LINE = re.compile(r"test accuracy (\d+(?:\.\d+)?)")
MLFLOW_LINE = re.compile(r"^MLflow run ([0-9a-f]{32}) in (\S+)", re.MULTILINE)
ERROR_LINE = re.compile(r"^penguin-lab: error: (.+)$", re.MULTILINE)
# The tag MLflow sets on runs it logs inside a Databricks job: the task's run id.
JOB_RUN_TAG = "mlflow.databricks.jobRunID"
ACCURACY_METRIC = "test_accuracy"


class RunFailed(LabError):
    """The run ended without success: the workspace's reason, in one line."""

    exit_code = 1


class RunCancelled(LabError):
    """Ctrl-C while waiting: the run was cancelled."""

    exit_code = 130


@dataclass
class TaskResult:
    task_key: str
    test_accuracy: float | None
    source: str  # "MLflow run <id>", "the task's output", or why there is none


@dataclass
class RunOutcome:
    run_id: int
    result_state: str
    results: list[TaskResult]


def state_text(state) -> str:
    """A run's or task's state as one short phrase, e.g. "PENDING (Waiting for cluster)", "TERMINATED SUCCESS"."""
    if state is None or state.life_cycle_state is None:
        return "UNKNOWN"
    life_cycle = state.life_cycle_state.value
    text = life_cycle + (f" {state.result_state.value}" if state.result_state else "")
    if life_cycle in WAITING_STATES and state.state_message:
        text += f" ({state.state_message})"
    return text


def watch(w, run_id: int, poll_seconds: float, say: Callable[[str], None], first=None):
    """Poll the run until it ends, saying one line per change of its state (and of each task's, if several)."""
    run = first if first is not None else w.jobs.get_run(run_id)
    shown: dict[str, str] = {}
    while True:
        lines = {"": f"state: {state_text(run.state)}"}
        if len(run.tasks or []) > 1:
            lines.update({task.task_key: f"  task {task.task_key}: {state_text(task.state)}" for task in run.tasks})
        for key, line in lines.items():
            if shown.get(key) != line:
                say(line)
                shown[key] = line
        if run.state and run.state.life_cycle_state and run.state.life_cycle_state.value in TERMINAL_STATES:
            return run
        time.sleep(poll_seconds)
        run = w.jobs.get_run(run_id)


@contextlib.contextmanager
def cancel_on_interrupt(w, run_id: int, result):
    """Ctrl-C inside: cancel the run (without waiting for it to stop) and say so, with its page if known."""
    try:
        yield
    except KeyboardInterrupt:
        w.jobs.cancel_run(run_id)
        page = f" ({result.run_page_url})" if result.run_page_url else ""
        raise RunCancelled(f"interrupted: cancelled run {run_id}{page}") from None


def read_outcome(w, run, say: Callable[[str], None]) -> RunOutcome:
    """The ended run's result: a RunFailed with the reason, or the test accuracy of each training task."""
    state = run.state
    result = state.result_state.value if state and state.result_state else None
    if result != "SUCCESS":
        raise RunFailed(f"run {run.run_id} ended {state_text(state)}: {_failure_reason(w, run)} ({run.run_page_url})")
    results = []
    for task in run.tasks or []:
        if task.python_wheel_task is None and not re.search(r"train|distributed", task.task_key):
            continue  # preparing and predicting notebooks report no accuracy
        value, source = _task_accuracy(w, task)
        results.append(TaskResult(task.task_key, value, source))
        if value is None:
            say(f"{task.task_key}: no test accuracy found ({source})")
        else:
            say(f"test accuracy {value:.4f} ({task.task_key}, from {source})")
    return RunOutcome(run.run_id, result, results)


def _failure_reason(w, run) -> str:
    life_cycle = run.state.life_cycle_state.value if run.state and run.state.life_cycle_state else ""
    if life_cycle == "INTERNAL_ERROR" and run.state.state_message:  # e.g. the cluster could not start
        return _one_line(run.state.state_message)
    for task in run.tasks or []:
        task_result = task.state.result_state.value if task.state and task.state.result_state else None
        if task_result not in ("FAILED", "TIMEDOUT"):
            continue
        output = _output(w, task)
        errors = ERROR_LINE.findall(output.logs or "") if output else []
        if errors:
            return f"task {task.task_key}: {errors[-1]}"
        if output is not None and output.error:
            return f"task {task.task_key}: {_one_line(output.error)}"
        if task.state.state_message:
            return f"task {task.task_key}: {_one_line(task.state.state_message)}"
    return _one_line(run.state.state_message if run.state and run.state.state_message else "no reason given")


def _task_accuracy(w, task) -> tuple[float | None, str]:
    if task.python_wheel_task is not None:
        output = _output(w, task)
        logs = output.logs if output is not None and output.logs else ""
        tracked = MLFLOW_LINE.search(logs)
        if tracked and tracked[2].startswith("databricks"):  # tracked in this workspace's MLflow
            value = _mlflow_metric(w, tracked[1])
            if value is not None:
                return value, f"MLflow run {tracked[1]}"
        found = ACCURACY_LINE.findall(logs)
        return (float(found[-1]), "the task's output") if found else (None, "no MLflow run and none in its output")
    if task.notebook_task is not None:
        for run_id in _notebook_mlflow_runs(w, task):
            value = _mlflow_metric(w, run_id)
            if value is not None:
                return value, f"MLflow run {run_id}"
        output = _output(w, task)  # only when no MLflow run has the accuracy
        returned = output.notebook_output.result if output is not None and output.notebook_output else None
        found = ACCURACY_LINE.findall(returned or "")
        if found:
            return float(found[-1]), "the notebook's exit value"
        if returned:  # a notebook that stops early (a runtime without what it needs) says why in its exit value
            return None, f"the notebook returned: {_one_line(returned, limit=300)}"
    return None, "no MLflow run and none in its output"


def _notebook_mlflow_runs(w, task) -> list[str]:
    """MLflow runs of this task: in the notebook's experiment (its id is the notebook's), tagged with its run id."""
    from databricks.sdk.errors import NotFound

    try:
        notebook = w.workspace.get_status(task.notebook_task.notebook_path)
    except NotFound:
        return []
    found = w.experiments.search_runs(experiment_ids=[str(notebook.object_id)],
                                      filter=f"tags.`{JOB_RUN_TAG}` = '{task.run_id}'")
    return [run.info.run_id for run in found]


def _mlflow_metric(w, run_id: str) -> float | None:
    from databricks.sdk.errors import NotFound

    try:
        metrics = w.experiments.get_run(run_id).run.data.metrics or []
    except NotFound:
        return None
    return next((metric.value for metric in metrics if metric.key == ACCURACY_METRIC), None)


def _output(w, task):
    from databricks.sdk.errors import DatabricksError

    try:
        return w.jobs.get_run_output(task.run_id)
    except DatabricksError:  # a task that never started has no output
        return None


def _one_line(text: str, limit: int = 500) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
