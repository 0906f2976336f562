"""What `predict` accepts: known islands, real measurements; far-off values still predict, with a warning."""

import json
import math

import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli
from penguin_lab.cli import main
from penguin_lab.errors import LabError
from penguin_lab.predict import Predictor

PENGUIN = {"CulmenLength": 50.4, "CulmenDepth": 15.3, "FlipperLength": 200, "BodyMass": 5000}
FLAGS = {"CulmenLength": "--culmen-length", "CulmenDepth": "--culmen-depth", "FlipperLength": "--flipper-length",
         "BodyMass": "--body-mass"}


@pytest.fixture(scope="module")
def predictor(saved_model):
    return Predictor(saved_model)


def cli_args(model, island="Biscoe", **changes):
    values = {**PENGUIN, **changes}
    args = ["predict", "--model", str(model), "--island", island]
    for name, value in values.items():
        if value is not None:
            args += [FLAGS[name], str(value)]
    return args


def run_main(capsys, args):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err) -> str:
    lines = [line for line in err.splitlines() if line.startswith("penguin-lab: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- islands ---------------------------------------------------------------------------------------------

def test_an_unknown_island_is_an_error_listing_the_known_ones(predictor, saved_model, capsys):
    with pytest.raises(LabError, match="^Island: unknown island 'Atlantis'; expected one of Biscoe, Dream, Torgersen$"):
        predictor.predict("Atlantis", **PENGUIN)
    code, out, err = run_main(capsys, cli_args(saved_model, "Atlantis"))
    assert code == 2 and out == ""
    assert one_error_line(err) == ("penguin-lab: error: Island: unknown island 'Atlantis'; "
                                   "expected one of Biscoe, Dream, Torgersen")


@pytest.mark.parametrize("island", [None, "", "  "])
def test_a_missing_island_is_an_error(predictor, island):
    with pytest.raises(LabError, match="^Island: missing; expected one of Biscoe, Dream, Torgersen$"):
        predictor.predict(island, **PENGUIN)


def test_island_names_match_ignoring_case_and_spaces(predictor):
    expected = predictor.predict("Biscoe", **PENGUIN)
    assert predictor.predict(" biscoe ", **PENGUIN) == expected
    assert predictor.predict("BISCOE", **PENGUIN) == expected


# --- measurements ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [None, "", "NA", " "])
def test_a_missing_measurement_is_an_error(predictor, value):
    with pytest.raises(LabError, match="^CulmenDepth: missing; expected a positive number of mm below 1e\\+06$"):
        predictor.predict("Biscoe", **{**PENGUIN, "CulmenDepth": value})


def test_a_measurement_left_out_is_an_error(predictor, saved_model, capsys):
    with pytest.raises(LabError, match="^BodyMass: missing; expected a positive number of g"):
        predictor.predict("Biscoe", CulmenLength=50.4, CulmenDepth=15.3, FlipperLength=200)
    code, _, err = run_main(capsys, cli_args(saved_model, BodyMass=None))
    assert code == 2 and "predict needs --island and --body-mass" in one_error_line(err)


@pytest.mark.parametrize("value", ["heavy", "5000g", "5_000", "0x1388", True, [5000], {"g": 5000}])
def test_a_non_numeric_measurement_is_an_error(predictor, value):
    with pytest.raises(LabError, match="^BodyMass: .* is not a number; expected a positive number of g below 1e\\+06$"):
        predictor.predict("Biscoe", **{**PENGUIN, "BodyMass": value})


@pytest.mark.parametrize("value", [-5000, 0, "-0.0", math.inf, "inf", -math.inf, 1e6, "1e400"])
def test_a_negative_zero_or_infinite_measurement_is_an_error(predictor, value):
    with pytest.raises(LabError, match="^BodyMass: .* is not a possible measurement; expected a positive number"):
        predictor.predict("Biscoe", **{**PENGUIN, "BodyMass": value})


@pytest.mark.parametrize("value", [math.nan, np.float32("nan"), "nan", "NaN"])
def test_nan_is_an_error(predictor, value):
    with pytest.raises(LabError, match="^BodyMass: (NaN is not a measurement|missing); expected"):
        predictor.predict("Biscoe", **{**PENGUIN, "BodyMass": value})


def test_bad_measurements_through_the_command_line_are_one_line(saved_model, capsys):
    for value, expected in [("abc", "CulmenLength: 'abc' is not a number"),
                            ("-1", "CulmenLength: -1 is not a possible measurement"),
                            ("nan", "CulmenLength: missing"), ("inf", "CulmenLength: inf is not a possible")]:
        code, out, err = run_main(capsys, cli_args(saved_model, CulmenLength=value))
        assert code == 2 and out == "" and expected in one_error_line(err)


def test_a_bad_measurement_in_a_fresh_process(saved_model):
    result = run_cli(*cli_args(saved_model, FlipperLength="-200"))
    assert_one_line_error(result, "FlipperLength: -200 is not a possible measurement; expected a positive number of mm")


def test_numbers_in_any_plain_form_are_accepted(predictor):
    expected = predictor.predict("Biscoe", **PENGUIN)["probabilities"]
    for form in [{"BodyMass": "5000"}, {"BodyMass": " 5e3 "}, {"BodyMass": np.int64(5000)},
                 {"CulmenLength": "50,4"}, {"CulmenLength": np.float32(50.4)}]:
        got = predictor.predict("Biscoe", **{**PENGUIN, **form})["probabilities"]
        assert got == pytest.approx(expected, rel=1e-5), form


# --- far outside the training data -----------------------------------------------------------------------

def test_a_value_far_outside_the_training_range_predicts_with_a_warning(predictor, saved_model, capsys):
    result = predictor.predict("Biscoe", **{**PENGUIN, "BodyMass": 20000})
    assert result["species"] in predictor.species
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert result["warnings"] == ["BodyMass 20000 is far outside the training range 2700..6300; "
                                  "the prediction may be unreliable"]
    code, out, err = run_main(capsys, cli_args(saved_model, BodyMass=20000) + ["--json"])
    assert code == 0 and json.loads(out)["species"] == result["species"]
    assert "warning: BodyMass 20000 is far outside the training range" in err and "error" not in err


def test_values_inside_or_near_the_training_range_do_not_warn(predictor):
    assert predictor.predict("Biscoe", **PENGUIN)["warnings"] == []
    assert predictor.predict("Biscoe", **{**PENGUIN, "BodyMass": 7000})["warnings"] == []  # within half a range


# --- predict --csv: the same checks, with file and row --------------------------------------------------------

def test_an_unknown_island_in_a_csv_names_file_row_and_column(tmp_path, saved_model, capsys):
    data = tmp_path / "new.csv"
    data.write_text("Island,CulmenLength,CulmenDepth,FlipperLength,BodyMass\nBiscoe,50.4,15.3,200,5000\n"
                    "Atlantis,50.4,15.3,200,5000\nDream,,15.3,200,5000\n")
    code, out, err = run_main(capsys, ["predict", "--model", str(saved_model), "--csv", str(data)])
    assert code == 2 and out == ""
    assert one_error_line(err) == (f"penguin-lab: error: {data}: row 3, column 'Island': unknown island 'Atlantis'; "
                                   f"expected one of Biscoe, Dream, Torgersen")

    code, out, err = run_main(capsys, ["predict", "--model", str(saved_model), "--csv", str(data), "--drop-invalid"])
    assert code == 0
    rows = out.splitlines()
    assert rows[0] == "row,species,p_Adelie,p_Gentoo,p_Chinstrap"
    assert rows[2] == "3,,,," and rows[3] == "4,,,,"
    assert "warning: row 3: dropped: Island: unknown island 'Atlantis'" in err
    assert "warning: row 4: incomplete row" in err
