"""Every shape a penguin CSV takes: what read_penguins_csv accepts, and the one-line error for the rest.

Errors read `FILE: row N, column 'X': what is wrong; expected ...`. The reader is called in process;
a few checks go through `penguin-lab run` / `predict --csv` to see exit code 2 and nothing in --out.
"""

import codecs
import json
import math
import os
import tempfile
import threading

import numpy as np

import pytest

from conftest import DATA, assert_one_line_error, run_cli
from penguin_lab.config import TrainConfig
from penguin_lab.data import prepare_splits
from penguin_lab.errors import LabError
from penguin_lab.read import read_penguins_csv
from penguin_lab.validate import MAX_LINE_CHARS, MISSING, MISSING_SPELLINGS

HEADER = "Island,CulmenLength,CulmenDepth,FlipperLength,BodyMass,Species"
ROWS = ["Torgersen,39.1,18.7,181,3750,0", "Biscoe,46.1,13.2,211,4500,1", "Dream,46.5,17.9,192,3500,2"]
GOOD = HEADER + "\n" + "\n".join(ROWS) + "\n"
EXPECTED = [["Torgersen", 39.1, 18.7, 181.0, 3750.0, 0.0], ["Biscoe", 46.1, 13.2, 211.0, 4500.0, 1.0],
            ["Dream", 46.5, 17.9, 192.0, 3500.0, 2.0]]


def write(tmp_path, content, name="penguins.csv"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def values(frame):
    return frame.drop(columns="Row").astype(object).values.tolist()


def read(tmp_path, content, **options):
    frame, _ = read_penguins_csv(write(tmp_path, content), **options)
    return frame


def error(tmp_path, content, **options) -> str:
    path = write(tmp_path, content)
    with pytest.raises(LabError) as caught:
        read_penguins_csv(path, **options)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and "\r" not in message, message
    return message[len(str(path)) + 2:]


# --- empty and almost empty ---------------------------------------------------------------------------

@pytest.mark.parametrize("content", ["", "\n\n", "  \r\n\t\n"], ids=["empty", "newlines", "whitespace"])
def test_an_empty_file_is_an_error_naming_the_header_it_needs(tmp_path, content):
    assert error(tmp_path, content) == ("the file is empty; expected a header line with "
                                        "Island, CulmenLength, CulmenDepth, FlipperLength, BodyMass, Species")


def test_a_header_without_rows_is_an_error(tmp_path):
    assert error(tmp_path, HEADER + "\n\n") == "row 1: no data rows after the header; expected one row per penguin"


def test_blank_lines_anywhere_are_skipped_and_rows_keep_their_line_numbers(tmp_path):
    frame = read(tmp_path, "\n\n" + HEADER + "\n\n" + ROWS[0] + "\n   \n" + ROWS[1] + "\n" + ROWS[2] + "\n\n\n")
    assert values(frame) == EXPECTED
    assert frame["Row"].tolist() == [5, 7, 8]


# --- encodings and line endings ----------------------------------------------------------------------

@pytest.mark.parametrize("encoding,bom", [("utf-8", codecs.BOM_UTF8), ("utf-16-le", codecs.BOM_UTF16_LE),
                                          ("utf-16-be", codecs.BOM_UTF16_BE), ("utf-16-le", b""),
                                          ("utf-16-be", b""), ("utf-32-le", codecs.BOM_UTF32_LE)])
def test_unicode_files_with_or_without_a_byte_order_mark(tmp_path, encoding, bom):
    text = GOOD.replace("Dream", "Drëam 島")
    frame = read(tmp_path, bom + text.encode(encoding))
    assert frame["Island"].tolist() == ["Torgersen", "Biscoe", "Drëam 島"]
    assert values(frame)[0] == EXPECTED[0]


def test_windows_1252_island_names_are_decoded(tmp_path):
    text = GOOD.replace("Torgersen", "Île Torgersen").replace("Dream", "Dréam – north")
    frame = read(tmp_path, text.encode("cp1252"))
    assert frame["Island"].tolist() == ["Île Torgersen", "Biscoe", "Dréam – north"]


def test_windows_1252_found_only_far_into_a_file_is_still_decoded(tmp_path):
    """The first 64 KB are plain ASCII, so the file looks like UTF-8 until the accented name."""
    rows = [ROWS[0]] * 3000 + ["Bïscoe,46.1,13.2,211,4500,1"]
    frame = read(tmp_path, (HEADER + "\n" + "\n".join(rows) + "\n").encode("cp1252"))
    assert len(frame) == 3001 and frame["Island"].iloc[-1] == "Bïscoe"


def test_invalid_utf16_is_an_error(tmp_path):
    assert "not valid utf-16 text" in error(tmp_path, codecs.BOM_UTF16_LE + GOOD.encode("utf-16-le") + b"\x00")


@pytest.mark.parametrize("newline", ["\r\n", "\r", "\n"], ids=["crlf", "cr", "lf"])
def test_every_line_ending(tmp_path, newline):
    frame = read(tmp_path, newline.join([HEADER, *ROWS]) + newline)
    assert values(frame) == EXPECTED
    assert frame["Row"].tolist() == [2, 3, 4]


def test_mixed_line_endings(tmp_path):
    frame = read(tmp_path, HEADER + "\r\n" + ROWS[0] + "\n" + ROWS[1] + "\r" + ROWS[2])
    assert values(frame) == EXPECTED


# --- delimiters, decimal commas, quoting --------------------------------------------------------------

@pytest.mark.parametrize("delimiter", [";", "\t", "|"], ids=["semicolon", "tab", "pipe"])
def test_other_delimiters_are_recognised_from_the_header(tmp_path, delimiter):
    assert values(read(tmp_path, GOOD.replace(",", delimiter))) == EXPECTED


def test_decimal_comma_with_semicolons(tmp_path):
    text = GOOD.replace(",", ";").replace("39.1", "39,1").replace("13.2", "13,2")
    assert values(read(tmp_path, text)) == EXPECTED


def test_excels_sep_line_names_the_delimiter(tmp_path):
    assert values(read(tmp_path, "sep=;\r\n" + GOOD.replace(",", ";"))) == EXPECTED


def test_a_decimal_comma_in_a_comma_separated_file_is_not_guessed(tmp_path):
    """"3,750" could be 3.75 or 3750: with commas as delimiters it is an error, not a guess."""
    message = error(tmp_path, HEADER + "\n" + 'Torgersen,39.1,18.7,181,"3,750",0\n')
    assert message.startswith("row 2, column 'BodyMass': '3,750' is not a number; expected a positive number of g")


def test_quoted_fields_may_hold_delimiters_quotes_and_newlines(tmp_path):
    text = (HEADER + "\n" + '"Biscoe, north",46.1,13.2,211,4500,1\n' + '"Dream ""east""", "46.5",17.9,192,3500,2\n'
            + '"Torg\nersen",39.1,18.7,181,3750,0\n' + ROWS[1] + "\n")
    frame = read(tmp_path, text)
    assert frame["Island"].tolist() == ["Biscoe, north", 'Dream "east"', "Torg\nersen", "Biscoe"]
    assert frame["CulmenLength"].tolist() == [46.1, 46.5, 39.1, 46.1]
    assert frame["Row"].tolist() == [2, 3, 4, 6]  # a row is numbered by the line it starts on


def test_a_quote_left_open_is_an_error_at_the_row_where_it_opens(tmp_path):
    text = HEADER + "\n" + ROWS[0] + "\n" + '"Biscoe,46.1,13.2,211,4500,1\n' + ROWS[2] + "\n"
    assert error(tmp_path, text).startswith("row 3: a quoted field that starts here is never closed; expected")


def test_text_after_a_closing_quote_is_an_error(tmp_path):
    message = error(tmp_path, HEADER + "\n" + '"Biscoe" x,46.1,13.2,211,4500,1\n')
    assert message == ("row 2: text after the closing quote of a field; expected well-formed CSV "
                       "(quotes around a whole field, doubled inside it)")


# --- headers ---------------------------------------------------------------------------------------------

def test_a_required_column_twice_in_the_header_is_an_error(tmp_path):
    text = "Island,CulmenLength,CulmenDepth,culmen_length,FlipperLength,BodyMass,Species\n" + "\n".join(ROWS)
    assert error(tmp_path, text) == ("row 1, column 'CulmenLength': appears 2 times in the header (columns 2, 4); "
                                     "expected it once")


def test_an_extra_column_twice_is_ignored(tmp_path):
    text = "Note,Island,CulmenLength,CulmenDepth,FlipperLength,BodyMass,Species,Note\n"
    text += "\n".join(f"x,{row},y" for row in ROWS)
    assert values(read(tmp_path, text)) == EXPECTED


def test_a_header_repeated_in_the_data_is_skipped_and_counted(tmp_path):
    """`cat a.csv b.csv` leaves b's header in the middle."""
    frame = read(tmp_path, GOOD + GOOD.lower())
    assert len(frame) == 6 and frame.attrs["repeated_header_rows"] == 1
    assert frame["Row"].tolist() == [2, 3, 4, 6, 7, 8]


def test_a_missing_column_is_named(tmp_path):
    text = "Island,CulmenLength,FlipperLength,BodyMass,Species\nBiscoe,46.1,211,4500,1\n"
    assert error(tmp_path, text).startswith("row 1, column 'CulmenDepth': missing from the header; expected a header "
                                            "with Island, CulmenLength, CulmenDepth, FlipperLength, BodyMass, Species")


def test_several_missing_columns_are_all_named_and_what_was_found_is_shown(tmp_path):
    message = error(tmp_path, "island;bill_length_mm;bill_depth_mm\nBiscoe;46.1;13.2\n")
    assert message.startswith("row 1, columns 'CulmenLength', 'CulmenDepth', 'FlipperLength', 'BodyMass', 'Species': ")
    assert "found 'island', 'bill_length_mm', 'bill_depth_mm'" in message


def test_a_file_without_a_header_says_so(tmp_path):
    message = error(tmp_path, "\n".join(ROWS))
    assert message.startswith("row 1, columns 'Island', 'CulmenLength'") and "found 'Torgersen', '39.1'" in message


def test_the_label_column_is_optional_only_for_prediction(tmp_path):
    text = "Island,CulmenLength,CulmenDepth,FlipperLength,BodyMass\nBiscoe,46.1,13.2,211,4500\n"
    assert "column 'Species': missing from the header" in error(tmp_path, text)
    frame = read(tmp_path, text, require_label=False)
    assert frame["Island"].tolist() == ["Biscoe"] and math.isnan(frame["Species"].iloc[0])


def test_extra_and_reordered_columns(tmp_path):
    text = "Species,Comment,BodyMass,Island,FlipperLength,CulmenDepth,Year,CulmenLength\n"
    text += "0,first one,3750,Torgersen,181,18.7,2007,39.1\n2,,3500,Dream,192,17.9,2008,46.5\n"
    assert values(read(tmp_path, text)) == [EXPECTED[0], EXPECTED[2]]


def test_names_and_values_match_ignoring_case_spaces_and_separators(tmp_path):
    text = ' island , "Culmen Length",culmen_depth, FLIPPER-LENGTH ,bodymass , SPECIES\n'
    text += "  Torgersen ,  39.1 , 18.7,181 ,3750 , 0 \n"
    assert values(read(tmp_path, text)) == [EXPECTED[0]]


def test_an_index_column_without_a_name_is_ignored(tmp_path):
    """pandas' to_csv() writes the index as a first column with an empty name."""
    text = "," + HEADER + "\n" + "\n".join(f"{i},{row}" for i, row in enumerate(ROWS)) + "\n"
    assert values(read(tmp_path, text)) == EXPECTED


# --- values ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spelling", sorted(MISSING | {"NA", "NaN", "NULL", "N/A", "#N/A", " "}))
def test_missing_value_spellings_become_missing(tmp_path, spelling):
    text = HEADER + "\n" + f"Torgersen,{spelling},18.7,181,3750,0\n{spelling},39.1,18.7,181,3750,{spelling}\n"
    frame = read(tmp_path, text)
    assert math.isnan(frame["CulmenLength"].iloc[0]) and frame["Island"].iloc[1] is None
    assert math.isnan(frame["Species"].iloc[1])


def test_missing_values_are_dropped_and_counted_by_the_spark_preparation(tmp_path, spark):
    distinct = [f"{island},{40 + i / 10:.1f},18.7,190,4000,{i % 3}"
                for i, island in zip(range(30), ["Biscoe", "Dream", "Torgersen"] * 10)]
    incomplete = ["Torgersen,NA,18.7,181,3750,0", "NA,39.1,18.7,181,3750,0", "Biscoe,46.1,13.2,211,4500,"]
    raw = read(tmp_path, HEADER + "\n" + "\n".join(distinct + distinct[:2] + incomplete) + "\n")
    prepared = prepare_splits(spark, raw, TrainConfig())
    assert prepared.counts["input_rows"] == 35
    assert prepared.counts["incomplete_rows"] == 3
    assert prepared.counts["duplicate_rows"] == 2
    assert prepared.counts["train_rows"] + prepared.counts["test_rows"] == 30


def test_a_value_that_is_not_a_number_names_row_and_column(tmp_path):
    text = HEADER + "\n" + ROWS[0] + "\n" + "Biscoe,46.1,thirteen,211,4500,1\n"
    assert error(tmp_path, text) == ("row 3, column 'CulmenDepth': 'thirteen' is not a number; expected a positive "
                                     "number of mm below 1e+06 (or empty if unknown)")


@pytest.mark.parametrize("value", ["-39.1", "0", "-0", "inf", "-Infinity", "+nan", "1e6", "1e400"])
def test_impossible_measurements_are_errors(tmp_path, value):
    message = error(tmp_path, HEADER + "\n" + f"Biscoe,46.1,13.2,{value},4500,1\n")
    assert message.startswith(f"row 2, column 'FlipperLength': '{value}' is not a possible measurement; expected a "
                              f"positive number of mm below 1e+06")


# Java's parser, behind Spark's cast, reads the last seven: hexadecimal, type suffixes, and control characters at
# either end.
@pytest.mark.parametrize("value", ["39_1", "39.1mm", "0x27", "39..1", "3 9", "1e", "+", "-.",
                                   "0X1P3", "-0x1.8p1", "39.1d", "39F", "1e3D", "\x0139.1", "39.1\x01"])
def test_almost_numbers_are_not_numbers(tmp_path, value):
    before = "\n".join(ROWS * 10)  # a control character in a few bytes would be a binary file
    message = error(tmp_path, f"{HEADER}\n{before}\nBiscoe,{value},13.2,211,4500,1\n")
    assert message.startswith(f"row 32, column 'CulmenLength': {value!r} is not a number;")


@pytest.mark.parametrize("row", ["Biscoe,+46.10,1.32e1,211.0,4.5E3,1", "Biscoe,46.1,.132e+2,211.,+45e2,1.0"])
def test_numbers_in_other_notations_are_read(tmp_path, row):
    frame = read(tmp_path, HEADER + "\n" + row + "\n")
    assert values(frame) == [EXPECTED[1]]


def test_no_spelling_of_missing_starts_with_a_digit():
    """is_missing() skips its look-up for a value that starts with a digit."""
    assert not [word for word in MISSING_SPELLINGS if word[:1].isdigit()]


def test_a_long_or_multi_line_bad_value_is_shown_short_and_escaped(tmp_path):
    message = error(tmp_path, HEADER + "\n" + 'Biscoe,"4\n6' + "x" * 500 + '",13.2,211,4500,1\n')
    assert "'4\\n6xxxxxxx" in message and "...'" in message and len(message) < 300


@pytest.mark.parametrize("label", ["3", "-1", "1.5", "Emperor", "yes"])
def test_an_unknown_species_is_an_error(tmp_path, label):
    message = error(tmp_path, HEADER + "\n" + f"Biscoe,46.1,13.2,211,4500,{label}\n")
    assert message == (f"row 2, column 'Species': '{label}' is not a species; expected 0, 1, 2 or a species name "
                       f"(Adelie, Gentoo, Chinstrap)")


def test_species_by_name_number_or_full_name(tmp_path):
    labels = ["Adelie", "gentoo", "CHINSTRAP", "Adélie", "Gentoo penguin (Pygoscelis papua)", "2.0", " 1 "]
    text = HEADER + "\n" + "\n".join(f"Biscoe,46.1,13.2,211,4500,{label}" for label in labels) + "\n"
    assert read(tmp_path, text)["Species"].tolist() == [0, 1, 2, 0, 1, 2, 1]


def test_drop_invalid_drops_and_counts_every_kind_of_bad_row(tmp_path):
    text = (HEADER + "\n" + ROWS[0] + "\n" + "Biscoe,x,13.2,211,4500,1\n" + "Biscoe,46.1,13.2,-211,4500,1\n"
            + "Biscoe,46.1,13.2,211,4500,Emperor\n" + "Biscoe,46.1\n" + "Dream,46.5,17.9,192,3500,2,oops\n"
            + ROWS[2] + "\n" + "Biscoe,NA,13.2,211,4500,1\n")
    frame, invalid = read_penguins_csv(write(tmp_path, text), drop_invalid=True)
    assert invalid == 5
    assert frame["Row"].tolist() == [2, 8, 9]  # the incomplete row stays: Spark drops and counts it
    with pytest.raises(LabError, match="row 3, column 'CulmenLength'"):
        read_penguins_csv(tmp_path / "penguins.csv")


def test_drop_invalid_with_nothing_valid_left_is_an_error(tmp_path):
    message = error(tmp_path, HEADER + "\nBiscoe,x,1,2,3,0\nDream,1,1,1,1,9\n", drop_invalid=True)
    assert message == ("all 2 data rows are invalid and were dropped (--drop-invalid); "
                       "expected at least one valid row")


# --- ragged rows -------------------------------------------------------------------------------------------

def test_a_row_with_too_few_fields_is_an_error(tmp_path):
    message = error(tmp_path, HEADER + "\n" + ROWS[0] + "\n" + "Biscoe,46.1,13.2\n")
    assert message == "row 3: has 3 fields; expected 6 as in the header (delimiter ',')"


def test_a_row_with_extra_values_is_an_error_because_its_values_may_have_shifted(tmp_path):
    message = error(tmp_path, HEADER + "\n" + "Torgersen,39,1,18,7,181,3750,0\n")
    assert message.startswith("row 2: has 8 fields; expected 6 as in the header (is a value with a ',' in it")


def test_trailing_empty_fields_are_fine(tmp_path):
    assert values(read(tmp_path, HEADER + "\n" + "\n".join(row + ",," for row in ROWS))) == EXPECTED


def test_rows_may_omit_trailing_extra_columns(tmp_path):
    text = HEADER + ",Comment\n" + ROWS[0] + ",nice\n" + ROWS[1] + "\n"
    assert values(read(tmp_path, text)) == EXPECTED[:2]


# --- too little data to split (through the Spark preparation) -----------------------------------------------

def test_a_species_with_one_row_cannot_be_split(tmp_path, spark, monkeypatch):
    rows = [ROWS[0], ROWS[0].replace("39.1", "40.1"), ROWS[1], ROWS[1].replace("46.1", "47.1"), ROWS[2]]
    raw = read(tmp_path, HEADER + "\n" + "\n".join(rows) + "\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with pytest.raises(LabError, match="species Chinstrap has 1 complete row; a stratified split needs at least 2"):
        prepare_splits(spark, raw, TrainConfig(), where="few.csv")
    assert list(scratch.glob("penguin-lab-prepared-*")) == []  # the refused split's temporary Parquet is gone


def test_one_species_only_or_no_complete_row_cannot_be_split(tmp_path, spark):
    one = read(tmp_path, HEADER + "\n" + ROWS[0] + "\n" + ROWS[0].replace("39.1", "40.1") + "\n")
    with pytest.raises(LabError, match="only one species"):
        prepare_splits(spark, one, TrainConfig(), where="one.csv")
    none = read(tmp_path, HEADER + "\n" + "Biscoe,,13.2,211,4500,1\n")
    with pytest.raises(LabError, match="no complete rows to train on"):
        prepare_splits(spark, none, TrainConfig(), where="none.csv")
    no_island = read(tmp_path, HEADER + "\n" + ",39.1,18.7,181,3750,0\n")  # no island names at all
    with pytest.raises(LabError, match="no complete rows to train on"):
        prepare_splits(spark, no_island, TrainConfig(), where="no_island.csv")


# --- big, binary and missing files ------------------------------------------------------------------------

def test_a_large_file_is_read_as_a_stream(tmp_path):
    rng = np.random.default_rng(0)
    n = 200_000
    islands = np.array(["Biscoe", "Dream", "Torgersen"])[rng.integers(0, 3, n)]
    lengths = np.round(rng.uniform(30, 60, n), 1)
    body = "\n".join(f"{i},{c},18.7,190,4000,{s}" for i, c, s in zip(islands, lengths, rng.integers(0, 3, n)))
    path = write(tmp_path, HEADER + "\n" + body + "\n")
    frame, _ = read_penguins_csv(path)
    assert len(frame) == n and frame["Row"].iloc[-1] == n + 1
    assert np.allclose(frame["CulmenLength"].to_numpy(), lengths)
    assert frame["Island"].nunique() == 3
    # One string object per island name, not one per row.
    assert len({id(name) for name in frame["Island"]}) == 3


def test_an_endless_line_is_an_error_not_a_memory_blowup(tmp_path):
    message = error(tmp_path, HEADER + "\n" + "Biscoe," + "4" * (MAX_LINE_CHARS + 10))
    assert message.startswith(f"row 2: longer than {MAX_LINE_CHARS} characters; expected CSV rows")


@pytest.mark.parametrize("content,what", [
    (bytes(range(256)) * 4, "this is a binary file"),
    (b"PK\x03\x04" + b"\x00" * 100, "ZIP archive (an Excel .xlsx workbook?)"),
    (b"\x1f\x8b\x08\x00" + b"\x00" * 100, "gzip archive"),
    (b"\x80\x04\x95" + b"\x00" * 100, "a pickle"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "PNG image"),
    (b"\x01\x02\x03\x04\x05\x06\x07" * 30, "this is a binary file"),
], ids=["random", "xlsx", "gzip", "pickle", "png", "controls"])
def test_binary_files_are_refused_by_what_they_are(tmp_path, content, what):
    message = error(tmp_path, content)
    assert what in message and message.endswith("expected a CSV text file")


def test_a_folder_a_missing_file_and_an_unreadable_file(tmp_path):
    with pytest.raises(LabError, match=f"^{tmp_path}: is a folder; expected a CSV file$"):
        read_penguins_csv(tmp_path)
    with pytest.raises(LabError, match="nope.csv: no such file; expected a CSV file$"):
        read_penguins_csv(tmp_path / "nope.csv")
    if os.geteuid() == 0:
        pytest.skip("root can read any file")
    path = write(tmp_path, GOOD)
    path.chmod(0)
    with pytest.raises(LabError, match="cannot open: Permission denied"):
        read_penguins_csv(path)


def test_a_file_name_with_a_line_break_still_gives_one_line(tmp_path, capsys):
    from penguin_lab.cli import main

    assert main(["run", "--data", str(tmp_path / "two\nlines.csv"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == f"penguin-lab: error: {tmp_path}/two\\nlines.csv: no such file; expected a CSV file\n"


def test_a_pipe_is_read_like_a_file(tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(GOOD.replace("Dream", "Dréam").encode("cp1252")))
    writer.start()
    frame, _ = read_penguins_csv(fifo)
    writer.join()
    assert frame["Island"].tolist() == ["Torgersen", "Biscoe", "Dréam"]


# --- through the command line ------------------------------------------------------------------------------

def test_run_stops_before_training_with_one_line_and_an_empty_out(tmp_path):
    data = write(tmp_path, HEADER + "\n" + ROWS[0] + "\n" + "Biscoe,46.1,13.2,211,heavy,1\n")
    result = run_cli("run", "--data", str(data), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, f"{data}: row 3, column 'BodyMass': 'heavy' is not a number; expected")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["penguins.csv"]


def test_predict_csv_uses_the_same_checks(tmp_path, saved_model):
    data = write(tmp_path, "Island,CulmenLength,CulmenDepth,FlipperLength,BodyMass\nBiscoe,46.1,13.2,211,-4\n")
    result = run_cli("predict", "--model", str(saved_model), "--csv", str(data))
    assert_one_line_error(result, f"{data}: row 2, column 'BodyMass': '-4' is not a possible measurement")


def test_run_reports_every_dropped_row_in_its_metrics(tmp_path, spark, capsys):
    """In process, with the session's Spark: the counts a user sees for a messy file."""
    from penguin_lab.cli import main

    clean = DATA.read_text().splitlines(keepends=True)[1:]
    messy = (HEADER + "\n" + "".join(clean[:150]) + "Biscoe,x,13.2,211,4500,1\n" + "Dream,46.5,17.9,192,3500,Emperor\n"
             + HEADER + "\n" + "".join(clean[150:]) + clean[0] + clean[1] + "Torgersen,NA,18.7,181,3750,0\n")
    data = write(tmp_path, messy)
    assert main(["run", "--data", str(data), "--out", str(tmp_path / "out"), "--epochs", "1"]) == 2
    assert "row 152, column 'CulmenLength'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

    assert main(["run", "--data", str(data), "--out", str(tmp_path / "out"), "--epochs", "1", "--drop-invalid"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["invalid_rows"] == 2 and metrics["repeated_header_rows"] == 1
    assert metrics["input_rows"] == 344 + 3 and metrics["incomplete_rows"] == 2 + 1
    assert metrics["duplicate_rows"] == 2
    assert "not trained on: 3 incomplete, 2 invalid, 2 duplicate" in capsys.readouterr().out
