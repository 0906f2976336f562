"""Save, reload and predict: identical outputs, island names, the lab's new penguin."""

import json

import numpy as np
import pytest
import torch

from conftest import DATA, assert_one_line_error, run_cli
from penguin_lab.artifacts import METADATA_FILE, WEIGHTS_FILE, load_model, save_model
from penguin_lab.config import FEATURES, MEASUREMENTS
from penguin_lab.errors import LabError
from penguin_lab.model import PenguinNet
from penguin_lab.predict import Predictor

LABS_NEW_PENGUIN = ["--island", "Biscoe", "--culmen-length", "50.4", "--culmen-depth", "15.3",
                    "--flipper-length", "200", "--body-mass", "5000"]


def test_save_then_load_gives_identical_outputs(tmp_path, prepared):
    torch.manual_seed(3)
    model = PenguinNet().eval()
    save_model(model, tmp_path / "model", prepared.island_vocabulary, prepared.feature_ranges)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [METADATA_FILE, WEIGHTS_FILE]
    loaded, metadata = load_model(tmp_path / "model")
    x = torch.as_tensor(prepared.x_test)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert metadata["island_vocabulary"] == ["Biscoe", "Dream", "Torgersen"]
    assert metadata["features"] == ["IslandIdx", "CulmenLength", "CulmenDepth", "FlipperScaled", "MassScaled"]
    assert metadata["species"] == ["Adelie", "Gentoo", "Chinstrap"]
    assert set(metadata["versions"]) >= {"penguin_lab", "torch", "safetensors"}


def test_predict_by_island_name_scales_like_the_spark_preparation(lab_run, prepared, raw):
    """The Predictor turns raw measurements into exactly the rows Spark prepared for training, bit for bit:
    the lab's hand scaling, then the training rows' standardization saved with the model."""
    out, _ = lab_run
    predictor = Predictor(out / "model")
    assert predictor.metadata["standardization"] == prepared.standardization
    raw_first = {"CulmenLength": 39.1, "CulmenDepth": 18.7, "FlipperLength": 181, "BodyMass": 3750}
    x, warnings = predictor.encode("Torgersen", raw_first)
    assert warnings == []
    mean, std = (np.array(c) for c in zip(*(prepared.standardization[f] for f in FEATURES)))
    assert np.allclose(x, (np.array([2.0, 39.1, 18.7, 18.1, 37.5]) - mean) / std, atol=1e-6)
    spark_rows = {row.tobytes() for row in np.concatenate([prepared.x_train, prepared.x_test])}
    complete = raw.dropna(subset=["Island", *MEASUREMENTS])
    encoded = {predictor.encode(r["Island"], {m: r[m] for m in MEASUREMENTS})[0].tobytes()
               for r in complete.to_dict("records")}
    assert encoded == spark_rows


def test_a_model_saved_before_standardization_predicts_as_it_always_did(model_dir, prepared):
    """format_version 1 models fed the network the hand-scaled values: they still load and get them."""
    metadata = json.loads((model_dir / METADATA_FILE).read_text())
    metadata["format_version"] = 1
    del metadata["standardization"]
    (model_dir / METADATA_FILE).write_text(json.dumps(metadata))
    predictor = Predictor(model_dir)
    x, _ = predictor.encode("Torgersen", {"CulmenLength": 39.1, "CulmenDepth": 18.7, "FlipperLength": 181,
                                          "BodyMass": 3750})
    assert x.tolist() == np.array([2.0, 39.1, 18.7, 18.1, 37.5], dtype=np.float32).tolist()
    with torch.no_grad():
        expected = predictor.model(torch.as_tensor(x[None])).exp().numpy()[0]
    got = predictor.predict("Torgersen", CulmenLength=39.1, CulmenDepth=18.7, FlipperLength=181, BodyMass=3750)
    assert [got["probabilities"][s] for s in predictor.species] == expected.tolist()


def test_the_labs_new_penguin_is_a_gentoo(lab_run):
    out, _ = lab_run
    result = Predictor(out / "model").predict("Biscoe", CulmenLength=50.4, CulmenDepth=15.3,
                                              FlipperLength=200, BodyMass=5000)
    assert result["species"] == "Gentoo"
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_predict_command_text_and_json(lab_run):
    out, _ = lab_run
    text = run_cli("predict", "--model", str(out / "model"), *LABS_NEW_PENGUIN)
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0] == "Gentoo"
    as_json = run_cli("predict", "--model", str(out / "model"), *LABS_NEW_PENGUIN, "--json")
    result = json.loads(as_json.stdout)
    assert result["species"] == "Gentoo" and set(result["probabilities"]) == {"Adelie", "Gentoo", "Chinstrap"}


def test_predict_a_whole_csv_matches_the_labels(lab_run):
    out, _ = lab_run
    result = run_cli("predict", "--model", str(out / "model"), "--csv", str(DATA), "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == 344
    labels = DATA.read_text().splitlines()[1:]
    names = ["Adelie", "Gentoo", "Chinstrap"]
    scored = [(r["species"], names[int(line.rsplit(",", 1)[1])]) for r, line in zip(rows, labels) if r["species"]]
    assert len(scored) == 342
    assert sum(p == t for p, t in scored) / len(scored) >= 0.97


def test_unknown_island_lists_the_known_ones(lab_run):
    out, _ = lab_run
    result = run_cli("predict", "--model", str(out / "model"), *LABS_NEW_PENGUIN[2:], "--island", "Atlantis")
    assert_one_line_error(result, "Atlantis", "Biscoe, Dream, Torgersen")


def test_pickle_files_are_refused_not_loaded(tmp_path):
    torch.save(PenguinNet().state_dict(), tmp_path / "penguin_classifier.pt")
    with pytest.raises(LabError, match="never loaded"):
        load_model(tmp_path / "penguin_classifier.pt")


def test_a_batch_scores_each_row_as_it_would_alone(saved_model):
    """score_columns takes a shorter way when every row of a batch can be scored: a row's probabilities are
    the same to the bit whichever way its batch went, and the same as predicting it alone."""
    from penguin_lab.predict import score_columns

    predictor = Predictor(saved_model)
    rng = np.random.default_rng(0)
    rows = 1000
    codes = rng.integers(0, 3, rows)
    spellings = ["Biscoe", "dream", "Torgersen", "Atlantis"]
    measurements = [rng.uniform(low, high, rows) for low, high in ((35, 55), (14, 21), (175, 230), (2800, 6200))]
    whole, why, _ = score_columns(predictor, codes, spellings, measurements)
    assert (why == -1).all() and whole.dtype == np.float64 and whole.shape == (rows, 3)
    codes_with_bad = np.concatenate([codes, [3, -1, 0]])  # an unknown island, a missing one, a bad measurement
    with_bad = [np.concatenate([values, [40.0, 40.0, -1.0 if i == 0 else 40.0]]) for i, values in enumerate(measurements)]
    mixed, why, reasons = score_columns(predictor, codes_with_bad, spellings, with_bad)
    assert np.array_equal(mixed[:rows], whole) and np.isnan(mixed[rows:]).all()
    assert [reasons[w].split(";")[0] for w in why[rows:]] == ["Island: unknown island 'Atlantis'", "Island: missing",
                                                              "CulmenLength: missing, not a number or not a possible measurement"]
    for i in (0, rows // 2, rows - 1):
        alone = predictor.predict(spellings[codes[i]], **{name: values[i] for name, values in zip(MEASUREMENTS, measurements)})
        assert list(alone["probabilities"].values()) == pytest.approx(list(whole[i]), abs=1e-6)
