"""Model folders from elsewhere: only the project's own format loads, and nothing in one ever runs.

The malicious payloads are real: a pickle whose loading runs `touch MARKER`. A test first shows that
plain pickle / torch.load really do create the marker, then that penguin-lab never does.
"""

import hashlib
import json
import os
import pickle
import shlex
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from conftest import assert_one_line_error, run_cli
from penguin_lab.artifacts import METADATA_FILE, WEIGHTS_FILE, load_model
from penguin_lab.cli import main
from penguin_lab.errors import LabError
from penguin_lab.model import PenguinNet
from penguin_lab.predict import Predictor

NEW_PENGUIN = ["--island", "Biscoe", "--culmen-length", "50.4", "--culmen-depth", "15.3",
               "--flipper-length", "200", "--body-mass", "5000"]


class RunsCodeWhenUnpickled:
    """Unpickling this calls os.system('touch MARKER')."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def evil_pickle(marker, protocol=pickle.HIGHEST_PROTOCOL) -> bytes:
    return pickle.dumps(RunsCodeWhenUnpickled(marker), protocol=protocol)


def evil_torch_file(path, marker):
    """What `torch.save(model)` hands around: a zip holding a pickle, here one that runs code."""
    torch.save({"fc1.weight": RunsCodeWhenUnpickled(marker)}, path)
    return path


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "the payload ran"


def metadata(folder):
    return json.loads((folder / METADATA_FILE).read_text())


def write_metadata(folder, data):
    (folder / METADATA_FILE).write_text(json.dumps(data))


def reseal(folder):
    """Make model.json's SHA-256 match the weights file, as someone forging a folder would."""
    data = metadata(folder)
    data["weights_sha256"] = hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()
    write_metadata(folder, data)


def refused(path, *fragments) -> str:
    """load_model and Predictor both raise a one-line LabError containing the fragments."""
    for load in (load_model, Predictor):
        with pytest.raises(LabError) as caught:
            load(path)
        message = str(caught.value)
        assert "\n" not in message, message
        for fragment in fragments:
            assert fragment in message, (fragment, message)
    return message


def predict_in_process(capsys, model):
    code = main(["predict", "--model", str(model), *NEW_PENGUIN])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("penguin-lab: error:")]
    return code, errors, captured


# --- the payloads are real ------------------------------------------------------------------------------

def test_the_payloads_really_run_code_when_unpickled(tmp_path):
    """Plain pickle.loads and torch.load(weights_only=False) create the marker: the refusals below matter."""
    pickled, torch_file = tmp_path / "evil.pkl", tmp_path / "evil.pt"
    pickled.write_bytes(evil_pickle(tmp_path / "by_pickle"))
    evil_torch_file(torch_file, tmp_path / "by_torch")
    code = (f"import pickle, torch; pickle.loads(open({str(pickled)!r}, 'rb').read()); "
            f"torch.load({str(torch_file)!r}, weights_only=False)")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
    assert (tmp_path / "by_pickle").exists() and (tmp_path / "by_torch").exists()


# --- a pickle given directly ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_a_pickle_given_as_the_model_is_refused_unopened(tmp_path, marker, capsys, kind):
    path = tmp_path / ("model.pkl" if kind == "pickle" else "penguin_classifier.pt")
    if kind == "pickle":
        path.write_bytes(evil_pickle(marker))
    else:
        evil_torch_file(path, marker)
    expected = "a pickle" if kind == "pickle" else "is a pickle"
    refused(path, expected, "Pickles are never loaded: they can run code")
    code, errors, _ = predict_in_process(capsys, path)
    assert code == 2 and len(errors) == 1 and str(path) in errors[0]


def test_a_pickle_given_as_the_model_through_the_command_line(tmp_path, marker):
    path = tmp_path / "model.bin"
    path.write_bytes(evil_pickle(marker))
    result = run_cli("predict", "--model", str(path), *NEW_PENGUIN)
    assert_one_line_error(result, str(path), "is a pickle", "never loaded")


# --- a pickle planted in an otherwise valid folder -------------------------------------------------------

def test_the_valid_folder_loads(model_dir):
    model, data = load_model(model_dir)
    assert isinstance(model, PenguinNet) and data["island_vocabulary"] == ["Biscoe", "Dream", "Torgersen"]


def test_a_pickle_in_place_of_the_weights_is_refused(model_dir, marker, capsys):
    (model_dir / WEIGHTS_FILE).write_bytes(evil_pickle(marker))
    refused(model_dir, "SHA-256 does not match model.json")
    reseal(model_dir)  # a forger would update the checksum too
    refused(model_dir, "not a readable safetensors file")
    code, errors, _ = predict_in_process(capsys, model_dir)
    assert code == 2 and len(errors) == 1 and "not a readable safetensors file" in errors[0]


def test_a_torch_save_file_in_place_of_the_weights_is_refused(model_dir, marker):
    evil_torch_file(model_dir / WEIGHTS_FILE, marker)
    reseal(model_dir)
    refused(model_dir, "not a readable safetensors file")


@pytest.mark.parametrize("name", ["penguin_classifier.pt", "model.pkl", "weights.bin"])
def test_an_extra_pickle_beside_the_weights_is_refused(model_dir, marker, capsys, name):
    (model_dir / name).write_bytes(evil_pickle(marker))
    refused(model_dir, f"unexpected '{name}' (a pickle)", "expected only model.json and model.safetensors")
    code, errors, _ = predict_in_process(capsys, model_dir)
    assert code == 2 and len(errors) == 1


def test_an_extra_pickle_beside_the_weights_through_the_command_line(model_dir, marker):
    evil_torch_file(model_dir / "model.pt", marker)
    result = run_cli("predict", "--model", str(model_dir), *NEW_PENGUIN)
    assert_one_line_error(result, "unexpected 'model.pt' (a pickle)")


@pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL], ids=["text-pickle", "binary-pickle"])
def test_a_pickle_in_place_of_the_metadata_is_refused(model_dir, marker, protocol):
    (model_dir / METADATA_FILE).write_bytes(evil_pickle(marker, protocol))
    message = refused(model_dir, "model.json: not")
    assert "not valid JSON" in message or "not UTF-8 text" in message


# --- damaged weights -----------------------------------------------------------------------------------

def test_truncated_weights_are_refused(model_dir):
    weights = model_dir / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-100])
    refused(model_dir, "SHA-256 does not match model.json; the weights are corrupted or were replaced")
    reseal(model_dir)
    refused(model_dir, "not a readable safetensors file")


@pytest.mark.parametrize("where", ["header", "values"])
def test_flipped_bytes_are_refused(model_dir, where):
    weights = model_dir / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[12 if where == "header" else len(data) - 7] ^= 0xFF
    weights.write_bytes(bytes(data))
    refused(model_dir, "SHA-256 does not match")


def test_a_header_damaged_and_resealed_is_still_refused(model_dir):
    weights = model_dir / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[0:8] = (10**12).to_bytes(8, "little")  # header length far beyond the file
    weights.write_bytes(bytes(data))
    reseal(model_dir)
    refused(model_dir, "not a readable safetensors file")


def test_an_empty_weights_file_is_refused(model_dir):
    (model_dir / WEIGHTS_FILE).write_bytes(b"")
    reseal(model_dir)
    refused(model_dir, "not a readable safetensors file")


def test_an_oversized_weights_file_is_refused_without_reading_it(model_dir):
    with open(model_dir / WEIGHTS_FILE, "r+b") as f:
        f.truncate(1 << 34)  # 16 GB, sparse: hashing it would take minutes
    refused(model_dir, "bytes; expected at most")


@pytest.mark.parametrize("change", ["float64", "nan", "extra-key", "missing-key", "wrong-shape"])
def test_weights_that_do_not_fit_are_refused_even_with_a_matching_checksum(model_dir, change):
    state = {k: v.clone() for k, v in PenguinNet().state_dict().items()}
    expected = {"float64": "is torch.float64; expected torch.float32", "nan": "holds NaN or infinite values",
                "extra-key": "do not match model.json", "missing-key": "do not match model.json",
                "wrong-shape": "do not match model.json"}[change]
    if change == "float64":
        state = {k: v.double() for k, v in state.items()}
    elif change == "nan":
        state["fc2.bias"][3] = float("nan")
    elif change == "extra-key":
        state["fc4.weight"] = torch.zeros(3, 3)
    elif change == "missing-key":
        del state["fc3.bias"]
    else:
        state["fc1.weight"] = torch.zeros(10, 6)
    save_file(state, str(model_dir / WEIGHTS_FILE))
    reseal(model_dir)
    refused(model_dir, expected)


# --- metadata that does not match, or is not metadata ------------------------------------------------------

METADATA_CHANGES = {
    "format_version 3": (lambda m: m.update(format_version=3), "format_version 3 is not supported; expected 1 or 2"),
    "format_version '1'": (lambda m: m.update(format_version="1"), "format_version '1' is not supported"),
    "format_version true": (lambda m: m.update(format_version=True), "format_version True is not supported"),
    "no format_version": (lambda m: m.pop("format_version"), "format_version None is not supported"),
    "other format": (lambda m: m.update(format="keras"), "not penguin-lab model metadata"),
    "tensor shape": (lambda m: m["tensors"].update({"fc1.weight": [10, 6]}), "do not match its architecture"),
    "tensor key": (lambda m: m["tensors"].update({"fc9.weight": m["tensors"].pop("fc1.weight")}),
                   "do not match its architecture"),
    "tensor shape type": (lambda m: m["tensors"].update({"fc1.weight": 5}), "field 'tensors' is"),
    "architecture": (lambda m: m["architecture"].update(hidden_units=20), "do not match its architecture"),
    "architecture type": (lambda m: m["architecture"].update(hidden_units="ten"), "field 'architecture'"),
    "architecture huge": (lambda m: m["architecture"].update(hidden_units=99_999), "at most 10000000 parameters"),
    "architecture inputs": (lambda m: m["architecture"].update(n_features=6), "n_features 5"),
    "features": (lambda m: m.update(features=m["features"][::-1]), "field 'features'"),
    "species count": (lambda m: m.update(species=["Adelie", "Gentoo"]), "field 'species'"),
    "species repeated": (lambda m: m.update(species=["Adelie", "Adelie", "Gentoo"]), "3 distinct names"),
    "islands empty": (lambda m: m.update(island_vocabulary=[]), "field 'island_vocabulary'"),
    "islands not text": (lambda m: m.update(island_vocabulary=[1, 2]), "field 'island_vocabulary'"),
    "scale missing": (lambda m: m["scale"].pop("BodyMass"), "field 'scale'"),
    "scale zero": (lambda m: m["scale"].update(BodyMass=0), "field 'scale'"),
    "standardization missing": (lambda m: m.pop("standardization"), "field 'standardization' is None"),
    "standardization std 0": (lambda m: m["standardization"].update(MassScaled=[50.0, 0.0]),
                              "[mean, standard deviation > 0] for each of IslandIdx"),
    "standardization feature": (lambda m: m["standardization"].pop("IslandIdx"), "field 'standardization'"),
    "standardization NaN": (lambda m: m["standardization"].update(IslandIdx=[float("nan"), 1.0]),
                            "field 'standardization'"),
    "ranges reversed": (lambda m: m["feature_ranges"].update(BodyMass=[6300, 2700]), "field 'feature_ranges'"),
    "ranges text": (lambda m: m["feature_ranges"].update(BodyMass="big"), "field 'feature_ranges'"),
    "sha not hex": (lambda m: m.update(weights_sha256="x" * 64), "field 'weights_sha256'"),
    "versions": (lambda m: m.update(versions="1.0"), "field 'versions'"),
    "no species": (lambda m: m.pop("species"), "field 'species' is None"),
}


@pytest.mark.parametrize("change", METADATA_CHANGES)
def test_metadata_that_does_not_match_is_refused(model_dir, change):
    edit, expected = METADATA_CHANGES[change]
    data = metadata(model_dir)
    edit(data)
    write_metadata(model_dir, data)
    refused(model_dir, "model.json", expected)


@pytest.mark.parametrize("content,expected", [
    ("{not json", "not valid JSON (Expecting property name enclosed in double quotes at line 1, column 2)"),
    ("", "not valid JSON"),
    ("[1, 2]", "not penguin-lab model metadata"),
    ("null", "not penguin-lab model metadata"),
    ("[" * 200_000 + "]" * 200_000, "JSON nested too deeply"),
    ('{"format": "penguin-lab-model", "pad": "' + "x" * (1 << 20) + '"}', "expected model metadata under"),
    (b"\xff\xfe{\x00}\x00", "not UTF-8 text"),
], ids=["broken", "empty", "list", "null", "deep", "huge", "utf16"])
def test_metadata_that_is_not_json_metadata_is_refused(model_dir, content, expected):
    path = model_dir / METADATA_FILE
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    refused(model_dir, "model.json", expected)


# --- missing files -------------------------------------------------------------------------------------

def test_missing_files_are_named(model_dir, tmp_path):
    refused(tmp_path / "nowhere", "no such model folder")
    (model_dir / WEIGHTS_FILE).unlink()
    refused(model_dir, f"missing {WEIGHTS_FILE}")
    (model_dir / METADATA_FILE).unlink()
    refused(model_dir, f"missing {METADATA_FILE}; expected a penguin-lab model folder")


def test_weights_that_are_not_a_regular_file_are_missing(model_dir):
    (model_dir / WEIGHTS_FILE).unlink()
    (model_dir / WEIGHTS_FILE).symlink_to("/dev/zero")
    refused(model_dir, f"missing {WEIGHTS_FILE}")
