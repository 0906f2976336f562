# Databricks notebook source
# MAGIC %md
# MAGIC # 1. Ingest and prepare the penguin data
# MAGIC
# MAGIC We will train a neural network to tell three penguin species apart (Adelie, Gentoo, Chinstrap) from the
# MAGIC island a penguin was seen on and four body measurements. This notebook uses **Spark** to read the data
# MAGIC and get it ready for PyTorch:
# MAGIC
# MAGIC - read the file and check every record,
# MAGIC - remove incomplete and repeated rows,
# MAGIC - encode the island name as a number,
# MAGIC - cast the measurements to floats and scale them to a similar size,
# MAGIC - split the rows into a training set and a test set,
# MAGIC - standardize the inputs with the training rows' mean and standard deviation (notebook 2 says why).
# MAGIC
# MAGIC > **Citation**: the data were collected and made available by Dr. Kristen Gorman and the Palmer Station,
# MAGIC > Antarctica LTER, a member of the Long Term Ecological Research Network (see `data/README.md`).
# MAGIC
# MAGIC The code lives in the `penguin_lab` package at the root of this repository; the notebooks call it and
# MAGIC show the parts worth reading.

# COMMAND ----------

# Make the `penguin_lab` package importable: it sits in the repository root, the parent of this notebook's
# folder (on Databricks the working directory; in a local `python notebooks/...` run, __file__'s folder).
import os, sys
notebook_folder = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
repo_root = os.path.dirname(notebook_folder)
sys.path.insert(0, repo_root)
dbutils = globals().get("dbutils")  # Databricks gives a notebook its dbutils; a local run has none

from penguin_lab import notebook
from penguin_lab.config import TrainConfig
from penguin_lab.data import encode, prepare_splits, unique_complete
from penguin_lab.split import spark_split
from penguin_lab.read import read_penguins
from penguin_lab.records import lines_of
from penguin_lab.spark import spark_path
from penguin_lab.spark import get_spark
from penguin_lab.validate import as_number

params = notebook.parameters(dbutils)
spark = get_spark()
print(params)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Read the data with Spark
# MAGIC
# MAGIC The lab downloads `penguins.csv` with `wget`; here it ships with the repository in `data/`. Point the
# MAGIC `data_path` widget at a copy in DBFS (`dbfs:/...`) or a Unity Catalog volume (`/Volumes/...`), a folder of
# MAGIC CSV or Parquet files, or a table name to use that instead.
# MAGIC
# MAGIC Spark reads the lines of each CSV file (`spark.read.text`) and keeps each line's place in its file:

# COMMAND ----------

notebook.show_source(lines_of)

# COMMAND ----------

# MAGIC %md
# MAGIC Each line is split into fields, and the columns are found by name in the header. Then Spark checks every
# MAGIC value with the rules in `penguin_lab/validate.py`, written as Spark expressions, such as the one for a number:

# COMMAND ----------

notebook.show_source(as_number)

# COMMAND ----------

# MAGIC %md
# MAGIC A value that is not a number, an impossible measurement or an unknown species stops the run with the file,
# MAGIC row and column; set the `drop_invalid` widget to `true` to drop such rows instead (they are counted). Each
# MAGIC data record keeps its place in the file and has a `problem`: empty, or the first rule it breaks. Missing
# MAGIC values are kept for now.

# COMMAND ----------

penguins = read_penguins(spark, params["data_path"], drop_invalid=params["drop_invalid"])
print(f"{penguins.summary.data_rows} data rows read from {params['data_path']}: "
      f"{penguins.summary.invalid_rows} invalid rows dropped, {penguins.summary.complete_rows} valid rows "
      f"without a missing value, {penguins.repeated_header_rows} repeated header rows skipped")
notebook.display(penguins.records.filter("kind = 'data'"))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Prepare the data with Spark
# MAGIC
# MAGIC This is the Spark code. Two changes from the original lab, both about getting honest, repeatable results:
# MAGIC
# MAGIC - exact duplicate rows are dropped (incomplete rows too), so the same penguin cannot end up on both sides
# MAGIC   of the split;
# MAGIC - the island index comes from the **sorted** island names (Biscoe 0, Dream 1, Torgersen 2). The lab used
# MAGIC   `collect_set`, whose order can change from run to run, so the same island could get another number
# MAGIC   next time; the vocabulary is also saved with the model, so predictions use the same numbers.

# COMMAND ----------

notebook.show_source(unique_complete)
notebook.show_source(encode)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Split into training and test sets
# MAGIC
# MAGIC The lab copies every row four times *before* splitting 70/30, so almost every test penguin is also a
# MAGIC training penguin and the test accuracy says little. Here the split comes first (copies, if any, are made of
# MAGIC training rows only): for each species, a seeded 30% of its rows go to the test set. The two sets are
# MAGIC written as Parquet. `overlap_rows` counts test rows that also appear in training, and it is 0.

# COMMAND ----------

notebook.show_source(spark_split)

# COMMAND ----------

config = TrainConfig(epochs=params["epochs"], seed=params["seed"])
prepared = prepare_splits(spark, penguins, config)
print("island index:", {name: i for i, name in enumerate(prepared.island_vocabulary)})
for name, value in prepared.counts.items():
    print(f"{name:>16}: {value}")
assert prepared.counts["overlap_rows"] == 0, "test rows leaked into training"

# COMMAND ----------

# MAGIC %md
# MAGIC The training set, as PyTorch will read it: the island index and the scaled measurements, each standardized
# MAGIC with the mean and standard deviation of the training rows (the test rows never enter them).

# COMMAND ----------

notebook.display(spark.read.parquet(spark_path(prepared.train_path)))
