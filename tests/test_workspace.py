"""`penguin-lab databricks up|down` against a small Databricks workspace served over local HTTP.

The workspace (FakeDatabricks, in fake_workspace.py) is a real HTTP server on 127.0.0.1 that plays
the REST endpoints the Databricks SDK calls and records each request; the SDK itself runs unmodified.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_workspace import LATEST_LTS_ML_CPU, SPARK_VERSIONS, clean_env, fake  # noqa: F401  (fixtures)
from hypothesis import given, settings
from hypothesis import strategies as st

from penguin_lab import workspace
from penguin_lab.errors import LabError

REPO_ROOT = Path(__file__).resolve().parent.parent
CLUSTER_JSON = REPO_ROOT / "databricks" / "cluster.json"


# ============================================================================================
# Fixtures
# ============================================================================================

NOTEBOOK_SOURCE = b"# Databricks notebook source\nprint('penguins')\n"


@pytest.fixture
def source_tree(tmp_path):
    """A checkout with the files the lab imports: notebooks, the package and the data."""
    root = tmp_path / "checkout"
    files = {
        "notebooks/01_prepare_data.py": NOTEBOOK_SOURCE,
        "notebooks/02_train_evaluate.py": NOTEBOOK_SOURCE,
        "penguin_lab/__init__.py": b'"""penguin-lab"""\n',
        "penguin_lab/model.py": b"import torch\n",
        "penguin_lab/distributed/__init__.py": b'"""distributed training"""\n',
        "data/penguins.csv": b"Island,CulmenLength,CulmenDepth,FlipperLength,BodyMass,Species\n0,39.1,18.7,181,3750,0\n",
        "README.md": b"not imported\n",
    }
    for relative, content in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(content)
    return root


def run_up(fake, source_tree, **options):
    options.setdefault("host", fake.url)
    return workspace.up(settings_path=CLUSTER_JSON, source_dir=source_tree, log=lambda line: None, **options)


def run_down(fake, **options):
    options.setdefault("host", fake.url)
    return workspace.down(settings_path=CLUSTER_JSON, log=lambda line: None, **options)


def lab_folder(fake):
    return f"/Users/{fake.user}/penguin-lab"


# ============================================================================================
# up: the cluster
# ============================================================================================


def test_up_creates_the_single_node_cluster_described_in_cluster_json(fake, source_tree):
    result = run_up(fake, source_tree)

    [create] = fake.calls("POST", "/api/2.1/clusters/create")
    body = create.body
    assert body["cluster_name"] == "penguin-lab"
    assert body["node_type_id"] == "Standard_D4ds_v5"
    assert body["num_workers"] == 0
    assert body["spark_conf"] == {"spark.databricks.cluster.profile": "singleNode", "spark.master": "local[*, 4]"}
    assert body["custom_tags"] == {"ResourceClass": "SingleNode"}
    assert body["autotermination_minutes"] == 20
    assert body["data_security_mode"] == "SINGLE_USER"
    assert body["single_user_name"] == fake.user
    assert body["spark_version"] == LATEST_LTS_ML_CPU
    # Nothing beyond the JSON's settings, the runtime and the user: the JSON is the whole truth.
    expected_keys = set(json.loads(CLUSTER_JSON.read_text())["cluster"]) | {"spark_version", "single_user_name"}
    assert set(body) == expected_keys
    assert (result.cluster_id, result.cluster_state, result.spark_version) == (
        next(iter(fake.clusters)),
        "CREATED",
        LATEST_LTS_ML_CPU,
    )


def test_second_up_creates_nothing_new(fake, source_tree):
    run_up(fake, source_tree)
    clusters_after_first, objects_after_first = dict(fake.clusters), set(fake.objects)

    second = run_up(fake, source_tree)

    assert len(fake.calls("POST", "/api/2.1/clusters/create")) == 1
    assert fake.calls("POST", "/api/2.0/repos") == []
    assert fake.clusters.keys() == clusters_after_first.keys()
    assert set(fake.objects) == objects_after_first
    assert second.cluster_state == "PENDING"  # found as the first run left it
    # The runtime is chosen only when a cluster is created.
    assert len(fake.calls("GET", "/api/2.1/clusters/spark-versions")) == 1


def test_up_starts_the_users_terminated_cluster_instead_of_creating_one(fake, source_tree):
    cluster_id = fake.add_cluster("penguin-lab", "TERMINATED")

    result = run_up(fake, source_tree)

    assert fake.calls("POST", "/api/2.1/clusters/create") == []
    assert [r.body for r in fake.calls("POST", "/api/2.1/clusters/start")] == [{"cluster_id": cluster_id}]
    assert (result.cluster_id, result.cluster_state) == (cluster_id, "PENDING")


def test_up_leaves_a_running_cluster_alone(fake, source_tree):
    cluster_id = fake.add_cluster("penguin-lab", "RUNNING")

    result = run_up(fake, source_tree)

    assert fake.calls("POST", "/api/2.1/clusters/create") == []
    assert fake.calls("POST", "/api/2.1/clusters/start") == []
    assert (result.cluster_id, result.cluster_state) == (cluster_id, "RUNNING")


def test_a_colleagues_cluster_of_the_same_name_is_neither_reused_nor_deleted(fake, source_tree):
    theirs = fake.add_cluster("penguin-lab", "RUNNING", creator="colleague@example.com")

    result = run_up(fake, source_tree)
    assert result.cluster_id != theirs
    assert len(fake.calls("POST", "/api/2.1/clusters/create")) == 1

    run_down(fake)
    assert list(fake.clusters) == [theirs]


def test_up_wait_polls_until_the_cluster_runs(fake, source_tree):
    result = run_up(fake, source_tree, wait=True)

    assert result.cluster_state == "RUNNING"
    assert fake.calls("GET", "/api/2.1/clusters/get")[-1].query == {"cluster_id": result.cluster_id}


def test_up_wait_reports_why_the_cluster_did_not_start(fake, source_tree):
    fake.start_failure = "Azure quota exceeded for Standard_D4ds_v5 in eastus"

    with pytest.raises(LabError) as raised:
        run_up(fake, source_tree, wait=True)

    assert "Azure quota exceeded" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_skip_cluster_imports_notebooks_only(fake, source_tree):
    run_up(fake, source_tree, skip_cluster=True)

    assert fake.calls("GET", "/api/2.1/clusters/list") == []
    assert fake.calls("POST", "/api/2.1/clusters/create") == []
    assert fake.calls("POST", "/api/2.0/workspace/import") != []


# ============================================================================================
# up: the notebooks
# ============================================================================================


def test_up_imports_notebooks_package_and_data_with_the_repository_layout(fake, source_tree):
    result = run_up(fake, source_tree)
    folder = lab_folder(fake)

    imports = {r.body["path"]: r.body for r in fake.calls("POST", "/api/2.0/workspace/import")}
    assert set(imports) == {
        f"{folder}/notebooks/01_prepare_data",
        f"{folder}/notebooks/02_train_evaluate",
        f"{folder}/penguin_lab/__init__.py",
        f"{folder}/penguin_lab/model.py",
        f"{folder}/penguin_lab/distributed/__init__.py",  # notebooks 4 and 5 import the subpackage
        f"{folder}/data/penguins.csv",
    }
    for path, body in imports.items():
        if "/notebooks/" in path:
            assert (body["format"], body["language"]) == ("SOURCE", "PYTHON")
        else:
            assert body["format"] == "AUTO" and "language" not in body
        assert body["overwrite"] is True
    assert base64.b64decode(imports[f"{folder}/data/penguins.csv"]["content"]) == (
        source_tree / "data/penguins.csv"
    ).read_bytes()

    # Folders first, so that every import has its parent.
    made = {r.body["path"] for r in fake.calls("POST", "/api/2.0/workspace/mkdirs")}
    assert made == {f"{folder}/notebooks", f"{folder}/penguin_lab", f"{folder}/penguin_lab/distributed", f"{folder}/data"}
    assert fake.objects[f"{folder}/notebooks/01_prepare_data"]["object_type"] == "NOTEBOOK"
    assert fake.objects[f"{folder}/penguin_lab/model.py"]["object_type"] == "FILE"
    assert sorted(result.imported) == sorted(imports)


def test_workspace_dir_option_wins_over_cluster_json(fake, source_tree):
    result = run_up(fake, source_tree, workspace_dir="/Shared/penguins-{user}/")

    assert result.workspace_dir == f"/Shared/penguins-{fake.user}"
    assert all(r.body["path"].startswith(result.workspace_dir + "/") for r in fake.calls("POST", "/api/2.0/workspace/import"))


def test_up_with_git_url_creates_a_git_folder_then_reuses_it(fake, source_tree):
    url = "https://github.com/example/penguin-lab.git"
    run_up(fake, source_tree, git_url=url)

    [create] = fake.calls("POST", "/api/2.0/repos")
    assert create.body == {"url": url, "provider": "gitHub", "path": lab_folder(fake)}
    assert fake.calls("POST", "/api/2.0/workspace/import") == []

    again = run_up(fake, source_tree, git_url=url)
    without_url = run_up(fake, source_tree)

    assert len(fake.calls("POST", "/api/2.0/repos")) == 1
    assert fake.calls("POST", "/api/2.0/workspace/import") == []  # nothing copied over a Git folder
    assert again.notebooks.startswith("existing Git folder") and without_url.notebooks.startswith("existing Git folder")


def test_up_with_git_url_refuses_a_folder_that_is_not_a_git_folder(fake, source_tree):
    run_up(fake, source_tree)

    with pytest.raises(LabError, match="not a Git folder"):
        run_up(fake, source_tree, git_url="https://github.com/example/penguin-lab.git")
    assert fake.calls("POST", "/api/2.0/repos") == []


def test_a_pattern_that_matches_nothing_is_a_lab_error(fake, source_tree):
    (source_tree / "data/penguins.csv").unlink()

    with pytest.raises(LabError, match="data/penguins.csv"):
        run_up(fake, source_tree, skip_cluster=True)


# ============================================================================================
# down
# ============================================================================================


def test_down_deletes_the_cluster_and_the_folder_then_has_nothing_to_do(fake, source_tree):
    created = run_up(fake, source_tree)

    result = run_down(fake)

    assert [r.body for r in fake.calls("POST", "/api/2.1/clusters/permanent-delete")] == [
        {"cluster_id": created.cluster_id}
    ]
    assert [r.body for r in fake.calls("POST", "/api/2.0/workspace/delete")] == [
        {"path": lab_folder(fake), "recursive": True}
    ]
    assert fake.clusters == {}
    assert not any(path.startswith(lab_folder(fake)) for path in fake.objects)
    assert (result.deleted_clusters, result.deleted_folder) == ([created.cluster_id], lab_folder(fake))

    start = len(fake.requests)
    second = run_down(fake)
    deletions = [r for r in fake.calls(since=start) if r.method != "GET"]
    assert deletions == []
    assert (second.deleted_clusters, second.deleted_folder) == ([], None)


def test_down_removes_a_git_folder_through_the_repos_api(fake, source_tree):
    run_up(fake, source_tree, git_url="https://github.com/example/penguin-lab.git", skip_cluster=True)
    [repo_id] = fake.repos

    run_down(fake)

    assert [r.path for r in fake.calls("DELETE")] == [f"/api/2.0/repos/{repo_id}"]
    assert fake.calls("POST", "/api/2.0/workspace/delete") == []
    assert fake.repos == {} and lab_folder(fake) not in fake.objects


# ============================================================================================
# The endpoints, shared with setup.ps1
# ============================================================================================


def test_up_and_down_call_exactly_the_endpoints_listed_for_setup_ps1(fake, source_tree):
    def endpoints_of(action):
        start = len(fake.requests)
        action()
        return fake.endpoints(since=start)

    up_calls = set()
    up_calls |= endpoints_of(lambda: run_up(fake, source_tree))  # creates cluster, imports files
    up_calls |= endpoints_of(lambda: run_up(fake, source_tree))  # reuses both
    fake.clusters[next(iter(fake.clusters))]["state"] = "TERMINATED"
    up_calls |= endpoints_of(lambda: run_up(fake, source_tree))  # starts the cluster
    down_calls = endpoints_of(lambda: run_down(fake))
    up_calls |= endpoints_of(lambda: run_up(fake, source_tree, git_url="https://github.com/example/p.git"))
    down_calls |= endpoints_of(lambda: run_down(fake))
    wait_calls = endpoints_of(lambda: run_up(fake, source_tree, wait=True))

    assert up_calls == workspace.UP_ENDPOINTS
    assert down_calls == workspace.DOWN_ENDPOINTS
    assert wait_calls - workspace.UP_ENDPOINTS == workspace.WAIT_ENDPOINTS


# ============================================================================================
# Credentials and errors
# ============================================================================================


def test_credentials_come_from_the_environment(fake, source_tree, monkeypatch):
    monkeypatch.setenv("DATABRICKS_HOST", fake.url)

    result = workspace.up(settings_path=CLUSTER_JSON, source_dir=source_tree, log=lambda line: None)

    assert result.host == fake.url
    assert fake.calls("POST", "/api/2.1/clusters/create")


def test_credentials_come_from_a_databrickscfg_profile(fake, source_tree, clean_env, monkeypatch):
    monkeypatch.delenv("DATABRICKS_TOKEN")
    (clean_env / ".databrickscfg").write_text(
        f"[DEFAULT]\nhost = http://127.0.0.1:9\ntoken = wrong\n\n[lab]\nhost = {fake.url}\ntoken = {fake.token}\n"
    )

    result = workspace.up(profile="lab", settings_path=CLUSTER_JSON, source_dir=source_tree, log=lambda line: None)

    assert result.host == fake.url
    assert fake.calls("POST", "/api/2.1/clusters/create")


def test_a_rejected_token_is_a_one_line_lab_error(fake, source_tree, monkeypatch):
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-expired")

    with pytest.raises(LabError) as raised:
        run_up(fake, source_tree)

    message = str(raised.value)
    assert "401" in message and "\n" not in message
    assert fake.calls("POST") == []


def test_permission_denied_is_a_one_line_lab_error(fake, source_tree):
    fake.forbidden.add(("POST", "/api/2.1/clusters/create"))

    with pytest.raises(LabError) as raised:
        run_up(fake, source_tree)

    assert str(raised.value).startswith("permission denied")
    assert "\n" not in str(raised.value)


def test_missing_credentials_are_a_one_line_lab_error(clean_env, source_tree):
    with pytest.raises(LabError) as raised:
        workspace.up(settings_path=CLUSTER_JSON, source_dir=source_tree, log=lambda line: None)

    assert "DATABRICKS_HOST" in str(raised.value) and "\n" not in str(raised.value)


def test_an_unknown_profile_is_a_lab_error(clean_env, source_tree):
    (clean_env / ".databrickscfg").write_text("[DEFAULT]\nhost = http://127.0.0.1:9\ntoken = t\n")

    with pytest.raises(LabError, match="nosuch"):
        workspace.up(profile="nosuch", settings_path=CLUSTER_JSON, source_dir=source_tree, log=lambda line: None)


def test_an_unreachable_host_is_a_lab_error_without_long_retries(clean_env, source_tree, monkeypatch):
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-test-token")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]

    started = time.monotonic()
    with pytest.raises(LabError) as raised:
        workspace.up(
            host=f"http://127.0.0.1:{closed_port}",
            settings_path=CLUSTER_JSON,
            source_dir=source_tree,
            retry_timeout_seconds=1,
            log=lambda line: None,
        )

    assert str(raised.value).startswith("cannot reach") and "\n" not in str(raised.value)
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    "change, complaint",
    [
        (lambda text: text.replace('"num_workers": 0,', '"num_workers": 0'), "not valid JSON"),
        (lambda text: text.replace('"node_type_id"', '"node_type"'), "cluster.node_type_id"),
        (lambda text: text.replace('"ml": true', '"ml": "yes"'), "runtime.ml"),
        (lambda text: text.replace('"max_version": null', '"max_version": "latest"'), "runtime.max_version"),
        (lambda text: text.replace('"dir": "/Users', '"dir": "Users'), "workspace.dir"),
    ],
)
def test_an_invalid_cluster_json_is_a_lab_error_naming_the_problem(tmp_path, change, complaint):
    broken = tmp_path / "cluster.json"
    broken.write_text(change(CLUSTER_JSON.read_text()))

    with pytest.raises(LabError, match=re.escape(complaint)):
        workspace.load_settings(broken)


@pytest.mark.parametrize(
    "setting, complaint",
    [
        ({"num_worker": 1}, "unknown cluster setting 'num_worker'"),
        ({"data_security_mode": "EVERYONE"}, "invalid value 'EVERYONE' for cluster.data_security_mode"),
    ],
)
def test_cluster_settings_the_api_would_not_take_are_caught_before_sending(
    fake, source_tree, tmp_path, setting, complaint
):
    settings_json = json.loads(CLUSTER_JSON.read_text())
    settings_json["cluster"].update(setting)
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(settings_json))

    with pytest.raises(LabError, match=re.escape(complaint)):
        workspace.up(host=fake.url, settings_path=path, source_dir=source_tree, log=lambda line: None)
    assert fake.calls("POST", "/api/2.1/clusters/create") == []


def test_the_package_imports_without_the_databricks_sdk():
    code = "import sys; sys.modules['databricks'] = None; import penguin_lab.workspace; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr


# ============================================================================================
# The command line
# ============================================================================================


def _parser():
    from penguin_lab.cli import build_parser

    return build_parser()


def test_register_adds_databricks_up_and_down_with_their_options():
    args = _parser().parse_args(
        ["databricks", "up", "--host", "https://adb-1.2.azuredatabricks.net", "--profile", "lab",
         "--git-url", "https://github.com/example/p.git", "--workspace-dir", "/Shared/lab", "--wait"]
    )
    assert (args.host, args.profile, args.git_url, args.workspace_dir, args.wait) == (
        "https://adb-1.2.azuredatabricks.net", "lab", "https://github.com/example/p.git", "/Shared/lab", True,
    )
    assert callable(args.func)

    assert _parser().parse_args(["databricks", "up", "--skip-cluster"]).skip_cluster is True

    down_args = _parser().parse_args(["databricks", "down", "--profile", "lab"])
    assert down_args.func is not args.func and down_args.profile == "lab"
    with pytest.raises(SystemExit):
        _parser().parse_args(["databricks"])


def test_cli_up_then_down_through_args_func(fake, source_tree, monkeypatch, capsys):
    # The command line imports from the checkout it runs in: here, the test's source tree.
    monkeypatch.setattr(workspace, "repository_root", lambda: _checkout_with_settings(source_tree))

    up_args = _parser().parse_args(["databricks", "up", "--host", fake.url])
    assert up_args.func(up_args) == 0
    shown = capsys.readouterr().out
    assert f"workspace: {fake.url}" in shown
    assert "cluster:   penguin-lab (" in shown and LATEST_LTS_ML_CPU in shown
    assert f"notebooks: {lab_folder(fake)} (imported 6 files)" in shown

    down_args = _parser().parse_args(["databricks", "down", "--host", fake.url])
    assert down_args.func(down_args) == 0
    assert f"folder deleted:   {lab_folder(fake)}" in capsys.readouterr().out
    assert fake.clusters == {}


def _checkout_with_settings(source_tree):
    (source_tree / "databricks").mkdir(exist_ok=True)
    (source_tree / "databricks" / "cluster.json").write_text(CLUSTER_JSON.read_text())
    return source_tree


# ============================================================================================
# Choosing the runtime
# ============================================================================================

AZURE_VERSIONS = SPARK_VERSIONS + [
    ("16.4.x-cpu-ml-scala2.13", "16.4 LTS ML (includes Apache Spark 3.5.2, Scala 2.13)"),
    ("16.4.x-aarch64-cpu-ml-scala2.12", "16.4 LTS ML aarch64 (includes Apache Spark 3.5.2, Scala 2.12)"),
    ("15.4.x-photon-scala2.12", "15.4 LTS Photon (includes Apache Spark 3.5.0, Scala 2.12)"),
    ("14.3.x-cpu-ml-scala2.12", "14.3 LTS ML (includes Apache Spark 3.5.0, Scala 2.12)"),
    ("10.4.x-cpu-ml-scala2.12", "10.4 LTS ML (includes Apache Spark 3.2.1, Scala 2.12)"),
    ("9.1.x-cpu-ml-scala2.12", "9.1 LTS ML (includes Apache Spark 3.1.2, Scala 2.12)"),
    ("custom:custom-local__18.x-snapshot-cpu-ml-scala2.13__unknown__head__7a1b2c3__format-2.lz4", "18.x Snapshot ML"),
]


@pytest.mark.parametrize(
    "rule, expected",
    [
        ({}, "17.3.x-cpu-ml-scala2.13"),  # the newest LTS ML CPU: not 18.0 (no LTS), 18.1 (beta), GPU or photon
        ({"gpu": True}, "17.3.x-gpu-ml-scala2.13"),
        ({"lts": False}, "18.0.x-cpu-ml-scala2.13"),  # newer, not beta
        ({"ml": False}, "17.3.x-scala2.13"),
        ({"max_version": "15.4"}, "15.4.x-cpu-ml-scala2.12"),  # for the Horovod notebook
        ({"max_version": "16.4"}, "16.4.x-cpu-ml-scala2.13"),  # same version: the greater key
        ({"max_version": "12.2"}, "10.4.x-cpu-ml-scala2.12"),  # 10.4 is newer than 9.1, by number
    ],
)
def test_choose_spark_version_picks_the_newest_that_fits(rule, expected):
    assert workspace.choose_spark_version(AZURE_VERSIONS, **rule) == expected


def test_choose_spark_version_honours_the_lowest_version():
    old_only = [v for v in AZURE_VERSIONS if v[0].startswith(("9.", "10."))]

    assert workspace.choose_spark_version(old_only) == "10.4.x-cpu-ml-scala2.12"
    with pytest.raises(LabError, match="no LTS ML CPU Databricks runtime between 15.4 and any"):
        workspace.choose_spark_version(old_only, min_version="15.4")


def test_choose_spark_version_without_any_fit_is_a_lab_error():
    with pytest.raises(LabError, match="no LTS ML GPU"):
        workspace.choose_spark_version([v for v in AZURE_VERSIONS if "-gpu-" not in v[0]], gpu=True)


def test_the_rule_in_cluster_json_is_the_one_applied():
    rule = json.loads(CLUSTER_JSON.read_text())["runtime"]
    assert rule == {"ml": True, "lts": True, "gpu": False, "min_version": "15.4", "max_version": None}
    assert workspace.choose_spark_version(AZURE_VERSIONS, **rule) == LATEST_LTS_ML_CPU


@settings(max_examples=60, deadline=None)
@given(st.permutations(AZURE_VERSIONS), st.booleans(), st.booleans(), st.booleans())
def test_choose_spark_version_does_not_depend_on_the_listing_order(versions, ml, lts, gpu):
    try:
        expected = workspace.choose_spark_version(AZURE_VERSIONS, ml=ml, lts=lts, gpu=gpu)
    except LabError:
        with pytest.raises(LabError):
            workspace.choose_spark_version(versions, ml=ml, lts=lts, gpu=gpu)
        return
    chosen = workspace.choose_spark_version(versions, ml=ml, lts=lts, gpu=gpu)
    assert chosen == expected
    assert ("-ml-" in chosen) == ml and ("-gpu-" in chosen) == gpu
    assert "photon" not in chosen and "aarch64" not in chosen
