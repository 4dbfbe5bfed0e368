"""comp: win Kaggle image-classification competitions from the command line."""

__version__ = "0.1.0"
