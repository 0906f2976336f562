# Databricks notebook source
# MAGIC %md
# MAGIC # 3. Load the saved model and predict a new penguin
# MAGIC
# MAGIC Notebook 2 saved the trained model. This notebook loads it, checks it gives the same answers, and predicts
# MAGIC the species of a penguin it has never seen.
# MAGIC
# MAGIC The lab saved the weights with `torch.save` and loaded them with `torch.load`. Those are Python pickles, and
# MAGIC loading a pickle can run any code hidden in it, so a model file from someone else is a risk. Here a model
# MAGIC is a folder with `model.safetensors` (only numbers) and `model.json` (the feature order, the island
# MAGIC vocabulary, the scaling, the species names, versions and metrics), and nothing is ever unpickled.

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

import json

from penguin_lab import artifacts, notebook
from penguin_lab.predict import Predictor

params = notebook.parameters(dbutils)
model_dir = notebook.output_path(params) / "model"

# COMMAND ----------

# MAGIC %md
# MAGIC ## What was saved

# COMMAND ----------

for path in sorted(model_dir.iterdir()):
    print(f"{path.name:<20} {path.stat().st_size:>7} bytes")
metadata = artifacts.read_metadata(model_dir)  # checked field by field, like every load
print(json.dumps({k: metadata[k] for k in ("features", "island_vocabulary", "scale", "standardization", "species",
                                           "versions")}, indent=2))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Load it and predict
# MAGIC
# MAGIC The lab's new penguin is `[[1, 50.4, 15.3, 20, 50]]`: island index 1 (Biscoe in the lab's run), culmen
# MAGIC 50.4 mm long and 15.3 mm deep, flipper 200 mm, body mass 5000 g (the last two already scaled). With the
# MAGIC vocabulary saved in the model we can say *Biscoe* and give plain measurements; the model scales and
# MAGIC standardizes them exactly the way its training rows were.

# COMMAND ----------

predictor = Predictor(model_dir)
new_penguin = {"island": "Biscoe", "CulmenLength": 50.4, "CulmenDepth": 15.3, "FlipperLength": 200, "BodyMass": 5000}
result = predictor.predict(**new_penguin)
print("New sample:", new_penguin)
print("Prediction:", result["species"])
for species, probability in result["probabilities"].items():
    print(f"  {species:<10} {probability:.4f}")
