# Databricks notebook source
# MAGIC %md
# MAGIC # 1. Ingest and prepare the penguin data
# MAGIC
# MAGIC We will train a neural network to tell three penguin species apart (Adelie, Gentoo, Chinstrap) from the
# MAGIC island a penguin was seen on and four body measurements. This notebook loads the data and uses
# MAGIC **Spark** to get it ready for PyTorch:
# MAGIC
# MAGIC - remove incomplete rows,
# MAGIC - encode the island name as a number,
# MAGIC - cast the measurements to floats and scale them to a similar size,
# MAGIC - split the rows into a training set and a test set.
# MAGIC
# MAGIC > **Citation**: the data were collected and made available by Dr. Kristen Gorman and the Palmer Station,
# MAGIC > Antarctica LTER, a member of the Long Term Ecological Research Network (see `data/README.md`).
# MAGIC
# MAGIC The code lives in the `penguin_lab` package at the root of this repository; the notebooks call it and
# MAGIC show the parts worth reading.

# COMMAND ----------

# MAGIC %pip install -q safetensors==0.8.0 tqdm

# COMMAND ----------

# Make the `penguin_lab` package importable: it sits in the repository root, the notebook folder's parent.
import os, sys
try:  # on Databricks, dbutils knows where this notebook is
    notebook_path = dbutils.notebook.entry_point.getDbutils().notebook().getContext().notebookPath().get()
    repo_root = os.path.dirname(os.path.dirname("/Workspace" + notebook_path))
except NameError:  # a local `python notebooks/...` run: this file is the notebook
    dbutils, repo_root = None, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, repo_root)

from penguin_lab import notebook
from penguin_lab.config import TrainConfig
from penguin_lab.data import get_spark, prepare_splits, spark_prepare, spark_split
from penguin_lab.read import read_penguins_csv

params = notebook.parameters(dbutils)
spark = get_spark()
print(params)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Load the data
# MAGIC
# MAGIC The lab downloads `penguins.csv` with `wget`; here it ships with the repository in `data/`. Point the
# MAGIC `data_path` widget at a copy in DBFS (`dbfs:/...`) or a Unity Catalog volume (`/Volumes/...`) to use that
# MAGIC instead. Every file goes through one reader that checks it: columns are found by name, and a value that
# MAGIC is not a number (or an unknown species) stops the run with the file, row and column; set the
# MAGIC `drop_invalid` widget to `true` to drop such rows instead (they are counted). Missing values are kept for now.

# COMMAND ----------

raw, invalid_rows = read_penguins_csv(params["data_path"], drop_invalid=params["drop_invalid"])
print(f"{len(raw)} rows read from {params['data_path']}; {invalid_rows} invalid rows dropped")
print(raw.head(5).to_string(index=False))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Prepare the data with Spark
# MAGIC
# MAGIC This is the Spark code. Two changes from the original lab, both about getting honest, repeatable results:
# MAGIC
# MAGIC - the island index comes from the **sorted** island names (Biscoe 0, Dream 1, Torgersen 2). The lab used
# MAGIC   `collect_set`, whose order can change from run to run, so the same island could get another number
# MAGIC   next time; the vocabulary is also saved with the model, so predictions use the same numbers;
# MAGIC - exact duplicate rows are dropped, so the same penguin cannot end up on both sides of the split.

# COMMAND ----------

notebook.show_source(spark_prepare)

# COMMAND ----------

config = TrainConfig(epochs=params["epochs"], seed=params["seed"])
data = spark_prepare(spark, raw)
data.show(5)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Split into training and test sets
# MAGIC
# MAGIC The lab copies every row four times *before* splitting 70/30, so almost every test penguin is also a
# MAGIC training penguin and the test accuracy says little. Here the split comes first: for each species, a seeded
# MAGIC 30% of its rows go to the test set. `overlap_rows` counts test rows that also appear in training, and it is 0.

# COMMAND ----------

notebook.show_source(spark_split)

# COMMAND ----------

prepared = prepare_splits(spark, raw, config, where=params["data_path"])
print("island index:", {name: i for i, name in enumerate(prepared.island_vocabulary)})
for name, value in prepared.counts.items():
    print(f"{name:>16}: {value}")
assert prepared.counts["overlap_rows"] == 0, "test rows leaked into training"
