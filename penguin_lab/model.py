"""The network: 5 inputs -> 10 -> 10 -> 3 species, as in the lab."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import FEATURES, SPECIES


class PenguinNet(nn.Module):
    """Three fully connected layers; returns log-probabilities for each species."""

    def __init__(self, n_features: int = len(FEATURES), hidden_units: int = 10, n_classes: int = len(SPECIES)):
        super().__init__()
        self.fc1 = nn.Linear(n_features, hidden_units)
        self.fc2 = nn.Linear(hidden_units, hidden_units)
        self.fc3 = nn.Linear(hidden_units, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return F.log_softmax(self.fc3(x), dim=1)
