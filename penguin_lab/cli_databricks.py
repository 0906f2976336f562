"""The Databricks commands: `penguin-lab databricks up|down` and `penguin-lab submit`."""

from __future__ import annotations

from .arguments import positive_float, positive_int, progress_line, seed_int
from .config import TrainConfig


def _add_connection_arguments(parser) -> None:
    parser.add_argument("--host", metavar="URL", help="workspace URL, e.g. https://adb-123.4.azuredatabricks.net")
    parser.add_argument("--profile", metavar="NAME", help="profile in ~/.databrickscfg")


def add_databricks_commands(commands) -> None:
    parser = commands.add_parser(
        "databricks",
        help="create or remove the lab cluster and notebooks in an existing Databricks workspace",
        description="Create or remove the lab cluster and notebooks in a Databricks workspace you already have. "
        "Credentials come from --host/--profile, DATABRICKS_HOST and DATABRICKS_TOKEN, or ~/.databrickscfg.")
    actions = parser.add_subparsers(dest="databricks_action", metavar="{up,down}", required=True)
    up = actions.add_parser("up", help="create or reuse the cluster and import the notebooks")
    down = actions.add_parser("down", help="permanently delete the cluster and the imported folder")
    for action in (up, down):
        _add_connection_arguments(action)
        action.add_argument("--workspace-dir", metavar="PATH",
                            help="workspace folder for the notebooks (default from cluster.json)")
    up.add_argument("--git-url", metavar="URL", help="create a Git folder of this repository instead of importing files")
    up.add_argument("--wait", action="store_true", help="wait until the cluster runs")
    up.add_argument("--skip-cluster", action="store_true", help="only import the notebooks")
    up.set_defaults(func=cmd_databricks_up)
    down.set_defaults(func=cmd_databricks_down)


def cmd_databricks_up(args) -> int:
    from . import workspace

    workspace.quiet_sdk_warnings()
    result = workspace.up(host=args.host, profile=args.profile, git_url=args.git_url,
                          workspace_dir=args.workspace_dir, wait=args.wait, skip_cluster=args.skip_cluster,
                          log=progress_line)
    print(f"workspace: {result.host}")
    if result.cluster_id:
        print(f"cluster:   {result.cluster_name} ({result.cluster_id}, {result.cluster_state}, {result.spark_version})")
    else:
        print("cluster:   skipped")
    print(f"notebooks: {result.workspace_dir} ({result.notebooks})")
    return 0


def cmd_databricks_down(args) -> int:
    from . import workspace

    workspace.quiet_sdk_warnings()
    result = workspace.down(host=args.host, profile=args.profile, workspace_dir=args.workspace_dir, log=progress_line)
    print(f"workspace: {result.host}")
    print(f"clusters deleted: {', '.join(result.deleted_clusters) or 'none'}")
    print(f"folder deleted:   {result.deleted_folder or 'none'}")
    return 0


def add_submit_command(commands) -> None:
    from .distributed import ENGINES

    parser = commands.add_parser(
        "submit", help="run the lab on a new Databricks job cluster and wait for its result",
        description="Build this project as a wheel, upload it, and run `penguin-lab run` (or `distributed`, or the "
        "notebooks) as a one-time run on a job cluster made from databricks/cluster.json. Prints the run's page, "
        "its states and its test accuracy. Credentials: --host/--profile, DATABRICKS_HOST and DATABRICKS_TOKEN, "
        "~/.databrickscfg or an Azure CLI login.")
    _add_connection_arguments(parser)
    parser.add_argument("--notebooks", action="store_true",
                        help="run the notebooks as a chain of tasks (01, 02, 03, then 05, or 04 with --engine horovod)")
    parser.add_argument("--epochs", type=positive_int, default=TrainConfig.epochs)
    parser.add_argument("--seed", type=seed_int, default=TrainConfig.seed)
    parser.add_argument("--engine", choices=ENGINES, help="run `penguin-lab distributed` with this engine")
    parser.add_argument("--np", type=positive_int, help="number of processes with --engine (default 2)")
    parser.add_argument("--volume", metavar="PATH",
                        help="upload the wheel to this Unity Catalog volume (/Volumes/<catalog>/<schema>/<volume>) "
                             "instead of the workspace folder")
    parser.add_argument("--no-wait", action="store_true", help="return once the run is submitted")
    parser.add_argument("--dry-run", action="store_true",
                        help="print every request's JSON body and send nothing (needs no credentials)")
    parser.add_argument("--poll-seconds", type=positive_float, default=10.0, help="seconds between status checks")
    parser.set_defaults(func=cmd_submit)


def cmd_submit(args) -> int:
    from . import submit, workspace

    workspace.quiet_sdk_warnings()
    options = submit.SubmitOptions(epochs=args.epochs, seed=args.seed, engine=args.engine, np=args.np,
                                   notebooks=args.notebooks, volume=args.volume)
    say = lambda line: print(line, flush=True)  # noqa: E731  (states appear as they change)
    submit.submit(host=args.host, profile=args.profile, options=options, wait=not args.no_wait,
                  dry_run=args.dry_run, poll_seconds=args.poll_seconds, log=progress_line, say=say)
    return 0
