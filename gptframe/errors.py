"""User-facing errors. The CLIs print them as one line and exit non-zero (see gptframe.cli.common)."""

from data_pipelines.errors import DataError, TokenizerError, UserInputError


class ConfigError(UserInputError):
    """A config value is invalid or inconsistent with another."""


class CheckpointError(UserInputError):
    """A checkpoint is missing, truncated, or does not match the configured run."""


__all__ = ["CheckpointError", "ConfigError", "DataError", "TokenizerError", "UserInputError"]
