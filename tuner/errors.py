"""The exception hierarchy. Every user-facing failure is a ``TunerError`` with a one-line,
actionable message; the CLI prints it and exits with code 2 instead of a traceback."""

from __future__ import annotations


class TunerError(Exception):
    """Base class: a problem the user can fix (bad input, missing file, bad URL)."""

    exit_code = 2


class ConfigError(TunerError):
    """A study or hyperparameter file is malformed or asks for something impossible."""


class FactError(TunerError):
    """A fact record is malformed (missing subject, no ``{}`` in the prompt, empty target...)."""


class ArchitectureError(TunerError):
    """The model's architecture is not supported, or a module template does not resolve."""


class EditError(TunerError):
    """An edit could not be carried out (NaN loss, subject not found in the prompt...)."""


class ModelBuildError(TunerError):
    """The embedded default model could not be trained to the required accuracy or editability."""


class StorageError(TunerError):
    """The Optuna storage URL is invalid or the database is unreachable."""


class StudyError(TunerError):
    """The study does not exist, already exists with another config, or is otherwise unusable."""


class StudyDeleted(StudyError):
    """The study was deleted (``tuner delete``) while this command ran it."""

    exit_code = 1


class Degraded(TunerError):
    """Workers exited early and the trial budget was not met: the run is incomplete."""

    exit_code = 3
