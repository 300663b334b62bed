"""Errors that the CLI turns into one line and a non-zero exit.

Every error says what was wrong, where (field or file), and what is allowed, so a user can fix it without a traceback.
"""

from __future__ import annotations


class AutosideError(Exception):
    """Base class for errors meant for the user, not for a traceback."""

    exit_code = 1


class ConfigError(AutosideError, ValueError):
    """A recipe, search space, side-network config or CLI option is malformed (exit code 2, like argparse)."""

    exit_code = 2


class DataError(AutosideError):
    """A dataset is missing, corrupt or does not match its checksum."""


class WeightsError(AutosideError):
    """Backbone weights cannot be found, are corrupt, or do not match the model."""
