"""Errors caused by what the user gave us (paths, text, configs, checkpoints).

The CLIs turn these into one clear message and a non-zero exit instead of a traceback.
"""


class UserInputError(ValueError):
    """Base class: the input is wrong, not the code."""


class DataError(UserInputError):
    """A data source is missing, empty, or not readable as text."""


class TokenizerError(UserInputError):
    """A tokenizer cannot be built, loaded, or does not fit the text or the model."""
