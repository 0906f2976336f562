"""What Spark reads besides one CSV file: a folder of CSV files, Parquet files and folders, a table."""

import pandas as pd
import pytest

from conftest import DATA, assert_one_line_error, run_cli
from penguin_lab.errors import LabError
from penguin_lab.read import read_penguins, read_penguins_csv

HEADER = "Island,CulmenLength,CulmenDepth,FlipperLength,BodyMass,Species\n"


def test_a_folder_of_csv_files_is_read_whole_each_with_its_own_header(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "part-0.csv").write_text(HEADER + "Torgersen,39.1,18.7,181,3750,0\nBiscoe,46.1,13.2,211,4500,1\n")
    # another column order in the second file: columns are found by name in each file
    (folder / "part-1.csv").write_text("Species,Island,BodyMass,FlipperLength,CulmenDepth,CulmenLength\n"
                                       "2,Dream,3500,192,17.9,46.5\n")
    (folder / "_SUCCESS").write_text("")
    frame, invalid = read_penguins_csv(folder)
    assert sorted(frame["Island"]) == ["Biscoe", "Dream", "Torgersen"] and invalid == 0
    assert frame.loc[frame["Island"] == "Dream", "BodyMass"].item() == 3500.0


def test_an_error_in_a_folder_names_the_file_and_its_line(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "part-0.csv").write_text(HEADER + "Torgersen,39.1,18.7,181,3750,0\n")
    (folder / "part-1.csv").write_text(HEADER + "Biscoe,46.1,13.2,211,4500,1\nDream,46.5,x,192,3500,2\n")
    with pytest.raises(LabError) as error:
        read_penguins_csv(folder)
    assert str(error.value).startswith(f"{folder / 'part-1.csv'}: row 3, column 'CulmenDepth': 'x' is not a number")


def test_symlinked_files_are_each_known_by_the_name_in_the_folder(tmp_path):
    # Spark reads a link's target: links named unlike their targets, and two links to one file, are still told apart.
    targets, folder = tmp_path / "targets", tmp_path / "links"
    targets.mkdir()
    folder.mkdir()
    (targets / "x.csv").write_text(HEADER + "Torgersen,39.1,18.7,181,3750,0\n")
    (targets / "y.csv").write_text(HEADER + "Biscoe,46.1,13.2,211,4500,1\nDream,46.5,x,192,3500,2\n")
    for link, target in (("a.csv", "y.csv"), ("b.csv", "x.csv"), ("c.csv", "x.csv")):
        (folder / link).symlink_to(targets / target)
    with pytest.raises(LabError) as error:
        read_penguins_csv(folder)
    assert str(error.value).startswith(f"{folder / 'a.csv'}: row 3, column 'CulmenDepth': 'x' is not a number")
    (targets / "y.csv").write_text(HEADER + "Biscoe,46.1,13.2,211,4500,1\nDream,46.5,17.9,192,3500,2\n")
    frame, _ = read_penguins_csv(folder)
    assert sorted(frame["Island"]) == ["Biscoe", "Dream", "Torgersen", "Torgersen"]


def test_parquet_files_and_folders_follow_the_same_rules(tmp_path, spark):
    frame = pd.read_csv(DATA)
    frame.to_parquet(tmp_path / "penguins.parquet")
    read, _ = read_penguins_csv(tmp_path / "penguins.parquet")
    assert len(read) == 344 and read["Row"].tolist() == list(range(1, 345))  # rows of the file, from 1
    folder = tmp_path / "as-folder"
    spark.createDataFrame(frame.dropna()).coalesce(2).write.parquet(str(folder))
    penguins = read_penguins(spark, folder)
    assert penguins.summary.data_rows == 342 and penguins.summary.invalid_rows == 0
    frame.loc[10, "BodyMass"] = -5.0
    frame.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(LabError, match=r"bad.parquet: row 11, column 'BodyMass': '-5.0' is not a possible measurement"):
        read_penguins_csv(tmp_path / "bad.parquet")


def test_a_parquet_folder_is_one_scan_that_still_knows_each_record_s_file_and_row(tmp_path, spark):
    # Names Spark spells quoted in its paths (space, %, +, brackets, braces, beyond ASCII), and one file with other
    # column types and order: two scans, each record still placed in its own file.
    folder = tmp_path / "parts"
    folder.mkdir()
    frame = pd.read_csv(DATA)
    names = ["a b.parquet", "c%41.parquet", "x+y.parquet", "z{1}.parquet", "é[1].parquet"]
    chunks = [frame.iloc[60 * k:60 * (k + 1)].copy() for k in range(len(names))]
    chunks[3] = chunks[3][["Species", "BodyMass", "Island", "CulmenLength", "CulmenDepth", "FlipperLength"]]
    chunks[3]["BodyMass"] = chunks[3]["BodyMass"].astype("float32")
    chunks[4].loc[chunks[4].index[10], "BodyMass"] = -1.0  # row 11 of the last file by name
    chunks[2].loc[chunks[2].index[20], "CulmenDepth"] = -2.0  # row 21 of x+y.parquet: the first in file order
    for name, chunk in zip(names, chunks):
        chunk.to_parquet(folder / name, index=False)
    with pytest.raises(LabError) as error:
        read_penguins(spark, folder)
    assert str(error.value).startswith(f"{folder / 'x+y.parquet'}: row 21, column 'CulmenDepth': '-2.0' is not a")
    (folder / "x+y.parquet").unlink()
    with pytest.raises(LabError) as error:
        read_penguins(spark, folder)
    assert str(error.value).startswith(f"{folder / 'é[1].parquet'}: row 11, column 'BodyMass': '-1.0' is not a")
    penguins = read_penguins(spark, folder, drop_invalid=True)
    per_file = {r["file"]: r["n"] for r in penguins.valid().groupBy("file").count().withColumnRenamed("count", "n")
                .collect()}
    assert per_file == {0: 60, 1: 60, 2: 60, 3: 59}  # the invalid row of é[1].parquet dropped
    assert penguins.files[2] == str(folder / "z{1}.parquet") and penguins.summary.invalid_rows == 1


@pytest.mark.parametrize("labels, bad", [([0, 1, 3], "3"), ([0.0, 2.0, 1.5], "1.5")])
def test_a_number_species_column_in_parquet_is_an_index_of_the_species(tmp_path, labels, bad):
    frame = pd.read_csv(DATA).dropna().head(3).assign(Species=labels)
    frame.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(LabError) as error:
        read_penguins_csv(tmp_path / "bad.parquet")
    assert str(error.value) == (f"{tmp_path / 'bad.parquet'}: row 3, column 'Species': '{bad}' is not a species; "
                                f"expected 0, 1, 2 or a species name (Adelie, Gentoo, Chinstrap)")
    frame.head(2).to_parquet(tmp_path / "good.parquet")
    read, _ = read_penguins_csv(tmp_path / "good.parquet")
    assert read["Species"].tolist() == [float(x) for x in labels[:2]]


def test_a_damaged_parquet_file_is_one_line(tmp_path):
    data = tmp_path / "penguins.parquet"
    data.write_bytes(b"PAR1" + b"\x00" * 100)
    result = run_cli("run", "--data", str(data), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, f"{data}: not a valid Parquet file")
    assert not (tmp_path / "out").exists()


def test_a_table_is_read_by_name(tmp_path, spark):
    frame = pd.read_csv(DATA).dropna()
    spark.createDataFrame(frame).createOrReplaceTempView("penguin_rows")
    spark.sql(f"CREATE DATABASE IF NOT EXISTS lab LOCATION '{tmp_path / 'lab.db'}'")
    spark.sql("DROP TABLE IF EXISTS lab.penguins")
    spark.sql(f"CREATE TABLE lab.penguins USING parquet LOCATION '{tmp_path / 'table'}' AS SELECT * FROM penguin_rows")
    penguins = read_penguins(spark, "lab.penguins")
    assert penguins.summary.data_rows == 342 and penguins.where == "lab.penguins"


def test_the_first_bad_row_of_a_folder_is_in_its_first_file(tmp_path):
    """Records are numbered within each file's scan; the first problem is still found in file order."""
    folder = tmp_path / "parts"
    folder.mkdir()
    rows = "".join(f"Torgersen,{39 + i / 10:.1f},18.7,181,3750,0\n" for i in range(3))
    (folder / "part-0.csv").write_text(HEADER + rows + "Biscoe,46.1,13.2,211,-1,1\n")
    (folder / "part-1.csv").write_text(HEADER + "Dream,46.5,x,192,3500,2\n")
    with pytest.raises(LabError) as error:
        read_penguins_csv(folder)
    assert str(error.value).startswith(f"{folder / 'part-0.csv'}: row 5, column 'BodyMass': '-1'")


def test_rows_of_every_file_in_a_folder_keep_distinct_ids(tmp_path, spark):
    from penguin_lab.config import TrainConfig
    from penguin_lab.data import prepare_splits

    lines = DATA.read_text().splitlines(keepends=True)
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "part-0.csv").write_text("".join(lines[:173]))
    (folder / "part-1.csv").write_text(lines[0] + "".join(lines[173:]))
    prepared = prepare_splits(spark, read_penguins(spark, folder), TrainConfig())
    assert prepared.counts["train_rows"] + prepared.counts["test_rows"] == 342
    assert len(prepared.x_train) == prepared.counts["train_rows"]  # reading the Parquet checks ids are unique


def test_white_space_is_stripped_from_both_ends_and_nothing_else(spark):
    from pyspark.sql import functions as F

    from penguin_lab.validate import WHITESPACE, stripped

    values = [f"{before}Dream{after}" for before in ["", *WHITESPACE] for after in ["", *WHITESPACE]]
    values += ["é", "aé", "Biscoe", "", WHITESPACE, f"x{WHITESPACE}y", "\x7fDream", "!", "~"]
    rows = spark.createDataFrame([(v,) for v in values], "v string").select(stripped(F.col("v")).alias("s")).collect()
    assert [row["s"] for row in rows] == [v.strip(WHITESPACE) for v in values]  # str.strip's and a byte order mark


@pytest.fixture
def tiny_blocks(spark):
    """Spark reads each kilobyte of a file as a block of its own, in a task of its own."""
    before = spark.conf.get("spark.sql.files.maxPartitionBytes")
    spark.conf.set("spark.sql.files.maxPartitionBytes", "1k")
    yield
    spark.conf.set("spark.sql.files.maxPartitionBytes", before)


def _record_across_a_block_boundary(rows: list) -> str:
    """The rows, the 100th of them replaced by one whose quoted island holds a line break at a block boundary."""
    head = HEADER + "".join(rows[:99])
    boundary = -(-(len(head) + 16) // 1024) * 1024
    first = '"Dream' + " " * (boundary - len(head) - len('"Dream\n')) + "\n"
    assert len(head + first) == boundary
    return head + first + '(north)",46.5,17.9,192,3500,2\n' + "".join(rows[100:])


def test_line_numbers_are_right_across_blocks_and_records_split_by_one(tmp_path, spark, tiny_blocks):
    rows = DATA.read_text().splitlines(keepends=True)[1:121]  # 4 kB: a few blocks, each a Spark task
    data = tmp_path / "blocks.csv"
    data.write_text(_record_across_a_block_boundary(rows))
    frame, _ = read_penguins_csv(data, spark=spark)
    assert len(frame) == len(rows)
    island = frame.loc[frame["Row"] == 101, "Island"].item()
    assert island.startswith("Dream ") and island.endswith("\n(north)")
    after = frame[frame["Row"] > 101]  # every later record is one line further down
    assert after["Row"].tolist() == list(range(103, len(rows) + 3))
    assert frame.loc[frame["Row"] == 113, "BodyMass"].item() == float(rows[110].split(",")[4])

    rows[110] = "Biscoe,46.1,13.2,211,heavy,1\n"
    data.write_text(_record_across_a_block_boundary(rows))
    with pytest.raises(LabError) as error:
        read_penguins_csv(data, spark=spark)
    assert str(error.value).startswith(f"{data}: row 113, column 'BodyMass': 'heavy' is not a number")
