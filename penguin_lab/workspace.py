"""Create or remove the lab's cluster and notebooks in an existing Databricks workspace.

`up` and `down` use the Databricks SDK for Python to do what setup.ps1 does with Az PowerShell
and the REST API. Both read the same settings file, databricks/cluster.json, and call the same
REST endpoints (listed below), so the two paths give the same cluster and the same folder.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterable

from penguin_lab.errors import LabError

SETTINGS_FILE = Path("databricks") / "cluster.json"

# The REST endpoints `up` calls. setup.ps1 calls exactly these too; tests check both against this set.
UP_ENDPOINTS = frozenset(
    {
        ("GET", "/api/2.0/preview/scim/v2/Me"),
        ("GET", "/api/2.1/clusters/list"),
        ("GET", "/api/2.1/clusters/spark-versions"),
        ("POST", "/api/2.1/clusters/create"),
        ("POST", "/api/2.1/clusters/start"),
        ("GET", "/api/2.0/workspace/get-status"),
        ("GET", "/api/2.0/repos/{repo_id}"),
        ("POST", "/api/2.0/repos"),
        ("POST", "/api/2.0/workspace/mkdirs"),
        ("POST", "/api/2.0/workspace/import"),
    }
)
# `up --wait` also polls the cluster until it runs.
WAIT_ENDPOINTS = frozenset({("GET", "/api/2.1/clusters/get")})
# The REST endpoints `down` calls.
DOWN_ENDPOINTS = frozenset(
    {
        ("GET", "/api/2.0/preview/scim/v2/Me"),
        ("GET", "/api/2.1/clusters/list"),
        ("POST", "/api/2.1/clusters/permanent-delete"),
        ("GET", "/api/2.0/workspace/get-status"),
        ("GET", "/api/2.0/repos/{repo_id}"),
        ("DELETE", "/api/2.0/repos/{repo_id}"),
        ("POST", "/api/2.0/workspace/delete"),
    }
)

WAIT_TIMEOUT = timedelta(minutes=30)
# The SDK retries an unreachable host for 5 minutes by default: too long to learn of a typo in --host.
DEFAULT_RETRY_TIMEOUT_SECONDS = 30

_VERSION_KEY = re.compile(r"^(\d+)\.(\d+)\.x-")
_VERSION_TEXT = re.compile(r"^\d+\.\d+$")


# --- settings -------------------------------------------------------------------------------


def repository_root() -> Path:
    """The checkout holding databricks/cluster.json: this package's parent, else the current directory."""
    for candidate in (Path(__file__).resolve().parent.parent, Path.cwd()):
        if (candidate / SETTINGS_FILE).is_file():
            return candidate
    raise LabError(f"cannot find {SETTINGS_FILE.as_posix()}: run from the root of the penguin-lab repository")


def load_settings(path: Path | str | None = None) -> dict:
    """Read and check databricks/cluster.json; a problem in it is a LabError naming the key."""
    path = Path(path) if path is not None else repository_root() / SETTINGS_FILE
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise LabError(f"cannot read {path}: {error.strerror}") from error
    except json.JSONDecodeError as error:
        raise LabError(f"{path} is not valid JSON: {error.msg} at line {error.lineno}") from error

    def need(container: dict, key: str, kind: type, where: str):
        value = container.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise LabError(f"{path}: {where}{key} is missing or not a {_KIND_NAMES[kind]}")
        return value

    if not isinstance(settings, dict):
        raise LabError(f"{path}: the top level must be a JSON object")
    cluster = need(settings, "cluster", dict, "")
    for key in ("cluster_name", "node_type_id", "data_security_mode"):
        if not need(cluster, key, str, "cluster."):
            raise LabError(f"{path}: cluster.{key} is empty")
    need(cluster, "num_workers", int, "cluster.")
    need(cluster, "autotermination_minutes", int, "cluster.")
    runtime = need(settings, "runtime", dict, "")
    unknown = sorted(set(runtime) - {"ml", "lts", "gpu", "min_version", "max_version"})
    if unknown:
        raise LabError(f"{path}: unknown runtime setting {unknown[0]!r}")
    for key in ("ml", "lts", "gpu"):
        need(runtime, key, bool, "runtime.")
    for key in ("min_version", "max_version"):
        bound = runtime.get(key)
        if bound is not None and not (isinstance(bound, str) and _VERSION_TEXT.match(bound)):
            raise LabError(f'{path}: runtime.{key} must be null or a version like "15.4"')
    workspace = need(settings, "workspace", dict, "")
    if not need(workspace, "dir", str, "workspace.").startswith("/"):
        raise LabError(f"{path}: workspace.dir must be an absolute workspace path such as /Users/{{user}}/penguin-lab")
    need(workspace, "git_url", str, "workspace.")
    need(workspace, "git_provider", str, "workspace.")
    for key in ("notebooks", "files"):
        patterns = need(workspace, key, list, "workspace.")
        if not all(isinstance(pattern, str) and pattern for pattern in patterns):
            raise LabError(f"{path}: workspace.{key} must be a list of file patterns")
    return settings


_KIND_NAMES = {dict: "JSON object", list: "list", str: "string", int: "whole number", bool: "true/false"}


# --- runtime choice -------------------------------------------------------------------------


def choose_spark_version(
    versions: Iterable[tuple[str, str]],
    *,
    ml: bool = True,
    lts: bool = True,
    gpu: bool = False,
    min_version: str | None = None,
    max_version: str | None = None,
) -> str:
    """The key of the newest runtime that fits the rule, from (key, name) pairs as spark-versions lists them.

    Keys look like "15.4.x-cpu-ml-scala2.12", names like "15.4 LTS ML (includes Apache Spark 3.5.0,
    Scala 2.12)". Photon, Graviton (aarch64), genomics and beta runtimes never fit. Between two
    keys of the same version (Scala 2.12 and 2.13), the greater key wins. setup.ps1 applies the same
    rule in Select-SparkVersion.
    """
    lowest = version_tuple(min_version) if min_version else None
    highest = version_tuple(max_version) if max_version else None
    candidates = []
    for key, name in versions:
        match = _VERSION_KEY.match(key)
        if not match:  # apache-spark-*, custom:* and other keys that are not Databricks runtimes
            continue
        version = (int(match[1]), int(match[2]))
        if re.search(r"-(photon|aarch64|hls)-", key, re.IGNORECASE) or re.search(r"\bbeta\b", name, re.IGNORECASE):
            continue
        if ("-ml-" in key.lower()) != ml or ("-gpu-" in key.lower()) != gpu:
            continue
        if lts and not re.search(r"\bLTS\b", name, re.IGNORECASE):
            continue
        if (lowest and version < lowest) or (highest and version > highest):
            continue
        candidates.append((version, key.lower(), key))
    if not candidates:
        wanted = " ".join(
            word
            for word, wanted in (("LTS", lts), ("ML", ml), ("GPU" if gpu else "CPU", True))
            if wanted
        )
        bounds = f" between {min_version or 'any'} and {max_version or 'any'}" if (min_version or max_version) else ""
        raise LabError(f"this workspace offers no {wanted} Databricks runtime{bounds}: check runtime in cluster.json")
    return max(candidates)[2]


def newest_runtime(w, rule: dict) -> str:
    """The newest runtime this workspace offers that follows a runtime rule (cluster.json's, or a narrower one)."""
    versions = w.clusters.spark_versions().versions or []
    return choose_spark_version(((v.key or "", v.name or "") for v in versions), **rule)


def version_tuple(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


# --- workspace client and errors ------------------------------------------------------------


def connect(host: str | None, profile: str | None, retry_timeout_seconds: int):
    """A WorkspaceClient resolved as the SDK does: arguments, then DATABRICKS_* variables, then ~/.databrickscfg."""
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.core import Config

    options = {"retry_timeout_seconds": retry_timeout_seconds}
    if host:
        options["host"] = host
    if profile:
        options["profile"] = profile
    try:
        return WorkspaceClient(config=Config(**options))
    except ValueError as error:
        # The SDK's message runs on with its whole configuration and a link; keep the reason only.
        reason = re.split(r"\. Config:|, please check", _first_line(str(error), limit=1000))[0]
        reason = re.sub(r"^(default auth|resolve|validate): ", "", reason)
        raise LabError(
            f"no usable Databricks credentials ({reason}): set DATABRICKS_HOST and DATABRICKS_TOKEN, "
            "or pass --profile NAME from ~/.databrickscfg"
        ) from error


def _first_line(text: str, limit: int = 200) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "no detail"
    return line if len(line) <= limit else line[: limit - 1] + "…"


class ApiErrors:
    """Turns what the SDK raises into one-line LabErrors that say what to check."""

    def __init__(self, host: str):
        self.host = host

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if error is None or isinstance(error, LabError):
            return False
        import requests
        from databricks.sdk.errors import DatabricksError, OperationFailed, PermissionDenied, Unauthenticated

        if isinstance(error, Unauthenticated):
            raise LabError(f"{self.host} rejected the credentials (401): check the token or the profile") from error
        if isinstance(error, PermissionDenied):
            raise LabError(f"permission denied by {self.host}: {_first_line(str(error))}") from error
        if isinstance(error, DatabricksError):
            raise LabError(f"Databricks API error from {self.host}: {_first_line(str(error))}") from error
        if isinstance(error, OperationFailed):
            raise LabError(f"the cluster did not start: {_first_line(str(error))}") from error
        unreachable = (requests.ConnectionError, requests.Timeout)
        if isinstance(error, unreachable) or isinstance(error.__cause__, unreachable):
            raise LabError(f"cannot reach {self.host}: check --host and the network") from error
        if isinstance(error, TimeoutError):
            raise LabError(f"gave up waiting: {_first_line(str(error))}") from error
        return False


# --- up and down ----------------------------------------------------------------------------


@dataclass
class UpResult:
    host: str
    user: str
    cluster_name: str
    cluster_id: str | None = None
    cluster_state: str | None = None  # state found, or "CREATED"
    spark_version: str | None = None
    workspace_dir: str = ""
    notebooks: str = ""  # how the folder was provided
    imported: list[str] = field(default_factory=list)


@dataclass
class DownResult:
    host: str
    deleted_clusters: list[str] = field(default_factory=list)
    deleted_folder: str | None = None


def up(
    host: str | None = None,
    profile: str | None = None,
    *,
    git_url: str | None = None,
    workspace_dir: str | None = None,
    wait: bool = False,
    skip_cluster: bool = False,
    settings_path: Path | str | None = None,
    source_dir: Path | str | None = None,
    retry_timeout_seconds: int = DEFAULT_RETRY_TIMEOUT_SECONDS,
    log: Callable[[str], None] = print,
) -> UpResult:
    """Create (or reuse) the lab cluster and put the notebooks in the workspace.

    Reuses the caller's cluster of the same name and an existing Git folder; re-imports files into
    an existing plain folder (overwriting them), so running it twice creates nothing new.
    """
    settings = load_settings(settings_path)
    source_root = Path(source_dir) if source_dir is not None else repository_root()
    w = connect(host, profile, retry_timeout_seconds)
    with ApiErrors(w.config.host):
        user = w.current_user.me().user_name
        result = UpResult(host=w.config.host, user=user, cluster_name=settings["cluster"]["cluster_name"])
        if not skip_cluster:
            _ensure_cluster(w, settings, user, wait, result, log)
        folder = resolve_workspace_dir(workspace_dir or settings["workspace"]["dir"], user)
        url = git_url if git_url is not None else settings["workspace"]["git_url"]
        _ensure_notebooks(w, settings["workspace"], folder, url, source_root, result, log)
    return result


def down(
    host: str | None = None,
    profile: str | None = None,
    *,
    workspace_dir: str | None = None,
    settings_path: Path | str | None = None,
    retry_timeout_seconds: int = DEFAULT_RETRY_TIMEOUT_SECONDS,
    log: Callable[[str], None] = print,
) -> DownResult:
    """Permanently delete the caller's lab cluster and the lab folder (or Git folder); absent ones are skipped."""
    settings = load_settings(settings_path)
    w = connect(host, profile, retry_timeout_seconds)
    with ApiErrors(w.config.host):
        user = w.current_user.me().user_name
        result = DownResult(host=w.config.host)
        for cluster in _own_clusters(w, settings["cluster"]["cluster_name"], user):
            w.clusters.permanent_delete(cluster.cluster_id)
            result.deleted_clusters.append(cluster.cluster_id)
            log(f"deleted cluster {cluster.cluster_name} ({cluster.cluster_id})")
        folder = resolve_workspace_dir(workspace_dir or settings["workspace"]["dir"], user)
        status = _get_status(w, folder)
        if status is not None:
            repo = _git_folder(w, status)
            if repo is not None:
                w.repos.delete(repo_id=repo.id)
            else:
                w.workspace.delete(folder, recursive=True)
            result.deleted_folder = folder
            log(f"deleted {'Git folder' if repo is not None else 'folder'} {folder}")
    return result


def _own_clusters(w, name: str, user: str) -> list:
    # Only the caller's clusters: a colleague's cluster of the same name is not ours to reuse or delete.
    return [c for c in w.clusters.list() if c.cluster_name == name and c.creator_user_name == user]


def _ensure_cluster(w, settings: dict, user: str, wait: bool, result: UpResult, log) -> None:
    from databricks.sdk.service.compute import State

    name = settings["cluster"]["cluster_name"]
    existing = _own_clusters(w, name, user)
    if existing:
        cluster = existing[0]
        result.cluster_id, result.spark_version = cluster.cluster_id, cluster.spark_version
        result.cluster_state = cluster.state.value if cluster.state else None
        log(f"reusing cluster {name} ({cluster.cluster_id}, {result.cluster_state})")
        if cluster.state == State.TERMINATED:
            w.clusters.start(cluster.cluster_id)
            result.cluster_state = "PENDING"
            log(f"starting cluster {name}")
        elif cluster.state == State.TERMINATING and wait:
            w.clusters.wait_get_cluster_terminated(cluster.cluster_id, timeout=WAIT_TIMEOUT)
            w.clusters.start(cluster.cluster_id)
    else:
        spark_version = newest_runtime(w, settings["runtime"])
        created = w.clusters.create(**cluster_arguments(settings["cluster"], spark_version, user))
        result.cluster_id, result.spark_version, result.cluster_state = created.cluster_id, spark_version, "CREATED"
        log(f"created cluster {name} ({created.cluster_id}) with runtime {spark_version}")
    if wait:
        log(f"waiting for cluster {name} to run (up to {int(WAIT_TIMEOUT.total_seconds() // 60)} minutes)")
        running = w.clusters.wait_get_cluster_running(result.cluster_id, timeout=WAIT_TIMEOUT)
        result.cluster_state = running.state.value


def cluster_arguments(cluster: dict, spark_version: str, user: str) -> dict:
    """clusters.create arguments from the JSON's cluster object, checked against the SDK's ClusterSpec."""
    import dataclasses

    from databricks.sdk.service.compute import ClusterSpec

    known = {f.name for f in dataclasses.fields(ClusterSpec)}
    unknown = sorted(set(cluster) - known)
    if unknown:
        raise LabError(f"cluster.json: unknown cluster setting {unknown[0]!r}")
    body = {**cluster, "spark_version": spark_version, "single_user_name": user}
    spec = ClusterSpec.from_dict(body)
    arguments = {key: getattr(spec, key) for key in body}
    invalid = [key for key in body if body[key] is not None and arguments[key] is None]
    if invalid:
        raise LabError(f"cluster.json: invalid value {body[invalid[0]]!r} for cluster.{invalid[0]}")
    return arguments


def resolve_workspace_dir(template: str, user: str) -> str:
    folder = template.replace("{user}", user).rstrip("/")
    if not folder.startswith("/"):
        raise LabError(f"the workspace folder must be an absolute path such as /Users/{user}/penguin-lab, not {template!r}")
    return folder


def _get_status(w, path: str):
    from databricks.sdk.errors import NotFound

    try:
        return w.workspace.get_status(path)
    except NotFound:
        return None


def _git_folder(w, status):
    """The repo behind a workspace folder, or None: Git folders may show as REPO or as DIRECTORY."""
    from databricks.sdk.errors import NotFound

    if status.object_id is None:
        return None
    try:
        return w.repos.get(repo_id=status.object_id)
    except NotFound:
        return None


def _ensure_notebooks(w, workspace: dict, folder: str, git_url: str, source_root: Path, result: UpResult, log) -> None:
    from databricks.sdk.service.workspace import ImportFormat, Language

    result.workspace_dir = folder
    status = _get_status(w, folder)
    repo = _git_folder(w, status) if status is not None else None
    if repo is not None:
        result.notebooks = f"existing Git folder ({repo.url})"
        log(f"reusing Git folder {folder}")
        return
    if git_url:
        if status is not None:
            raise LabError(f"{folder} exists and is not a Git folder: run `penguin-lab databricks down` or pass --workspace-dir")
        w.workspace.mkdirs(folder.rsplit("/", 1)[0] or "/")  # a new user's home folder may not exist yet
        w.repos.create(url=git_url, provider=workspace["git_provider"], path=folder)
        result.notebooks = f"Git folder created from {git_url}"
        log(f"created Git folder {folder} from {git_url}")
        return

    uploads = files_to_import(workspace, source_root, folder)
    for directory in sorted({target.rsplit("/", 1)[0] for target, _, _ in uploads}):
        w.workspace.mkdirs(directory)
    for target, source, is_notebook in uploads:
        content = base64.b64encode(source.read_bytes()).decode("ascii")
        if is_notebook:
            w.workspace.import_(
                target, content=content, format=ImportFormat.SOURCE, language=Language.PYTHON, overwrite=True
            )
        else:
            w.workspace.import_(target, content=content, format=ImportFormat.AUTO, overwrite=True)
        result.imported.append(target)
    result.notebooks = f"imported {len(uploads)} files"
    log(f"imported {len(uploads)} files into {folder}")


def files_to_import(workspace: dict, source_root: Path, folder: str) -> list[tuple[str, Path, bool]]:
    """(workspace path, local file, is notebook) with the repository's layout kept under `folder`."""
    uploads = []
    for key, is_notebook in (("notebooks", True), ("files", False)):
        for pattern in workspace[key]:
            matches = sorted(p for p in source_root.glob(pattern) if p.is_file())
            if not matches:
                raise LabError(f"no file matches {pattern} under {source_root}: run from the repository's root")
            for source in matches:
                relative = source.relative_to(source_root).as_posix()
                # A notebook's workspace path has no extension, as the workspace UI shows it.
                target = f"{folder}/{relative[:-3] if is_notebook and relative.endswith('.py') else relative}"
                uploads.append((target, source, is_notebook))
    return uploads


# --- logging --------------------------------------------------------------------------------


def quiet_sdk_warnings() -> None:
    """The SDK warns when a best-effort probe fails (e.g. host metadata); a failure that matters
    reaches the user as one LabError line instead."""
    logging.getLogger("databricks.sdk").setLevel(logging.ERROR)
