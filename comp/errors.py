"""The errors comp raises: one ``CompError`` base, so the CLI maps every library error to
one line and a non-zero exit. Reads and writes nothing; imports nothing heavy."""

from __future__ import annotations


class CompError(Exception):
    """Anything comp refuses, with a message that says what to do about it."""


class ConfigError(CompError, ValueError):
    """A config file, key or value that cannot be used."""


class DataError(CompError, ValueError):
    """Competition data that cannot be used as it is."""


class ModelError(CompError, ValueError):
    """A model name, weights file or checkpoint that cannot be used."""


class SubmissionError(CompError, ValueError):
    """A submission that Kaggle would reject or score wrongly."""


class KaggleError(CompError, RuntimeError):
    """Kaggle refused or failed a request; the message says what to do about it."""


class KaggleUncertain(KaggleError):
    """A call that is not safe to repeat failed after Kaggle may already have acted on it."""
