"""penguin-lab command line: run the lab, score penguins, train distributed, manage a workspace."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import logging
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

from .arguments import positive_float, positive_int, seed_int
from .cli_databricks import add_databricks_commands, add_submit_command
from .config import DEFAULT_DATA, TrainConfig
from .errors import LabError


def default_out() -> Path:
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def cmd_run(args) -> int:
    from .pipeline import run_lab

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                         oversample=args.oversample, learning_rate=args.learning_rate)
    out = Path(args.out) if args.out else default_out()
    metrics = run_lab(args.data, out, config, progress=sys.stderr.isatty(), drop_invalid=args.drop_invalid,
                      track=args.tracking, register=args.register)
    print(f"test accuracy {metrics['test_accuracy']:.4f} on {metrics['test_rows']} held-out penguins "
          f"({metrics['train_rows']} training rows, {metrics['overlap_rows']} overlapping)")
    print(f"rows read {metrics['input_rows']}; not trained on: {metrics['incomplete_rows']} incomplete, "
          f"{metrics['invalid_rows']} invalid, {metrics['duplicate_rows']} duplicate")
    print(f"final loss: training {metrics['final_train_loss']:.4f}, validation {metrics['final_val_loss']:.4f}; "
          f"{metrics['epochs']} epochs in {metrics['train_seconds']:.2f} s, whole run {metrics['total_seconds']:.2f} s")
    print(f"results in {out}/: metrics.json, loss.png, accuracy.png, confusion.png, weights.txt, model/ "
          f"(and prepared/)")
    _print_tracking(metrics)
    return 0


def _print_tracking(metrics: dict) -> None:
    tracked = metrics.get("mlflow")
    if tracked:
        registered = f"; registered as {tracked['registered']}" if tracked.get("registered") else ""
        print(f"MLflow run {tracked['run_id']} in {tracked['tracking_uri']}{registered}")


def add_tracking_arguments(parser) -> None:
    parser.add_argument("--tracking", action=argparse.BooleanOptionalAction, default=None,
                        help="log the run to MLflow (default: on, unless PENGUIN_LAB_TRACKING=off): "
                             "MLFLOW_TRACKING_URI, the notebook's experiment on Databricks, or mlflow.db "
                             "beside the results folder")
    parser.add_argument("--register", metavar="NAME",
                        help="register the model under NAME (on Databricks, catalog.schema.model in Unity Catalog)")


MEASUREMENT_FLAGS = {"CulmenLength": "culmen_length", "CulmenDepth": "culmen_depth",
                     "FlipperLength": "flipper_length", "BodyMass": "body_mass"}


def cmd_predict(args) -> int:
    import tempfile

    from .mlflow_models import is_model_uri, local_model_folder
    from .predict import Predictor

    if is_model_uri(args.model):
        with tempfile.TemporaryDirectory(prefix="penguin-lab-model-") as download:
            predictor = Predictor(local_model_folder(args.model, Path(download)))
    else:
        predictor = Predictor(Path(args.model))
    if args.csv:
        return _predict_csv(predictor, args)
    given = {name: getattr(args, flag) for name, flag in MEASUREMENT_FLAGS.items()}
    missing = [f"--{flag.replace('_', '-')}" for name, flag in MEASUREMENT_FLAGS.items() if given[name] is None]
    if args.island is None or missing:
        raise LabError(f"predict needs --island and {', '.join(missing or ['the measurements'])} (or --csv FILE)")
    result = predictor.predict(args.island, **given)
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        print(result["species"])
        for name, p in result["probabilities"].items():
            print(f"  {name:<10} {p:.4f}")
    return 0


def _predict_csv(predictor, args) -> int:
    import csv

    from .read import read_penguins_csv

    frame, invalid = read_penguins_csv(args.csv, require_label=False, drop_invalid=args.drop_invalid)
    results = predictor.predict_frame(frame, where=args.csv, drop_invalid=args.drop_invalid)
    if invalid:
        print(f"warning: {invalid} invalid rows of {args.csv} dropped (--drop-invalid)", file=sys.stderr)
    for result in results:
        for warning in result["warnings"]:
            print(f"warning: row {result['row']}: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(results))
        return 0
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["row", "species", *[f"p_{name}" for name in predictor.species]])
    for result in results:
        probs = [f"{result['probabilities'][n]:.6f}" if result["probabilities"] else "" for n in predictor.species]
        writer.writerow([result["row"], result["species"] or "", *probs])
    return 0


def cmd_score(args) -> int:
    from .score import score
    from .spark import LARGE_INPUT_BYTES, get_spark, input_bytes

    started = time.perf_counter()  # the time it prints is the whole command's, the JVM's start included
    spark = get_spark(large_input=input_bytes(args.data) >= LARGE_INPUT_BYTES, torch_workers=True)
    result = score(spark, args.model, args.data, args.out, drop_invalid=args.drop_invalid, started=started)
    flagged = (f"{result['flagged']} could not be scored and were dropped" if args.drop_invalid else
               f"{result['flagged']} could not be scored (see their reason column)")
    print(f"scored {result['rows']} penguins in {result['seconds']:.1f} s; {flagged}")
    print(f"predictions in {result['out']}/ (Parquet: the input columns, predicted_species, p_<species>, reason)")
    return 0


def cmd_synth(args) -> int:
    from .synth import synthesize

    result = synthesize(None, args.rows, args.out, fmt=args.format, seed=args.seed)
    files = f"{result['files']} part file{'s' if result['files'] != 1 else ''}"
    print(f"wrote {result['rows']} synthetic penguins to {result['path']} ({result['format']}, {files}) "
          f"in {result['seconds']:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="penguin-lab", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the single-node lab end to end")
    run.add_argument("--data", default=str(DEFAULT_DATA), help="penguin CSV (default: the shipped data)")
    run.add_argument("--out", help="results folder (default: runs/<timestamp>)")
    run.add_argument("--epochs", type=positive_int, default=TrainConfig.epochs)
    run.add_argument("--batch-size", type=positive_int, default=TrainConfig.batch_size)
    run.add_argument("--seed", type=seed_int, default=TrainConfig.seed)
    run.add_argument("--learning-rate", type=positive_float, default=TrainConfig.learning_rate)
    run.add_argument("--oversample", type=positive_int, default=TrainConfig.oversample,
                     help="copies of each training row (the lab used 4); test rows are never copied")
    run.add_argument("--drop-invalid", action="store_true", help="drop rows with invalid values instead of stopping")
    add_tracking_arguments(run)
    run.set_defaults(func=cmd_run)

    predict = commands.add_parser("predict", help="predict the species of a penguin with a saved model")
    predict.add_argument("--model", required=True,
                         help="model folder (e.g. runs/<timestamp>/model), or an MLflow runs:/ or models:/ URI "
                              "(from MLFLOW_TRACKING_URI, else runs/mlflow.db)")
    predict.add_argument("--island", help="island name, e.g. Biscoe")
    predict.add_argument("--culmen-length", type=str, help="mm")
    predict.add_argument("--culmen-depth", type=str, help="mm")
    predict.add_argument("--flipper-length", type=str, help="mm")
    predict.add_argument("--body-mass", type=str, help="g")
    predict.add_argument("--csv", help="score every row of this CSV file instead")
    predict.add_argument("--drop-invalid", action="store_true", help="with --csv: skip rows with invalid values")
    predict.add_argument("--json", action="store_true", help="machine-readable output")
    predict.set_defaults(func=cmd_predict)

    scoring = commands.add_parser("score", help="score a CSV or Parquet input of any size with Spark, into Parquet")
    scoring.add_argument("--model", required=True, help="model folder, or an MLflow runs:/ or models:/ URI")
    scoring.add_argument("--data", required=True, help="CSV or Parquet file or folder (no Species column needed)")
    scoring.add_argument("--out", required=True, help="new folder for the scored Parquet")
    scoring.add_argument("--drop-invalid", action="store_true",
                         help="leave out records that cannot be scored instead of flagging them")
    scoring.set_defaults(func=cmd_score)
    synth = commands.add_parser("synth", help="write synthetic penguins drawn from Gaussians fitted to the real data")
    synth.add_argument("--rows", type=positive_int, required=True, help="number of penguins to write")
    synth.add_argument("--out", required=True, help="new or empty folder for the part files")
    synth.add_argument("--format", choices=["csv", "parquet"], default="csv")
    synth.add_argument("--seed", type=seed_int, default=0, help="the same seed and rows give the same files")
    synth.set_defaults(func=cmd_synth)

    _add_distributed_command(commands)
    add_databricks_commands(commands)
    add_submit_command(commands)
    return parser


def _add_distributed_command(commands) -> None:
    from .distributed import ENGINES  # cheap: the engines import their libraries only when they run

    parser = commands.add_parser(
        "distributed", help="train with several processes: Horovod (as in the lab) or TorchDistributor",
        description="Train the penguin classifier with several processes and save rank 0's model. "
                    "--engine horovod uses HorovodRunner (sparkdl's on Databricks Runtime ML <= 15.4 LTS, "
                    "real Horovod processes over gloo elsewhere); --engine torch uses Spark's TorchDistributor.")
    parser.add_argument("--engine", choices=ENGINES, required=True)
    parser.add_argument("--np", type=positive_int, default=2, help="number of processes (default 2)")
    parser.add_argument("--local-mode", action=argparse.BooleanOptionalAction, default=True,
                        help="processes on this machine (default), or --no-local-mode: Spark barrier tasks "
                             "(torch) / HorovodRunner np>0 (horovod)")
    parser.add_argument("--out", help="results folder (default: runs/<timestamp>-<engine>)")
    parser.add_argument("--epochs", type=positive_int, default=TrainConfig.epochs)
    parser.add_argument("--batch-size", type=positive_int, default=TrainConfig.batch_size,
                        help="rows per batch, per process")
    parser.add_argument("--seed", type=seed_int, default=TrainConfig.seed)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="penguin CSV (default: the shipped data)")
    parser.add_argument("--drop-invalid", action="store_true", help="drop rows with invalid values instead of stopping")
    parser.add_argument("--verbose", action="store_true", help="show the workers' output (on stderr)")
    add_tracking_arguments(parser)
    parser.set_defaults(func=cmd_distributed)


def cmd_distributed(args) -> int:
    started = time.perf_counter()  # total_seconds covers the whole command, reading and preparing too
    from .distributed import fail_on_rank_from_env, run_distributed

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)
    out = Path(args.out) if args.out else Path(f"{default_out()}-{args.engine}")
    metrics = run_distributed(args.data, out, args.engine, args.np, args.local_mode, config, args.drop_invalid,
                              args.verbose, fail_on_rank_from_env(), started=started, track=args.tracking,
                              register=args.register)
    mode = "processes on this machine" if args.local_mode else "Spark tasks"
    print(f"{args.engine}: {metrics['world_size']} {mode}, test accuracy {metrics['test_accuracy']:.4f} "
          f"on {metrics['test_rows']} held-out penguins; {metrics['epochs']} epochs in "
          f"{metrics['train_seconds']:.2f} s, whole run {metrics['total_seconds']:.2f} s")
    print(f"weights identical on all {metrics['world_size']} ranks (sha256 {metrics['rank_checksums'][0][:16]}...)")
    print(f"results in {out}/: metrics.json, loss.png, accuracy.png, confusion.png, model/, prepared/")
    _print_tracking(metrics)
    return 0


def command() -> None:
    """The `penguin-lab` program. Once the results are written, every exit handler has run and the output is
    flushed, the process ends without tearing down PyTorch's modules one by one, which takes over half a second."""
    exit_code = [1]  # an exception that escapes (--debug) exits 1, as Python would
    atexit.register(_exit_now, exit_code)  # registered first, so it runs after every other exit handler
    try:
        exit_code[0] = main()
    except SystemExit as e:  # argparse: 2 for a usage error, 0 for --help
        exit_code[0] = e.code if isinstance(e.code, int) else int(e.code is not None)
        raise
    sys.exit(exit_code[0])


def _exit_now(exit_code: list) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe cannot be flushed, and need not be
            stream.flush()
    os._exit(exit_code[0])


def job_main() -> None:
    """The entry point of a Python wheel task: Databricks ignores a return value, so a failure exits non-zero."""
    code = main()
    if code:
        sys.exit(code)


def one_line(text: str, limit: int = 2000) -> str:
    """A message as exactly one line: line breaks and other control characters shown escaped."""
    text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    return text if len(text) <= limit else text[:limit] + "..."


def _interrupt_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # so `kill` (or a cancelled job) cleans up exactly like Ctrl-C


@contextlib.contextmanager
def _sigterm_as_interrupt():
    try:
        previous = signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def main(argv=None) -> int:
    # Py4J reports Ctrl-C during a JVM call with logging.exception on the root logger, which without a
    # handler configures one and prints a traceback; the interrupt itself is reported in one line below.
    if not logging.getLogger().handlers:
        logging.getLogger().addHandler(logging.NullHandler())
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _sigterm_as_interrupt():
            return args.func(args) or 0
    except LabError as e:
        if args.debug:
            raise
        print(f"penguin-lab: error: {one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("penguin-lab: interrupted; results are written only when a run completes", file=sys.stderr)
        return 130
    except Exception as e:  # an unexpected failure still gets one line; --debug shows where
        if args.debug:
            raise
        from .spark_errors import short_spark_error, spark_failure

        known = spark_failure(e)  # out of memory or disk: what ran out and the setting that raises it
        if known is not None:
            print(f"penguin-lab: error: {one_line(str(known))}", file=sys.stderr)
            return known.exit_code
        text = short_spark_error(e) if _is_spark_error(e) else f"{e.__class__.__name__}: {e}"
        print(f"penguin-lab: error: {one_line(text)} (run with --debug for details)", file=sys.stderr)
        return 1


def _is_spark_error(e: BaseException) -> bool:
    return type(e).__module__.startswith(("py4j", "pyspark"))


if __name__ == "__main__":
    command()
