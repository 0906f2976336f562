"""A small Databricks workspace over local HTTP, for the tests of `databricks up|down` and `submit`.

FakeDatabricks is a real HTTP server on 127.0.0.1 that plays the REST endpoints the Databricks SDK
calls and records each request; the SDK itself runs unmodified against it. Besides clusters,
workspace files and Git folders, it plays one-time job runs (runs/submit, get, get-output, cancel),
which move through their states one step each time they are read, the Files API for Unity Catalog
volumes, and the two MLflow endpoints that read a run's metrics.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from fake_jobs import ApiError, JobsFilesAndMlflow

# ============================================================================================
# A small Databricks workspace over HTTP
# ============================================================================================

# As clusters/spark-versions lists them on Azure (a subset, in the service's unsorted order).
SPARK_VERSIONS = [
    ("15.4.x-cpu-ml-scala2.12", "15.4 LTS ML (includes Apache Spark 3.5.0, Scala 2.12)"),
    ("17.3.x-gpu-ml-scala2.13", "17.3 LTS ML (includes Apache Spark 4.0.0, GPU, Scala 2.13)"),
    ("18.0.x-cpu-ml-scala2.13", "18.0 ML (includes Apache Spark 4.1.0, Scala 2.13)"),
    ("17.3.x-scala2.13", "17.3 LTS (includes Apache Spark 4.0.0, Scala 2.13)"),
    ("18.1.x-cpu-ml-scala2.13", "18.1 ML (Beta) (includes Apache Spark 4.1.0, Scala 2.13)"),
    ("17.3.x-cpu-ml-scala2.13", "17.3 LTS ML (includes Apache Spark 4.0.0, Scala 2.13)"),
    ("17.3.x-photon-scala2.13", "17.3 LTS Photon (includes Apache Spark 4.0.0, Scala 2.13)"),
    ("16.4.x-cpu-ml-scala2.12", "16.4 LTS ML (includes Apache Spark 3.5.2, Scala 2.12)"),
    ("15.4.x-gpu-ml-scala2.12", "15.4 LTS ML (includes Apache Spark 3.5.0, GPU, Scala 2.12)"),
    ("13.3.x-cpu-ml-scala2.12", "13.3 LTS ML (includes Apache Spark 3.4.1, Scala 2.12)"),
    ("apache-spark-2.4.x-scala2.11", "Light 2.4 (includes Apache Spark 2.4, Scala 2.11)"),
]
LATEST_LTS_ML_CPU = "17.3.x-cpu-ml-scala2.13"


@dataclass
class Request:
    method: str
    path: str
    query: dict
    body: dict | None
    status: int = 0
    raw: bytes = b""  # a request body that is not JSON (a file sent to the Files API)


@dataclass
class FakeDatabricks(JobsFilesAndMlflow):
    user: str = "learner@example.com"
    token: str = "dapi-test-token"
    spark_versions: list = field(default_factory=lambda: list(SPARK_VERSIONS))
    clusters: dict = field(default_factory=dict)  # cluster_id -> details
    objects: dict = field(default_factory=dict)  # workspace path -> object info (+ "content" for files)
    repos: dict = field(default_factory=dict)  # repo id -> repo info
    forbidden: set = field(default_factory=set)  # (method, path) answered 403
    start_failure: str | None = None  # when set, a starting cluster ends TERMINATED with this message
    requests: list = field(default_factory=list)
    unknown: list = field(default_factory=list)  # requests to endpoints this fake does not play
    # One-time job runs: how a submitted run ends, and what its tasks print.
    run_outcome: str = "SUCCESS"  # SUCCESS, FAILED (a task fails), CLUSTER_FAILED, or HANG (runs until cancelled)
    failing_task: str | None = None  # the task that fails with FAILED (default: the last one)
    task_logs: dict = field(default_factory=dict)  # task_key -> its logs (a notebook's: its exit value)
    task_error: str = "SystemExit: 2"
    cluster_failure: str = (
        "Cluster 0101-000000-jobcluster was terminated. Reason: CLOUD_PROVIDER_LAUNCH_FAILURE (CLOUD_FAILURE). "
        "Parameters: azure_error_code:QuotaExceeded, azure_error_message:Operation could not be completed as it "
        "results in exceeding approved standardDDSv5Family Cores quota."
    )
    runs: dict = field(default_factory=dict)  # run id -> the run as runs/get shows it
    cancelled: list = field(default_factory=list)  # run ids cancelled through runs/cancel
    volume_files: dict = field(default_factory=dict)  # /Volumes/... path -> bytes (Files API)
    mlflow_runs: dict = field(default_factory=dict)  # MLflow run id -> {"experiment_id", "metrics", "tags"}
    # task_key -> metrics: a notebook task that succeeds logs an MLflow run with these, as on Databricks: in the
    # notebook's experiment (whose id is the notebook's), tagged with the task's run id.
    notebook_metrics: dict = field(default_factory=dict)
    url: str = ""

    def __post_init__(self):
        self._lock = threading.Lock()
        self._next_id = 1000
        for path in ("/", "/Users", f"/Users/{self.user}", "/Shared"):
            self._put(path, "DIRECTORY")

    # --- what tests use -----------------------------------------------------------------

    def calls(self, method: str | None = None, path: str | None = None, since: int = 0) -> list[Request]:
        """Recorded API requests (the SDK's own config probe left out), optionally filtered."""
        return [
            r
            for r in self.requests[since:]
            if r.path.startswith("/api/")
            and (method is None or r.method == method)
            and (path is None or r.path == path)
        ]

    def endpoints(self, since: int = 0) -> set[tuple[str, str]]:
        """The (method, path) pairs called, with ids in paths written as {repo_id}."""
        return {
            (r.method, re.sub(r"^/api/2\.0/repos/\d+$", "/api/2.0/repos/{repo_id}", r.path))
            for r in self.calls(since=since)
        }

    def add_cluster(self, name: str, state: str, creator: str | None = None) -> str:
        cluster_id = f"0101-000000-{self._new_id()}"
        self.clusters[cluster_id] = {
            "cluster_id": cluster_id,
            "cluster_name": name,
            "state": state,
            "creator_user_name": creator or self.user,
            "spark_version": "16.4.x-cpu-ml-scala2.12",
        }
        return cluster_id

    # --- the workspace ------------------------------------------------------------------

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _put(self, path: str, object_type: str, **extra) -> dict:
        info = {"path": path, "object_type": object_type, "object_id": self._new_id(), **extra}
        self.objects[path] = info
        return info

    @staticmethod
    def _parent(path: str) -> str:
        return path.rsplit("/", 1)[0] or "/"

    def _require_parent(self, path: str) -> None:
        parent = self.objects.get(self._parent(path))
        if parent is None or parent["object_type"] not in ("DIRECTORY", "REPO"):
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"The parent folder ({self._parent(path)}) does not exist.")

    def _cluster(self, cluster_id: str) -> dict:
        if cluster_id not in self.clusters:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", f"Cluster {cluster_id} does not exist")
        return self.clusters[cluster_id]

    def handle(self, method: str, path: str, query: dict, body: dict | None, authorization: str | None,
               raw: bytes = b""):
        if path == "/.well-known/databricks-config":
            raise ApiError(404, "NOT_FOUND", "No host metadata here.")
        if authorization != f"Bearer {self.token}":
            raise ApiError(401, "UNAUTHENTICATED", "Invalid access token.")
        if (method, path) in self.forbidden:
            raise ApiError(403, "PERMISSION_DENIED", "You are not authorized to perform this operation.")
        body = body or {}
        route = (method, path)

        if route == ("GET", "/api/2.0/preview/scim/v2/Me"):
            return {"id": "4242", "userName": self.user, "active": True}

        if route == ("GET", "/api/2.1/clusters/spark-versions"):
            return {"versions": [{"key": key, "name": name} for key, name in self.spark_versions]}
        if route == ("GET", "/api/2.1/clusters/list"):
            return {"clusters": list(self.clusters.values())}
        if route == ("POST", "/api/2.1/clusters/create"):
            if not body.get("spark_version"):
                raise ApiError(400, "INVALID_PARAMETER_VALUE", "Missing required field: spark_version")
            cluster_id = f"0101-000000-{self._new_id()}"
            self.clusters[cluster_id] = {
                **body,
                "cluster_id": cluster_id,
                "state": "PENDING",
                "creator_user_name": self.user,
            }
            return {"cluster_id": cluster_id}
        if route == ("POST", "/api/2.1/clusters/start"):
            cluster = self._cluster(body.get("cluster_id"))
            if cluster["state"] != "TERMINATED":
                raise ApiError(400, "INVALID_STATE", f"Cluster {cluster['cluster_id']} is in unexpected state {cluster['state']}.")
            cluster["state"] = "PENDING"
            return {}
        if route == ("GET", "/api/2.1/clusters/get"):
            cluster = self._cluster(query.get("cluster_id"))
            if cluster["state"] == "PENDING":  # a started cluster is running the next time anyone looks
                if self.start_failure:
                    cluster.update(state="TERMINATED", state_message=self.start_failure)
                else:
                    cluster["state"] = "RUNNING"
            return cluster
        if route == ("POST", "/api/2.1/clusters/delete"):
            self._cluster(body.get("cluster_id"))["state"] = "TERMINATED"
            return {}
        if route == ("POST", "/api/2.1/clusters/permanent-delete"):
            self._cluster(body.get("cluster_id"))
            del self.clusters[body["cluster_id"]]
            return {}

        if route == ("GET", "/api/2.0/workspace/get-status"):
            info = self.objects.get(query.get("path", "").rstrip("/") or "/")
            if info is None:
                raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Path ({query.get('path')}) doesn't exist.")
            return {k: v for k, v in info.items() if k != "content"}
        if route == ("POST", "/api/2.0/workspace/mkdirs"):
            parts = body["path"].strip("/").split("/")
            for depth in range(1, len(parts) + 1):
                path = "/" + "/".join(parts[:depth])
                existing = self.objects.get(path)
                if existing is None:
                    self._put(path, "DIRECTORY")
                elif existing["object_type"] not in ("DIRECTORY", "REPO"):
                    raise ApiError(400, "RESOURCE_ALREADY_EXISTS", f"Path ({path}) already exists and is not a folder.")
            return {}
        if route == ("POST", "/api/2.0/workspace/import"):
            return self._import(body)
        if route == ("POST", "/api/2.0/workspace/delete"):
            path = body["path"].rstrip("/")
            if path not in self.objects:
                raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Path ({path}) doesn't exist.")
            children = [p for p in self.objects if p.startswith(path + "/")]
            if children and not body.get("recursive"):
                raise ApiError(400, "DIRECTORY_NOT_EMPTY", f"Folder ({path}) is not empty.")
            for doomed in [path, *children]:
                del self.objects[doomed]
            return {}

        if route == ("POST", "/api/2.0/repos"):
            path = body.get("path", "")
            if path in self.objects:
                raise ApiError(400, "RESOURCE_ALREADY_EXISTS", f"Path ({path}) already exists.")
            self._require_parent(path)
            info = self._put(path, "REPO")
            repo = {"id": info["object_id"], "path": path, "url": body["url"], "provider": body["provider"], "branch": "main"}
            self.repos[repo["id"]] = repo
            return repo
        repo_route = re.fullmatch(r"/api/2\.0/repos/(\d+)", path)
        if repo_route and method in ("GET", "DELETE"):
            repo = self.repos.get(int(repo_route[1]))
            if repo is None:
                raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Repo {repo_route[1]} does not exist.")
            if method == "DELETE":
                del self.repos[repo["id"]]
                for doomed in [p for p in self.objects if p == repo["path"] or p.startswith(repo["path"] + "/")]:
                    del self.objects[doomed]
                return {}
            return repo

        answer = self._handle_jobs(route, query, body)
        if answer is None:
            answer = self._handle_files_and_mlflow(method, path, query, body, raw)
        if answer is not None:
            return answer
        self.unknown.append((method, path))
        raise ApiError(404, "ENDPOINT_NOT_FOUND", f"No API found for '{method} {path}'")

    def _import(self, body: dict) -> dict:
        path, form = body["path"], body.get("format", "SOURCE")
        content = base64.b64decode(body.get("content", ""))
        if form == "AUTO" and path.endswith(".py") and content.startswith(b"# Databricks notebook source"):
            path, object_type = path[:-3], "NOTEBOOK"  # AUTO makes a notebook of a notebook source file
        elif form == "AUTO":
            object_type = "FILE"
        elif form == "SOURCE" and body.get("language"):
            object_type = "NOTEBOOK"
        else:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "The language field is required to import a SOURCE notebook.")
        self._require_parent(path)
        if path in self.objects and not body.get("overwrite"):
            raise ApiError(400, "RESOURCE_ALREADY_EXISTS", f"Path ({path}) already exists.")
        extra = {"language": body["language"]} if object_type == "NOTEBOOK" else {}
        self._put(path, object_type, content=content, **extra)
        return {}

    # --- HTTP ---------------------------------------------------------------------------

    def serve(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:  # a file's bytes, as the Files API receives them
                    body = None
                request = Request(self.command, parts.path, query, body, raw=raw if body is None else b"")
                with fake._lock:
                    fake.requests.append(request)
                    try:
                        status, payload = 200, fake.handle(
                            self.command, parts.path, query, body, self.headers.get("Authorization"), raw
                        )
                    except ApiError as error:
                        status, payload = error.status, {"error_code": error.error_code, "message": error.message}
                request.status = status
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = do_HEAD = _answer

            def log_message(self, *args):  # keep test output quiet
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        return server




# ============================================================================================
# Fixtures
# ============================================================================================


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No Databricks or cloud settings from this machine: a fresh HOME and no DATABRICKS_* variables."""
    for name in list(os.environ):
        if name.startswith(("DATABRICKS_", "ARM_", "AZURE_", "GOOGLE_")):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USERPROFILE", str(home))
    return home


@pytest.fixture
def fake(clean_env, monkeypatch):
    workspace_server = FakeDatabricks()
    server = workspace_server.serve()
    monkeypatch.setenv("DATABRICKS_TOKEN", workspace_server.token)
    yield workspace_server
    server.shutdown()
    server.server_close()
    assert workspace_server.unknown == [], "the code called endpoints this fake does not play"

