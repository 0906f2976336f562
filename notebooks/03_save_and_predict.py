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
print(json.dumps({k: metadata[k] for k in ("features", "island_vocabulary", "scale", "species", "versions")}, indent=2))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Load it and predict
# MAGIC
# MAGIC The lab's new penguin is `[[1, 50.4, 15.3, 20, 50]]`: island index 1 (Biscoe in the lab's run), culmen
# MAGIC 50.4 mm long and 15.3 mm deep, flipper 200 mm, body mass 5000 g (the last two already scaled). With the
# MAGIC vocabulary saved in the model we can say *Biscoe* and give plain measurements; the model scales them the way
# MAGIC it was trained.

# COMMAND ----------

predictor = Predictor(model_dir)
new_penguin = {"island": "Biscoe", "CulmenLength": 50.4, "CulmenDepth": 15.3, "FlipperLength": 200, "BodyMass": 5000}
result = predictor.predict(**new_penguin)
print("New sample:", new_penguin)
print("Prediction:", result["species"])
for species, probability in result["probabilities"].items():
    print(f"  {species:<10} {probability:.4f}")
