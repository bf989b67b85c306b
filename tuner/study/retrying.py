"""An Optuna RDB storage that rides out database outages.

Every storage call is retried with backoff (0.5 s doubling to 10 s) for up to ``outage_seconds``
(``TUNER_DB_OUTAGE_SECONDS``, default 300) when the database is unreachable or the connection
dropped — a PostgreSQL restart, failover or network blip — or refuses new connections (too many
clients, a connection limit, a database still starting up), reconnecting through the pool
(pre-pinged connections). One warning when an outage starts (naming a refusal as such) and one
line when it ends, per process, instead of a traceback; Optuna's own warnings about the failed
statements (SQL and parameters) are dropped meanwhile. Results a worker computed are held in memory and stored when
the database returns; past the window the error propagates and the trial is retried elsewhere
once its heartbeat goes stale.

    TUNER_DB_OUTAGE_SECONDS=600 tuner worker --study default
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any

from optuna.storages import RDBStorage

from tuner.signals import checkpoint

log = logging.getLogger(__name__)

# Calls a retry may repeat safely, or whose repetition is detected (see _already_done).
RETRIED = ("check_trial_is_updatable", "create_new_study", "create_new_trial", "delete_study", "get_all_studies",
           "get_all_trials", "get_best_trial", "get_n_trials", "get_study_directions", "get_study_id_from_name",
           "get_study_name_from_id", "get_study_system_attrs", "get_study_user_attrs", "get_trial",
           "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id", "get_trial_param",
           "get_trial_params", "get_trial_system_attrs", "get_trial_user_attrs", "record_heartbeat",
           "set_study_system_attr", "set_study_user_attr", "set_trial_intermediate_value", "set_trial_param",
           "set_trial_state_values", "set_trial_system_attr", "set_trial_user_attr",
           # what Optuna's cache layer (_CachedStorage) calls on its backend directly
           "_get_stale_trial_ids", "_get_trials", "_create_new_trial", "_get_best_trial_id", "_set_trial_param")


def is_transient(exc: BaseException) -> bool:
    """The database is unreachable or the connection dropped (not a bug, not bad data)."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import DBAPIError, OperationalError, PendingRollbackError, TimeoutError

    if isinstance(exc, (OperationalError, PendingRollbackError, TimeoutError)):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if refusal(exc):  # the server is up but refuses connections for now (too many clients, starting up)
        return True
    if isinstance(exc, StorageInternalError):  # Optuna wraps SQLAlchemy errors raised at commit
        cause = exc.__cause__ or exc.__context__
        return cause is None or is_transient(cause)
    # Optuna's set_trial_state_values reads an unset local when its commit fails (Optuna bug).
    return isinstance(exc, UnboundLocalError) and "updated_state" in str(exc)


REFUSALS = ("too many clients", "remaining connection slots are reserved", "connection limit exceeded",
            "too many connections", "the database system is starting up", "the database system is in recovery mode",
            "the database system is shutting down", "the database system is not yet accepting connections")
"""What PostgreSQL answers when it is up but refuses a new connection."""


def root_cause(exc: BaseException) -> BaseException:
    """The database driver's own error behind Optuna's and SQLAlchemy's wrappers."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "orig", None) or exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc = inner
    return exc


def refusal(exc: BaseException) -> str | None:
    """The server's reason when it refused a connection (``FATAL: sorry, too many clients
    already``), else None."""
    text = str(root_cause(exc)).lower()
    return next((r for r in REFUSALS if r in text), None)


def describe(exc: BaseException) -> str:
    """One line about a storage failure: a refused connection is named as such, never by
    Optuna's generic "invalid data in the commit" text."""
    reason = refusal(exc)
    if reason:
        return f"the database refused the connection ({reason})"
    lines = str(root_cause(exc)).strip().splitlines()
    text = next((ln.strip() for ln in lines if ln.strip() and not ln.startswith("(Background on")), "")
    return (text or type(exc).__name__)[:200]


class _QuietOptunaSQL(logging.Filter):
    """Optuna logs the failed statement with its parameters (trial attributes) when a query
    fails ("Caught an error from sqlalchemy ... Falling back"): during an outage that is many
    lines of SQL per process. The outage line says it once; drop these."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not ("Caught an error from sqlalchemy" in msg and any(
            s in msg.lower() for s in ("connect", "server closed", "terminating", "refused", "timeout", *REFUSALS)))


logging.getLogger("optuna.storages._rdb.storage").addFilter(_QuietOptunaSQL())


class _Outage:
    """Per-process outage bookkeeping: one line when it starts, one when it ends."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.since: float | None = None
        self.ended: float | None = None  # when the last outage ended (monotonic)

    def start(self, exc: BaseException, window: float) -> None:
        with self.lock:
            if self.since is None:
                self.since = time.monotonic()
                if refusal(exc):  # up, but refusing: named as such, not as an outage or bad data
                    log.warning("%s; retrying for up to %.0f s", describe(exc), window)
                else:
                    log.warning("database unreachable (%s); retrying for up to %.0f s", describe(exc), window)

    def end(self) -> None:
        with self.lock:
            if self.since is not None:
                log.warning("database reachable again after %.1f s", time.monotonic() - self.since)
                self.since = None
                self.ended = time.monotonic()


def _retrying(name: str, method: Any) -> Any:
    @functools.wraps(method)
    def call(self: RetryingRDBStorage, *args: Any, **kwargs: Any) -> Any:
        deadline, delay = None, 0.5
        while True:
            try:
                result = method(self, *args, **kwargs)
            except Exception as exc:
                if not is_transient(exc):
                    if deadline is not None and _already_done(self, name, args, kwargs, exc):
                        self._outage.end()
                        return True
                    raise
                deadline = deadline or time.monotonic() + self.outage_seconds
                if time.monotonic() >= deadline:
                    raise
                self._outage.start(exc, self.outage_seconds)
                if threading.current_thread() is threading.main_thread():
                    checkpoint()  # Ctrl-C, SIGTERM, the launcher gone: stop waiting for the database
                try:
                    self.engine.dispose()  # drop dead pooled connections; the next call reconnects
                except Exception:  # noqa: BLE001 - disposing a broken pool may itself fail
                    pass
                time.sleep(delay)
                delay = min(10.0, delay * 2)
                continue
            if deadline is not None:
                self._outage.end()
            return result

    return call


def _already_done(storage: Any, name: str, args: tuple, kwargs: dict, exc: BaseException) -> bool:
    """A retried state change that had in fact committed before the connection dropped."""
    from optuna.exceptions import UpdateFinishedTrialError

    return name == "set_trial_state_values" and isinstance(exc, UpdateFinishedTrialError)


class RetryingRDBStorage(RDBStorage):
    """``RDBStorage`` whose calls retry through outages. Opening it does not retry: a database
    that is unreachable when a command starts is a wrong URL until proven otherwise."""

    def __init__(self, url: str, *, outage_seconds: float = 300.0, **kwargs: Any) -> None:
        self.outage_seconds = outage_seconds
        self._outage = _Outage()
        super().__init__(url, **kwargs)

    def in_outage_or_recovering(self, within: float) -> bool:
        """True during an outage and for ``within`` seconds after it: every heartbeat is old then,
        so judging other workers' trials stale would fail healthy ones."""
        o = self._outage
        return o.since is not None or (o.ended is not None and time.monotonic() - o.ended < within)


for _name in RETRIED:
    if hasattr(RDBStorage, _name):
        setattr(RetryingRDBStorage, _name, _retrying(_name, getattr(RDBStorage, _name)))
