"""The job runs, volumes and MLflow reads of FakeDatabricks (fake_workspace.py), kept apart to stay readable.

A submitted run moves one step each time runs/get reads it: PENDING, then RUNNING, then TERMINATED
with SUCCESS or FAILED (its failing task's output carries the error); a cluster that cannot start
ends it INTERNAL_ERROR with the cloud's reason; a hanging run stays RUNNING until runs/cancel.
"""

from __future__ import annotations

import re
from urllib.parse import unquote


class ApiError(Exception):
    def __init__(self, status: int, error_code: str, message: str):
        super().__init__(message)
        self.status, self.error_code, self.message = status, error_code, message


class JobsFilesAndMlflow:
    """Mixed into FakeDatabricks, whose fields (runs, task_logs, mlflow_runs, ...) these methods use."""

    def run_states(self, run_id: int) -> list[str]:
        """The life cycle states a run went through, as runs/get showed them, in order."""
        return list(self.runs[run_id]["_shown"])

    def _handle_jobs(self, route: tuple[str, str], query: dict, body: dict):
        if route == ("POST", "/api/2.2/jobs/runs/submit"):
            return self._submit(body)
        if route == ("GET", "/api/2.2/jobs/runs/get"):
            run = self._run(query.get("run_id"))
            self._advance(run)
            run["_shown"].append(run["state"]["life_cycle_state"])
            return {k: v for k, v in run.items() if not k.startswith("_")}
        if route == ("GET", "/api/2.2/jobs/runs/get-output"):
            return self._output(query.get("run_id"))
        if route == ("POST", "/api/2.2/jobs/runs/cancel"):
            run = self._run(body.get("run_id"))
            self.cancelled.append(run["run_id"])
            if run["state"]["life_cycle_state"] not in ("TERMINATED", "INTERNAL_ERROR"):
                run["_steps"] = [("TERMINATING", None, "Run cancelled."), ("TERMINATED", "CANCELED", "Run cancelled.")]
            return {}
        return None

    def _submit(self, body: dict) -> dict:
        tasks = body.get("tasks") or []
        keys = [task.get("task_key") for task in tasks]
        if not tasks or not all(keys) or len(set(keys)) != len(keys):
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "Each task needs a unique task_key.")
        for task in tasks:
            if not (task.get("new_cluster") or task.get("existing_cluster_id")):
                raise ApiError(400, "INVALID_PARAMETER_VALUE", f"Task {task['task_key']} has no cluster.")
            for dependency in task.get("depends_on") or []:
                if dependency.get("task_key") not in keys:
                    raise ApiError(400, "INVALID_PARAMETER_VALUE", f"Task {task['task_key']} depends on an unknown task.")
        run_id, job_id = self._new_id(), self._new_id()
        steps = {
            "SUCCESS": [("RUNNING", None, "In run"), ("TERMINATED", "SUCCESS", "")],
            "FAILED": [("RUNNING", None, "In run"), ("TERMINATED", "FAILED", "Workload failed, see run output for details")],
            "CLUSTER_FAILED": [("INTERNAL_ERROR", "FAILED", self.cluster_failure)],
            "HANG": [("RUNNING", None, "In run")] * 10_000,
        }[self.run_outcome]
        self.runs[run_id] = {
            "job_id": job_id,
            "run_id": run_id,
            "number_in_job": run_id,
            "run_name": body.get("run_name", "Untitled"),
            "run_type": "SUBMIT_RUN",
            "creator_user_name": self.user,
            "run_page_url": f"{self.url}/?o=1234567890123456#job/{job_id}/run/{run_id}",
            "state": {"life_cycle_state": "PENDING", "state_message": "Waiting for cluster"},
            "tasks": [{**task, "run_id": self._new_id(), "state": {"life_cycle_state": "PENDING"}} for task in tasks],
            "_steps": list(steps),
            "_shown": [],
        }
        return {"run_id": run_id}

    def _run(self, run_id) -> dict:
        try:
            return self.runs[int(run_id)]
        except (TypeError, ValueError, KeyError):
            raise ApiError(400, "INVALID_PARAMETER_VALUE", f"Run {run_id} does not exist.") from None

    def _advance(self, run: dict) -> None:
        """One step further each time the run is read after its first look."""
        if not run["_shown"] or not run["_steps"]:
            return
        life_cycle, result, message = run["_steps"].pop(0)
        run["state"] = {"life_cycle_state": life_cycle, "state_message": message,
                        **({"result_state": result} if result else {})}
        failing = self.failing_task or run["tasks"][-1]["task_key"]
        for task in run["tasks"]:
            task_result = result
            if result == "FAILED" and life_cycle == "TERMINATED":
                before = [t["task_key"] for t in run["tasks"]].index(failing)
                position = run["tasks"].index(task)
                task_result = "SUCCESS" if position < before else "FAILED" if position == before else "UPSTREAM_FAILED"
            task["state"] = {"life_cycle_state": life_cycle, "state_message": message if task_result != "SUCCESS" else "",
                             **({"result_state": task_result} if task_result else {})}
            notebook = (task.get("notebook_task") or {}).get("notebook_path")
            if task_result == "SUCCESS" and task["task_key"] in self.notebook_metrics and notebook in self.objects:
                self.add_mlflow_run(str(self.objects[notebook]["object_id"]), self.notebook_metrics[task["task_key"]],
                                    {"mlflow.databricks.jobRunID": str(task["run_id"])})

    def _output(self, run_id) -> dict:
        for run in self.runs.values():
            if str(run["run_id"]) == str(run_id):
                raise ApiError(400, "INVALID_PARAMETER_VALUE", "Retrieving the output of runs with multiple tasks is "
                               "not supported. Please retrieve the output of each individual task run instead.")
            for task in run["tasks"]:
                if str(task["run_id"]) == str(run_id):
                    output = {"metadata": {k: v for k, v in task.items()}}
                    state = task["state"]
                    if "notebook_task" in task:  # what the notebook passed to dbutils.notebook.exit, if anything
                        returned = self.task_logs.get(task["task_key"])
                        output["notebook_output"] = {"result": returned, "truncated": False} if returned else {}
                    else:
                        output["logs"] = self.task_logs.get(task["task_key"], "")
                        output["logs_truncated"] = False
                    if state.get("result_state") == "FAILED" and state.get("life_cycle_state") == "TERMINATED":
                        output["error"] = self.task_error
                        output["error_trace"] = f"Traceback (most recent call last):\n{self.task_error}"
                    return output
        raise ApiError(400, "INVALID_PARAMETER_VALUE", f"Run {run_id} does not exist.")

    # --- the Files API (volumes) and MLflow ---------------------------------------------

    def add_mlflow_run(self, experiment_id: str, metrics: dict, tags: dict | None = None) -> str:
        run_id = f"{self._new_id():032x}"
        self.mlflow_runs[run_id] = {"experiment_id": experiment_id, "metrics": metrics, "tags": tags or {}}
        return run_id

    def _mlflow_run(self, run_id: str) -> dict:
        run = self.mlflow_runs[run_id]
        return {
            "info": {"run_id": run_id, "run_uuid": run_id, "experiment_id": run["experiment_id"], "status": "FINISHED"},
            "data": {
                "metrics": [{"key": k, "value": v, "timestamp": 0, "step": 0} for k, v in run["metrics"].items()],
                "tags": [{"key": k, "value": v} for k, v in run["tags"].items()],
            },
        }

    def _handle_files_and_mlflow(self, method: str, path: str, query: dict, body: dict, raw: bytes):
        if path.startswith("/api/2.0/fs/files/Volumes/"):
            target = unquote(path[len("/api/2.0/fs/files"):])
            if method == "PUT":
                if target in self.volume_files and query.get("overwrite") != "true":
                    raise ApiError(409, "ALREADY_EXISTS", f"The file {target} already exists.")
                self.volume_files[target] = raw
                return {}
            if method == "HEAD" and target in self.volume_files:
                return {}
            raise ApiError(404, "NOT_FOUND", f"The file {target} does not exist.")
        if (method, path) == ("GET", "/api/2.0/mlflow/runs/get"):
            if query.get("run_id") not in self.mlflow_runs:
                raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Run '{query.get('run_id')}' not found.")
            return {"run": self._mlflow_run(query["run_id"])}
        if (method, path) == ("POST", "/api/2.0/mlflow/runs/search"):
            wanted = re.fullmatch(r"tags\.`?([\w.]+)`?\s*=\s*'([^']*)'", (body.get("filter") or "").strip())
            found = [
                self._mlflow_run(run_id)
                for run_id, run in self.mlflow_runs.items()
                if run["experiment_id"] in (body.get("experiment_ids") or [])
                and (wanted is None or run["tags"].get(wanted[1]) == wanted[2])
            ]
            return {"runs": found} if found else {}
        return None
