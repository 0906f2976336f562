# Databricks notebook source
# MAGIC %md
# MAGIC # 6. Score a large table in batch
# MAGIC
# MAGIC A trained model earns its keep on penguins it has not seen, often millions of them in a table. Spark
# MAGIC scores them in parallel: each Python worker loads the model once and scores its share of the records a
# MAGIC batch at a time. A record the model cannot score (a missing or impossible value, an island it never
# MAGIC saw) gets no species and a `reason`; one bad row never fails the job.
# MAGIC
# MAGIC The model comes from the `model` widget: a model folder, or an MLflow URI such as
# MAGIC `models:/main.default.penguin_classifier/1` (notebook 2 registers one when its `register_model` widget is
# MAGIC set). Empty, it is notebook 2's model in the results folder. This notebook uses the runtime's own MLflow.

# COMMAND ----------

# Make the `penguin_lab` package importable: it sits in the repository root, the parent of this notebook's
# folder (on Databricks the working directory; in a local `python notebooks/...` run, __file__'s folder).
import os, sys
notebook_folder = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
repo_root = os.path.dirname(notebook_folder)
sys.path.insert(0, repo_root)
dbutils = globals().get("dbutils")  # Databricks gives a notebook its dbutils; a local run has none
from penguin_lab import notebook
notebook.require(dbutils, "torch")  # a runtime without PyTorch (not an ML runtime) stops here, in one line

from penguin_lab.predict import score_columns
from penguin_lab.score import score, scored_batches
from penguin_lab.spark import get_spark, spark_path

params = notebook.parameters(dbutils)
spark = get_spark()
model = params["model"] or str(notebook.output_path(params) / "model")
scored_path = notebook.output_path(params).with_name(notebook.output_path(params).name + "-scored")  # beside the results
print("model:", model, "| data:", params["data_path"])

# COMMAND ----------

# MAGIC %md
# MAGIC ## How a batch is scored
# MAGIC
# MAGIC `score_columns` takes a batch of penguins as columns, the island codes and one array per measurement, and
# MAGIC returns one probability per species, or the reason a row has no prediction. Each distinct island spelling is
# MAGIC looked up once and the network runs on the whole batch at once. `scored_batches` is what Spark's `mapInArrow`
# MAGIC runs on every partition: Arrow batches in, the same records with their predictions out. The model is loaded
# MAGIC on the first batch a worker sees and kept for the rest; `scored_files` has each worker write its share as
# MAGIC Parquet itself.

# COMMAND ----------

notebook.show_source(score_columns)
notebook.show_source(scored_batches)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Score the data
# MAGIC
# MAGIC The records are read and checked by the same rules as for training (notebook 1); the result is written as
# MAGIC Parquet, whole or not at all: the input columns, `predicted_species`, `p_<species>` and `reason`.

# COMMAND ----------

result = score(spark, model, params["data_path"], scored_path)
print(f"scored {result['rows']} penguins in {result['seconds']:.1f} s; {result['flagged']} could not be scored")
scored = spark.read.parquet(spark_path(str(scored_path)))
notebook.display(scored.orderBy("reason", "Island"))

# COMMAND ----------

# MAGIC %md
# MAGIC ## How many of each species
# MAGIC
# MAGIC On Databricks, save the scored records as a table with `scored.write.saveAsTable("catalog.schema.name")`.

# COMMAND ----------

notebook.display(scored.groupBy("predicted_species").count().orderBy("predicted_species"))

# COMMAND ----------

# MAGIC %md
# MAGIC ## The same with MLflow's `spark_udf`
# MAGIC
# MAGIC A logged or registered model (an MLflow URI in the `model` widget) is an MLflow pyfunc, so MLflow's own
# MAGIC `spark_udf` scores with it too; MLflow ships the model to the workers.

# COMMAND ----------

if model.startswith(("runs:/", "models:/")):
    import mlflow
    from pyspark.sql import functions as F

    predict = mlflow.pyfunc.spark_udf(spark, model, result_type="predicted_species string, p_Adelie double, "
                                      "p_Gentoo double, p_Chinstrap double, reason string", env_manager="local")
    inputs = ["Island", "CulmenLength", "CulmenDepth", "FlipperLength", "BodyMass"]
    with_udf = scored.filter("reason IS NULL").select(*inputs).withColumn("p", predict(*[F.col(c) for c in inputs]))
    notebook.display(with_udf.select(*inputs, "p.predicted_species"))
else:
    print("the model is a folder, not an MLflow URI: set the `model` widget to runs:/... or models:/... to try it")
