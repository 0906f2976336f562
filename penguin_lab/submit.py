"""`penguin-lab submit`: the lab as a one-time run on a new Databricks job cluster, from the terminal.

The same code that runs locally is built into a wheel and uploaded under a path naming its version
and digest. The run's cluster is databricks/cluster.json's, with the runtime `databricks up` would
choose. Its one task runs `penguin-lab run` (or `distributed`) from the wheel; with notebooks, the
notebooks run as a chain of tasks. Every request is planned first as the JSON the REST API gets,
so --dry-run can print them all without a server, and the real run sends the same bodies.
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from penguin_lab.config import TrainConfig
from penguin_lab.errors import LabError
from penguin_lab.jobrun import RunOutcome, cancel_on_interrupt, read_outcome, watch
from penguin_lab.wheel import Wheel, build_wheel
from penguin_lab.workspace import (
    DEFAULT_RETRY_TIMEOUT_SECONDS,
    ApiErrors,
    cluster_arguments,
    connect,
    files_to_import,
    load_settings,
    newest_runtime,
    repository_root,
    resolve_workspace_dir,
    version_tuple,
)

# The REST endpoints `submit` calls (the wait adds runs/get, runs/get-output and MLflow's reads).
SUBMIT_ENDPOINTS = frozenset(
    {
        ("GET", "/api/2.0/preview/scim/v2/Me"),
        ("GET", "/api/2.1/clusters/spark-versions"),
        ("POST", "/api/2.0/workspace/mkdirs"),
        ("POST", "/api/2.0/workspace/import"),
        ("POST", "/api/2.2/jobs/runs/submit"),
        ("GET", "/api/2.2/jobs/runs/get"),
    }
)
# The notebooks, in the order they run; the distributed one depends on the engine.
NOTEBOOK_CHAIN = {"torch": ["01_prepare_data", "02_train_evaluate", "03_save_and_predict",
                            "05_distributed_torch_distributor"],
                  "horovod": ["01_prepare_data", "02_train_evaluate", "03_save_and_predict", "04_distributed_horovod"]}
# A job cluster is named after its run and ends with it: these settings of cluster.json do not apply.
NOT_FOR_JOB_CLUSTERS = ("cluster_name", "autotermination_minutes")
WHEEL_ENTRY_POINT = "penguin-lab-job"  # exits non-zero on failure, so that the task fails with the command
# The last ML runtime that ships Horovod (docs/distributed.md): --engine horovod caps the runtime rule there.
HOROVOD_MAX_RUNTIME = "15.4"
RUN_TIMEOUT_SECONDS = 2 * 3600
DEFAULT_POLL_SECONDS = 10.0
# In a dry run nothing is asked of the workspace: what it would answer is shown as these placeholders.
UNKNOWN_USER = "{user}"
UNKNOWN_RUNTIME = "{newest runtime fitting cluster.json's rule}"


@dataclass(frozen=True)
class SubmitOptions:
    epochs: int = TrainConfig.epochs
    seed: int = TrainConfig.seed
    engine: str | None = None  # None: `penguin-lab run`; "horovod" or "torch": `penguin-lab distributed`
    np: int | None = None
    notebooks: bool = False
    volume: str | None = None  # /Volumes/<catalog>/<schema>/<volume>: the wheel goes there instead

    def check(self) -> None:
        if self.np is not None and self.engine is None:
            raise LabError("--np needs --engine horovod|torch")
        if self.notebooks and self.np is not None:
            raise LabError("--np is not a notebook setting: the distributed notebook chooses its own processes")
        if self.volume is not None:
            parts = self.volume.rstrip("/").split("/")
            if len(parts) < 5 or parts[:2] != ["", "Volumes"] or not all(parts[2:5]):
                raise LabError(f"--volume must be a Unity Catalog volume path /Volumes/<catalog>/<schema>/<volume>, "
                               f"not {self.volume!r}")


@dataclass
class PlannedRequest:
    method: str
    path: str
    body: dict | None = None
    file: Path | None = None  # a local file sent as the body (shown as its name and size)

    def shown(self) -> str:
        """The request as --dry-run prints it: the method and path, then the JSON body."""
        if self.file is not None and self.body is None:
            return f"{self.method} {self.path}\n<the {self.file.stat().st_size} bytes of {self.file.name}>"
        return f"{self.method} {self.path}" + (f"\n{json.dumps(self.body, indent=2)}" if self.body is not None else "")


@dataclass
class SubmitResult:
    run_id: int | None = None
    run_page_url: str | None = None
    requests: list[PlannedRequest] = field(default_factory=list)
    outcome: RunOutcome | None = None


def submit(
    host: str | None = None,
    profile: str | None = None,
    options: SubmitOptions = SubmitOptions(),
    *,
    wait: bool = True,
    dry_run: bool = False,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    settings_path: Path | str | None = None,
    source_dir: Path | str | None = None,
    wheel: Wheel | None = None,
    retry_timeout_seconds: int = DEFAULT_RETRY_TIMEOUT_SECONDS,
    log: Callable[[str], None] = print,
    say: Callable[[str], None] = print,
) -> SubmitResult:
    """Build, upload and submit; then, unless told not to, watch the run to its end and read its result.

    `wheel` is one already built from source_dir (by default it is built here). `log` gets progress
    (building, uploading), `say` the run's address, states and result.
    A failed run is a RunFailed, Ctrl-C while waiting cancels the run and is a RunCancelled.
    """
    options.check()
    settings = load_settings(settings_path)
    source_root = Path(source_dir) if source_dir is not None else repository_root()
    with tempfile.TemporaryDirectory(prefix="penguin-lab-submit-") as build_dir:
        if wheel is None:
            log("building the wheel")
            wheel = build_wheel(source_root, Path(build_dir))
            log(f"built {wheel.path.name} (sha256 {wheel.sha256[:12]})")
        rule = runtime_rule(settings, options)
        if dry_run:
            return _dry_run(settings, options, wheel, rule, source_root, say)

        w = connect(host, profile, retry_timeout_seconds)
        with ApiErrors(w.config.host):
            user = w.current_user.me().user_name
            runtime = newest_runtime(w, rule)
            requests = plan_requests(settings, options, wheel, user, runtime, source_root)
            for request in requests[:-1]:
                _send_upload(w, request)
            log(f"uploaded {wheel.path.name}; runtime {runtime}")
            run_id = w.jobs.submit(**_submit_arguments(requests[-1].body)).run_id
            result = SubmitResult(run_id=run_id, requests=requests)
            with cancel_on_interrupt(w, run_id, result):
                run = w.jobs.get_run(run_id)
                result.run_page_url = run.run_page_url
                say(f"run {run_id}: {run.run_page_url}")
                if not wait:
                    return result
                finished = watch(w, run_id, poll_seconds, say, first=run)
            result.outcome = read_outcome(w, finished, say)
    return result


def _dry_run(settings: dict, options: SubmitOptions, wheel: Wheel, rule: dict, source_root: Path, say) -> SubmitResult:
    """Say every request, the reads included, with placeholders for what only the workspace knows."""
    runtime = UNKNOWN_RUNTIME
    if rule != settings["runtime"]:
        runtime = UNKNOWN_RUNTIME.replace("rule}", f"rule, at most {rule['max_version']}}}")
    requests = plan_requests(settings, options, wheel, UNKNOWN_USER, runtime, source_root)
    say("GET /api/2.0/preview/scim/v2/Me")
    say("GET /api/2.1/clusters/spark-versions")
    for request in requests:
        say(request.shown())
    return SubmitResult(requests=requests)


# --- the requests -----------------------------------------------------------------------------


def runtime_rule(settings: dict, options: SubmitOptions) -> dict:
    """cluster.json's runtime rule; with Horovod, no newer than the last runtime that has it."""
    rule = dict(settings["runtime"])
    if options.engine == "horovod":
        highest = rule.get("max_version")
        if highest is None or version_tuple(highest) > version_tuple(HOROVOD_MAX_RUNTIME):
            rule["max_version"] = HOROVOD_MAX_RUNTIME
    return rule


def plan_requests(settings: dict, options: SubmitOptions, wheel: Wheel, user: str, runtime: str,
                  source_root: Path) -> list[PlannedRequest]:
    """Every request that changes something, in order: uploads first, runs/submit last."""
    folder = resolve_workspace_dir(settings["workspace"]["dir"], user)
    requests: list[PlannedRequest] = []
    if options.volume:
        library = f"{options.volume.rstrip('/')}/penguin-lab/wheels/{wheel.folder_name}/{wheel.path.name}"
        requests.append(PlannedRequest("PUT", f"/api/2.0/fs/files{library}?overwrite=true", file=wheel.path))
    else:
        wheel_dir = f"{folder}/wheels/{wheel.folder_name}"
        library = f"/Workspace{wheel_dir}/{wheel.path.name}"
        requests.append(PlannedRequest("POST", "/api/2.0/workspace/mkdirs", {"path": wheel_dir}))
        requests.append(_import_request(f"{wheel_dir}/{wheel.path.name}", wheel.path, notebook=False))
    if options.notebooks:
        uploads = files_to_import(settings["workspace"], source_root, folder)
        for directory in sorted({target.rsplit("/", 1)[0] for target, _, _ in uploads}):
            requests.append(PlannedRequest("POST", "/api/2.0/workspace/mkdirs", {"path": directory}))
        requests.extend(_import_request(target, source, is_notebook) for target, source, is_notebook in uploads)

    cluster = _cluster_spec(settings["cluster"], runtime, user)
    libraries = [{"whl": library}]
    if options.notebooks:
        tasks, previous = [], None
        for name in NOTEBOOK_CHAIN[options.engine or "torch"]:
            tasks.append({
                "task_key": name,
                **({"depends_on": [{"task_key": previous}]} if previous else {}),
                "new_cluster": cluster,
                "libraries": libraries,
                "notebook_task": {"notebook_path": f"{folder}/notebooks/{name}", "source": "WORKSPACE",
                                  "base_parameters": {"epochs": str(options.epochs), "seed": str(options.seed)}},
            })
            previous = name
    else:
        command = ["run"] if options.engine is None else ["distributed", "--engine", options.engine,
                                                          "--np", str(options.np or 2)]
        parameters = [*command, "--epochs", str(options.epochs), "--seed", str(options.seed)]
        tasks = [{
            "task_key": command[0],
            "new_cluster": cluster,
            "libraries": libraries,
            "python_wheel_task": {"package_name": "penguin_lab", "entry_point": WHEEL_ENTRY_POINT,
                                  "parameters": parameters},
        }]
    what = "notebooks" if options.notebooks else " ".join(tasks[0]["python_wheel_task"]["parameters"][:3])
    body = {"run_name": f"penguin-lab {wheel.version} {what}", "timeout_seconds": RUN_TIMEOUT_SECONDS, "tasks": tasks}
    requests.append(PlannedRequest("POST", "/api/2.2/jobs/runs/submit", body))
    return requests


def _cluster_spec(cluster: dict, runtime: str, user: str) -> dict:
    """cluster.json's cluster, the runtime and the user, as the JSON of a new job cluster."""
    from databricks.sdk.service.compute import ClusterSpec

    spec = ClusterSpec(**cluster_arguments(cluster, runtime, user)).as_dict()
    return {key: value for key, value in spec.items() if key not in NOT_FOR_JOB_CLUSTERS}


def _import_request(target: str, source: Path, notebook: bool) -> PlannedRequest:
    body = {"path": target, "format": "SOURCE" if notebook else "AUTO", "overwrite": True,
            "content": f"<base64 of {source.name}, {source.stat().st_size} bytes>"}
    if notebook:
        body["language"] = "PYTHON"
    return PlannedRequest("POST", "/api/2.0/workspace/import", body, file=source)


def _send_upload(w, request: PlannedRequest) -> None:
    from databricks.sdk.service.workspace import ImportFormat, Language

    if request.path == "/api/2.0/workspace/mkdirs":
        w.workspace.mkdirs(request.body["path"])
    elif request.path == "/api/2.0/workspace/import":
        body = request.body
        content = base64.b64encode(request.file.read_bytes()).decode("ascii")
        language = Language(body["language"]) if "language" in body else None
        w.workspace.import_(body["path"], content=content, format=ImportFormat(body["format"]),
                            language=language, overwrite=body["overwrite"])
    elif request.path.startswith("/api/2.0/fs/files/"):
        target = request.path[len("/api/2.0/fs/files"):].split("?")[0]
        w.files.upload(target, io.BytesIO(request.file.read_bytes()), overwrite=True)
    else:  # a planned request this function does not know how to send is a bug, not a user's error
        raise AssertionError(f"no sender for {request.method} {request.path}")


def _submit_arguments(body: dict) -> dict:
    from databricks.sdk.service.jobs import SubmitTask

    return {"run_name": body["run_name"], "timeout_seconds": body["timeout_seconds"],
            "tasks": [SubmitTask.from_dict(task) for task in body["tasks"]]}

