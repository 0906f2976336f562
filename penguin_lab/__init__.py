"""penguin-lab: classify penguin species with PyTorch, data prepared by Spark."""

__version__ = "1.0.0"
