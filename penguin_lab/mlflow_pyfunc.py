"""The penguin classifier as an MLflow pyfunc, logged as code (MLflow's models-from-code): no pickle.

MLflow runs this file to build the model. Its artifact `penguin_model` is a penguin-lab model folder
(model.safetensors and model.json), read by penguin-lab's own loader, which never unpickles.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

ARTIFACT = "penguin_model"


class PenguinClassifier(PythonModel):
    def load_context(self, context):
        from penguin_lab.predict import Predictor

        self.predictor = Predictor(context.artifacts[ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """A frame of Island and the four measurements in; predicted_species, p_<species> and reason out."""
        from penguin_lab.predict import score_table

        return score_table(self.predictor, model_input)


mlflow.models.set_model(PenguinClassifier())
