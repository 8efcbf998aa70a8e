"""Error types for bad input, so every entry point can show one clear line instead of a traceback."""

from __future__ import annotations

import argparse


class UserError(ValueError):
    """Input a user can fix (flag, config file, data folder, checkpoint, message).

    launch.py prints the message alone and exits with status 2; anything else is a bug and keeps
    its traceback.
    """


class ConfigError(UserError):
    """A setting is out of range or of the wrong type; raised before any work starts."""


class DataError(UserError):
    """A data folder is missing, truncated or not what the dataset name promised."""


class CheckpointError(UserError):
    """A checkpoint is corrupt, foreign, or does not fit the run that wants to load it."""


class MessageError(UserError):
    """A message between processes does not decode to what the receiver expects; it is refused whole."""


class EvaluationError(UserError):
    """An evaluation input (Inception network file, codes file, image file) is missing or does not fit."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line naming it, instead of the whole usage text."""

    def error(self, message: str):
        """Raise instead of printing usage and exiting, so launch.main prints one line."""
        raise ConfigError(f"{message} (see `python {self.prog} --help`)")
