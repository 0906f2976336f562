"""Saving and loading results: whole folders appear at once, and models load without pickle.

A saved model is a folder with model.safetensors (the weights: plain tensors, no code) and
model.json (everything needed to predict: feature order, island vocabulary, scaling, species
names, versions, metrics, and the weights' SHA-256). torch.load would unpickle, and a pickle
can run any code, so nothing here ever calls it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

from .config import FEATURES, SCALE, SPECIES, no_standardization
from .errors import LabError

MODEL_FORMAT = "penguin-lab-model"
# Version 2 standardizes the inputs (model.json "standardization"). Version 1 models, saved before, fed the
# network the lab's hand-scaled values: they load with no standardization and predict as they always did.
MODEL_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "model.json"
_MAX_METADATA_BYTES = 1 << 20
# The lab's network has 213 parameters; far more than this is not a penguin classifier.
MAX_PARAMETERS = 10_000_000


# What penguin-lab writes into a results or model folder. An existing folder holding anything else is
# someone's data: it is never replaced (think `--out ~` or `--out data`).
RESULT_NAMES = {"metrics.json", "loss.png", "accuracy.png", "confusion.png", "weights.txt", "model", "prepared", METADATA_FILE, WEIGHTS_FILE}


def check_output_dir(final) -> Path:
    """The absolute path of an output folder that may be created or replaced; LabError if it may not."""
    final = Path(os.path.abspath(final))
    if final.is_symlink() or final.exists():
        if not final.is_dir() or final.is_symlink():
            raise LabError(f"{final}: exists and is not a folder; expected a new or earlier results folder")
        foreign = sorted(p.name for p in final.iterdir() if p.name not in RESULT_NAMES)
        if foreign:
            listed = ", ".join(repr(name) for name in foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise LabError(f"{final}: exists and holds {listed}, which penguin-lab did not write; expected a new, "
                           f"empty or earlier results folder (it would be replaced whole)")
    ancestor = final.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise LabError(f"{final}: {ancestor} is a file; expected a folder path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise LabError(f"{final}: cannot write in {ancestor}; expected a folder you may write to")
    return final


@contextlib.contextmanager
def staged_dir(final: Path):
    """Yield an empty temporary folder beside `final`; on success it replaces `final` in one rename.

    On any error or interrupt the temporary folder is removed, so a failed or interrupted run never
    leaves a half-written folder under the final name. A killed process may leave its hidden
    `.NAME.tmp-HOST-PID-*` folder behind (never `final`); the next run into `final` removes it.
    """
    final = check_output_dir(final)
    staging = new_staging_folder(final, "results folder")
    try:
        yield staging
        check_output_dir(final)  # again: something may have appeared there meanwhile
        replace_dir(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def new_staging_folder(final: Path, what: str) -> Path:
    """An empty hidden folder beside `final`, after removing those that killed runs left there."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned_staging(final)
        return Path(tempfile.mkdtemp(prefix=f"{staging_prefix(final)}{os.getpid()}-", dir=final.parent))
    except OSError as e:
        raise LabError(f"{final}: cannot create the {what}: {e.strerror or e}") from None


def staging_prefix(final: Path) -> str:
    """Staging folders are named after this machine and process, so a later run can tell which are abandoned."""
    return f".{final.name}.tmp-{socket.gethostname()}-"


def remove_abandoned_staging(final: Path) -> None:
    """Remove the staging folders beside `final` whose process, on this machine, no longer runs.
    Folders of other machines (a shared file system) and of running processes are left alone."""
    owner = re.compile(re.escape(staging_prefix(final)) + r"(\d+)-")
    with contextlib.suppress(OSError):
        for entry in final.parent.iterdir():
            found = owner.match(entry.name)
            if found and entry.is_dir() and not entry.is_symlink() and not process_running(int(found.group(1))):
                shutil.rmtree(entry, ignore_errors=True)


def process_running(pid: int) -> bool:
    if os.name != "posix":  # elsewhere signal 0 is not a question; assume it runs
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # exists, but belongs to someone else
        return True
    return True


def replace_dir(source: Path, final: Path) -> None:
    """Move `source` to `final`, replacing a previous `final` folder (renames only).

    If the second rename fails, the previous folder is put back.
    """
    if not (final.exists() or final.is_symlink()):
        os.replace(source, final)
        return
    holder = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    previous = holder / "previous"
    os.replace(final, previous)
    moved = False
    try:
        os.replace(source, final)
        moved = True
    finally:
        if not moved:
            os.replace(previous, final)
        shutil.rmtree(holder, ignore_errors=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model(model, folder: Path, island_vocabulary: list, feature_ranges: dict | None = None,
               metrics: dict | None = None, extra: dict | None = None, standardization: dict | None = None) -> Path:
    """Write model.safetensors and model.json into `folder` (created).

    `standardization` is the prepared data's {feature: [mean, std]}; None means the network was
    trained on unstandardized inputs (mean 0, std 1 for every feature)."""
    import safetensors
    import torch
    from safetensors.torch import save_file

    from . import __version__

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    metadata = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "architecture": {"n_features": model.fc1.in_features, "hidden_units": model.fc1.out_features,
                         "n_classes": model.fc3.out_features},
        "features": FEATURES,
        "island_vocabulary": list(island_vocabulary),
        "scale": SCALE,
        "standardization": standardization or no_standardization(),
        "species": SPECIES,
        "feature_ranges": feature_ranges or {},
        "tensors": {k: list(v.shape) for k, v in state.items()},
        "weights_sha256": sha256_file(folder / WEIGHTS_FILE),
        "versions": {"penguin_lab": __version__, "torch": torch.__version__.split("+")[0],
                     "safetensors": safetensors.__version__},
        "metrics": metrics or {},
        **(extra or {}),
    }
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return folder


def _file_kind(path: Path) -> str:
    """How a file looks from its first bytes, for messages: pickles and torch.save files are named as such."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return "a file"
    if head[:1] == b"\x80" or path.suffix.lower() in (".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".joblib"):
        return "a pickle"
    if head[:2] == b"PK":
        return "a torch.save / zip file"
    return "a file"


def read_metadata(folder: Path) -> dict:
    """model.json of a model folder, checked field by field; LabError for anything else."""
    folder = Path(folder)
    if folder.is_file():
        raise LabError(f"{folder}: is {_file_kind(folder)}; expected a penguin-lab model folder "
                       f"({METADATA_FILE} + {WEIGHTS_FILE}). Pickles are never loaded: they can run code")
    if not folder.is_dir():
        raise LabError(f"{folder}: no such model folder; expected a folder with {METADATA_FILE} and {WEIGHTS_FILE}")
    # Only the two files are ever read. Anything else (a .pt, a .pkl) means the folder is not what it claims.
    extra = sorted(p for p in folder.iterdir() if p.name not in (METADATA_FILE, WEIGHTS_FILE))
    if extra:
        kinds = ", ".join(f"{p.name!r} ({_file_kind(p)})" for p in extra[:5])
        raise LabError(f"{folder}: unexpected {kinds}; expected only {METADATA_FILE} and {WEIGHTS_FILE} "
                       f"(other files are not loaded, and pickles never are: they can run code)")
    meta_path = folder / METADATA_FILE
    if not meta_path.is_file():
        raise LabError(f"{folder}: missing {METADATA_FILE}; expected a penguin-lab model folder")
    size = meta_path.stat().st_size
    if size > _MAX_METADATA_BYTES:
        raise LabError(f"{meta_path}: {size} bytes; expected model metadata under {_MAX_METADATA_BYTES} bytes")
    try:
        metadata = json.loads(meta_path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise LabError(f"{meta_path}: not UTF-8 text ({_file_kind(meta_path)}); expected JSON model metadata") from None
    except json.JSONDecodeError as e:
        raise LabError(f"{meta_path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                       f"expected JSON model metadata") from None
    except RecursionError:
        raise LabError(f"{meta_path}: JSON nested too deeply; expected JSON model metadata") from None
    if not isinstance(metadata, dict) or metadata.get("format") != MODEL_FORMAT:
        raise LabError(f"{meta_path}: not penguin-lab model metadata; expected \"format\": \"{MODEL_FORMAT}\"")
    version = metadata.get("format_version")
    if version not in READABLE_FORMAT_VERSIONS or not isinstance(version, int) or isinstance(version, bool):
        raise LabError(f"{meta_path}: format_version {_short(version)} is not supported; "
                       f"expected {' or '.join(map(str, READABLE_FORMAT_VERSIONS))}")
    if version == 1:
        metadata["standardization"] = no_standardization()
    _check_fields(metadata, meta_path)
    return metadata


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _is_count(value, low: int = 1, high: int = 100_000) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_fields(metadata: dict, meta_path: Path) -> None:
    """Every field prediction relies on has the type and shape it must have."""
    def bad(field, expected):
        raise LabError(f"{meta_path}: field {field!r} is {_short(metadata.get(field))}; expected {expected}")

    for key, kind in (("architecture", dict), ("island_vocabulary", list), ("scale", dict), ("species", list),
                      ("tensors", dict), ("weights_sha256", str), ("features", list), ("versions", dict)):
        if not isinstance(metadata.get(key), kind):
            bad(key, f"a JSON {'object' if kind is dict else 'array' if kind is list else 'string'}")
    arch = metadata["architecture"]
    if set(arch) != {"n_features", "hidden_units", "n_classes"} or not all(_is_count(v) for v in arch.values()):
        bad("architecture", "n_features, hidden_units and n_classes, each a whole number from 1 to 100000")
    if metadata["features"] != FEATURES:
        bad("features", f"{FEATURES}")
    if arch["n_features"] != len(FEATURES):
        bad("architecture", f"n_features {len(FEATURES)} (one per feature)")
    if sum(math.prod(shape) for shape in expected_tensors(arch).values()) > MAX_PARAMETERS:
        bad("architecture", f"at most {MAX_PARAMETERS} parameters")
    scale = metadata["scale"]
    if set(scale) != set(SCALE) or not all(_is_number(v) and v > 0 for v in scale.values()):
        bad("scale", f"a positive number for each of {', '.join(SCALE)}")
    species = metadata["species"]
    if (len(species) != arch["n_classes"] or not all(isinstance(s, str) and s for s in species)
            or len(set(species)) != len(species)):
        bad("species", f"{arch['n_classes']} distinct names (architecture n_classes)")
    islands = metadata["island_vocabulary"]
    if not islands or not all(isinstance(i, str) for i in islands) or len(set(islands)) != len(islands):
        bad("island_vocabulary", "a list of distinct island names")
    if not re.fullmatch(r"[0-9a-f]{64}", metadata["weights_sha256"]):
        bad("weights_sha256", "64 hexadecimal digits")
    tensors = metadata["tensors"]
    if not all(isinstance(shape, list) and all(_is_count(n, 0) for n in shape) for shape in tensors.values()):
        bad("tensors", "a shape (list of whole numbers) per tensor")
    moments = metadata.get("standardization")
    if not isinstance(moments, dict) or set(moments) != set(FEATURES) or not all(
            isinstance(m, list) and len(m) == 2 and all(_is_number(v) for v in m) and m[1] > 0
            for m in moments.values()):
        bad("standardization", f"[mean, standard deviation > 0] for each of {', '.join(FEATURES)}")
    ranges = metadata.get("feature_ranges", {})
    if not isinstance(ranges, dict) or not all(
            name in SCALE and isinstance(r, list) and len(r) == 2 and all(_is_number(v) for v in r) and r[0] <= r[1]
            for name, r in ranges.items()):
        bad("feature_ranges", f"[low, high] for each of {', '.join(SCALE)}")


def expected_tensors(architecture: dict) -> dict:
    """The shape of every PenguinNet tensor, from the architecture alone (nothing is allocated)."""
    f, h, c = architecture["n_features"], architecture["hidden_units"], architecture["n_classes"]
    return {"fc1.weight": [h, f], "fc1.bias": [h], "fc2.weight": [h, h], "fc2.bias": [h],
            "fc3.weight": [c, h], "fc3.bias": [c]}


def load_model(folder: Path):
    """Load a saved model folder; returns (model in eval mode, metadata). Never unpickles."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .model import PenguinNet

    folder = Path(folder)
    metadata = read_metadata(folder)
    meta_path, weights = folder / METADATA_FILE, folder / WEIGHTS_FILE
    expected = expected_tensors(metadata["architecture"])
    if metadata["tensors"] != expected:
        raise LabError(f"{meta_path}: tensors {_short(metadata['tensors'], 200)} do not match its architecture "
                       f"{metadata['architecture']}; expected {expected}")
    if not weights.is_file():
        raise LabError(f"{folder}: missing {WEIGHTS_FILE}; expected the weights beside {METADATA_FILE}")
    # float32 values plus a JSON header; a larger file is not these weights (and is not worth hashing).
    limit = 4 * sum(math.prod(shape) for shape in expected.values()) + (1 << 20)
    size = weights.stat().st_size
    if size > limit:
        raise LabError(f"{weights}: {size} bytes; expected at most {limit} for the tensors in {METADATA_FILE}")
    if sha256_file(weights) != metadata["weights_sha256"]:
        raise LabError(f"{weights}: SHA-256 does not match {METADATA_FILE}; the weights are corrupted or were "
                       f"replaced (expected {metadata['weights_sha256'][:16]}...)")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
        reason = " ".join(str(e).split())[:200]
        raise LabError(f"{weights}: not a readable safetensors file ({reason}); expected the weights "
                       f"penguin-lab saved") from None
    found = {k: list(v.shape) for k, v in state.items()}
    if found != expected:
        raise LabError(f"{weights}: tensors {_short(found, 200)} do not match {METADATA_FILE}; expected {expected}")
    for name, tensor in state.items():
        if tensor.dtype != torch.float32:
            raise LabError(f"{weights}: tensor {name!r} is {tensor.dtype}; expected torch.float32")
        if not torch.isfinite(tensor).all():
            raise LabError(f"{weights}: tensor {name!r} holds NaN or infinite values; expected finite weights")
    arch = metadata["architecture"]
    model = PenguinNet(arch["n_features"], arch["hidden_units"], arch["n_classes"])
    model.load_state_dict(state)
    model.eval()
    return model, metadata
