"""How storage failures are named and logged (the end-to-end faults are in test_faults.py)."""

from __future__ import annotations

import logging


def _wrapped(message: str) -> Exception:
    """What Optuna raises when a commit fails: StorageInternalError from SQLAlchemy's error."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import OperationalError

    try:
        try:
            raise OperationalError("INSERT INTO trial_user_attributes ...", {}, Exception(message))
        except OperationalError as exc:
            raise StorageInternalError("An exception is raised during the commit. This typically happens due to "
                                       "invalid data in the commit, e.g. exceeding max length. ") from exc
    except StorageInternalError as exc:
        return exc


def test_a_refused_connection_is_named_as_such():
    from tuner.study.retrying import describe, is_transient, refusal

    exc = _wrapped('connection failed: connection to server at "127.0.0.1", port 5432 failed: '
                   "FATAL:  sorry, too many clients already")
    assert is_transient(exc) and refusal(exc) == "too many clients"
    assert describe(exc) == "the database refused the connection (too many clients)"
    starting = _wrapped("FATAL:  the database system is starting up")
    assert "refused the connection (the database system is starting up)" in describe(starting)
    assert "invalid data" not in describe(_wrapped("server closed the connection unexpectedly"))


def test_optunas_sql_dumps_are_dropped_during_outages():
    import tuner.study.retrying  # noqa: F401  (installs the filter)

    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    logger, keep = logging.getLogger("optuna.storages._rdb.storage"), Keep()
    logger.addHandler(keep)
    try:
        logger.warning("Caught an error from sqlalchemy: (psycopg.OperationalError) consuming input failed: "
                       "server closed the connection unexpectedly\n[SQL: SELECT trials.trial_id ...]\n"
                       "[parameters: {'trial_id_1': 3}]. Falling back to a slower alternative.")
        logger.warning("Caught an error from sqlalchemy: too many SQL variables. Falling back to a slower alternative.")
    finally:
        logger.removeHandler(keep)
    assert [m[:41] for m in keep.messages] == ["Caught an error from sqlalchemy: too many"]
