"""Property-based: whatever bytes a user's CSV holds, the outcome is a valid frame or a clean one-line error.

Generated files are built from plausible pieces (the real column names in any order and spelling, any
delimiter, line ending and encoding, numbers, missing values, garbage, quotes, ragged rows) and from
raw bytes. The reader is checked on many examples; fewer go end to end through `penguin-lab run`
in process, with the session's Spark, to check exit code, stderr and the --out folder.
"""

import contextlib
import io
import json
import math
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import DATA
from penguin_lab.artifacts import load_model
from penguin_lab.cli import main
from penguin_lab.config import ISLAND, LABEL, MEASUREMENTS
from penguin_lab.errors import LabError
from penguin_lab.read import read_penguins_csv
from penguin_lab.validate import MAX_MEASUREMENT

COLUMNS = [ISLAND, *MEASUREMENTS, LABEL]
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32", "cp1252", "latin-1"]
SHIPPED_ROWS = DATA.read_text().splitlines()[1:]

# --- pieces of a CSV ---------------------------------------------------------------------------------------

spellings = st.sampled_from([lambda n: n, lambda n: n, str.lower, str.upper, lambda n: f" {n} ",
                             lambda n: re.sub(r"(?<!^)(?=[A-Z])", "_", n).lower(), lambda n: f'"{n}"'])
plausible = st.floats(min_value=0.1, max_value=7000, allow_nan=False).map(lambda x: f"{x:.1f}")
numbers = st.one_of(st.integers(min_value=-5, max_value=7000).map(str),
                    st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.sampled_from(["1e3", "39,1", "-0", "1_0", "0x10", " 42 ", "4.5E3", '"39.1"']))
missing = st.sampled_from(["", "NA", "nan", "NULL", "-", "?", "#N/A", " "])
garbage = st.text(max_size=12)
quoted = st.text(max_size=8).map(lambda t: '"' + t.replace('"', '""') + '"')
broken_quote = st.text(max_size=6).map(lambda t: '"' + t)
islands = st.sampled_from(["Biscoe", "Dream", "Torgersen", "biscoe", "Île", "Dréam", "Atlantis", '"Biscoe, N"'])
species = st.sampled_from(["0", "1", "2", "Adelie", "gentoo", "Chinstrap", "1.0"])
anything = st.one_of(numbers, missing, garbage, quoted, broken_quote, islands, species,
                     st.sampled_from(["3", "Emperor", "-1"]))
# What a column holds in a clean row; a damaged row has one cell that may be anything.
USUAL = {ISLAND: st.one_of(islands, islands, missing), LABEL: st.one_of(species, species, missing)}
USUAL.update({name: st.one_of(*[plausible] * 6, missing) for name in MEASUREMENTS})
EXTRA_COLUMNS = ["Sex", "Year", "", "Comment", "Sex", "Year", "Island"]


@st.composite
def csv_bytes(draw):
    """A whole file: header, rows, delimiter, line endings, encoding, and sometimes raw damage."""
    names = list(COLUMNS)
    if draw(st.integers(0, 5)) == 0:
        names.remove(draw(st.sampled_from(COLUMNS)))  # a missing column
    names += draw(st.lists(st.sampled_from(EXTRA_COLUMNS), max_size=2))
    names = draw(st.permutations(names))
    header = [draw(spellings)(name) for name in names]
    delimiter = draw(st.sampled_from([",", ";", "\t", "|"]))
    row_delimiter = delimiter if draw(st.integers(0, 9)) else ","  # a row written by another tool
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))

    def row():
        fields = [draw(USUAL.get(name, garbage)) for name in names]
        if draw(st.integers(0, 4)) == 0:  # a damaged cell
            fields[draw(st.integers(0, len(fields) - 1))] = draw(anything)
        if draw(st.integers(0, 9)) == 0:  # ragged
            fields = fields[:-1] if draw(st.booleans()) else fields + [draw(anything)]
        return row_delimiter.join(fields)

    lines = [delimiter.join(header)] + [row() for _ in range(draw(st.integers(0, 12)))]
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(["", "  ", lines[0]])))
    text = newline.join(lines) + draw(st.sampled_from(["", newline, newline * 2]))
    data = text.encode(draw(st.sampled_from(ENCODINGS)), errors="replace")
    damage = draw(st.sampled_from(["none"] * 12 + ["truncate", "nul", "bytes"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif damage == "nul":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + b"\x00" + data[at:]
    elif damage == "bytes":
        data = draw(st.binary(max_size=200))
    return data


def check_frame(frame, invalid, drop_invalid):
    """What every caller may rely on when the reader returns."""
    assert list(frame.columns) == ["Row", *COLUMNS]
    assert len(frame) >= 1 and invalid >= 0 and (drop_invalid or invalid == 0)
    rows = frame["Row"].tolist()
    assert all(isinstance(r, int) for r in rows) and rows == sorted(set(rows)) and rows[0] >= 2
    for name in MEASUREMENTS:
        for value in frame[name]:
            assert math.isnan(value) or 0 < value < MAX_MEASUREMENT, (name, value)
    assert all(math.isnan(v) or v in (0.0, 1.0, 2.0) for v in frame[LABEL])
    assert all(i is None or (isinstance(i, str) and i == i.strip() and i) for i in frame[ISLAND])


def check_error(error, path):
    message = str(error)
    assert message.startswith(f"{path}: ") and "\n" not in message and "\r" not in message, message
    assert len(message) < 1000
    event("error: " + message[len(str(path)) + 2:].split(";")[0].split(":")[-1].strip()[:30])


# --- the reader ---------------------------------------------------------------------------------------------

@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=csv_bytes(), drop_invalid=st.booleans(), require_label=st.booleans())
def test_any_csv_is_a_valid_frame_or_a_one_line_error(data, drop_invalid, require_label):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "penguins.csv"
        path.write_bytes(data)
        try:
            frame, invalid = read_penguins_csv(path, require_label=require_label, drop_invalid=drop_invalid)
        except LabError as e:
            check_error(e, path)
            return
    check_frame(frame, invalid, drop_invalid)
    event("frame")


@settings(max_examples=60, deadline=None, database=None)
@given(data=st.binary(max_size=2000))
def test_any_bytes_are_a_valid_frame_or_a_one_line_error(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "penguins.csv"
        path.write_bytes(data)
        try:
            frame, invalid = read_penguins_csv(path)
        except LabError as e:
            check_error(e, path)
            return
    check_frame(frame, invalid, False)
    event("frame")


# --- end to end through `penguin-lab run` ----------------------------------------------------------------

@st.composite
def mostly_real_csv(draw):
    """Real rows (enough of each species to split, or not), with some damage, in any dress."""
    rows = draw(st.lists(st.sampled_from(SHIPPED_ROWS), min_size=0, max_size=40))
    if draw(st.integers(0, 3)):
        rows += SHIPPED_ROWS[:: draw(st.integers(15, 60))]  # a spread over all three species
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 3]))):
        bad = draw(st.sampled_from(["Biscoe,x,13.2,211,4500,1", "Dream,46.5,17.9,192,3500,Emperor",
                                    "Biscoe,46.1", "Torgersen,-39.1,18.7,181,3750,0", "Biscoe,NA,13.2,211,4500,1",
                                    'Biscoe,"46.1,13.2,211,4500,1']))
        rows.insert(draw(st.integers(0, len(rows))), bad)
    header = list(draw(st.permutations(COLUMNS)))
    order = [COLUMNS.index(name) for name in header]
    delimiter = draw(st.sampled_from([",", ";", "\t"]))
    lines = [delimiter.join(header)] + [delimiter.join(_reorder(row.split(","), order)) for row in rows]
    text = draw(st.sampled_from(["\n", "\r\n"])).join(lines) + "\n"
    return text.encode(draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16"])))


def _reorder(fields, order):
    return [fields[i] if i < len(fields) else "" for i in order] if len(fields) == len(order) else fields


@pytest.mark.usefixtures("spark")
@settings(max_examples=20, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.one_of(mostly_real_csv(), mostly_real_csv(), csv_bytes()), drop_invalid=st.booleans())
def test_run_ends_with_complete_results_or_one_line_and_nothing_written(data, drop_invalid):
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        (folder / "penguins.csv").write_bytes(data)
        out = folder / "results" / "run"
        args = ["run", "--data", str(folder / "penguins.csv"), "--out", str(out), "--epochs", "1"]
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(args + (["--drop-invalid"] if drop_invalid else []))
        errors = [line for line in stderr.getvalue().splitlines() if line.startswith("penguin-lab: error:")]
        assert "Traceback" not in stderr.getvalue()
        event(f"exit {code}" + (": " + errors[0].split(".csv: ", 1)[-1].split(";")[0][:40] if errors else ""))
        if code == 0:
            assert errors == []
            assert sorted(p.name for p in out.parent.iterdir()) == ["run"]
            assert sorted(p.name for p in out.iterdir()) == ["accuracy.png", "confusion.png", "loss.png",
                                                            "metrics.json", "model", "prepared", "weights.txt"]
            metrics = json.loads((out / "metrics.json").read_text())
            assert metrics["train_rows"] + metrics["test_rows"] + metrics["incomplete_rows"] \
                + metrics["duplicate_rows"] == metrics["input_rows"]
            load_model(out / "model")
        else:
            assert code == 2, stderr.getvalue()
            assert len(errors) == 1, stderr.getvalue()
            assert not out.exists() and (not out.parent.exists() or list(out.parent.iterdir()) == [])
