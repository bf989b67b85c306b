"""Storage URLs: one function turns ``--storage``/``TUNER_STORAGE``/the default into an Optuna
RDB storage. SQLite for one machine, PostgreSQL (``postgresql+psycopg://``) for several.
Passwords never appear in messages (``redact``).

    tuner status --storage postgresql://user:pw@host:5432/tuner"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from tuner.errors import StorageError
from tuner.paths import storage_root

ENV = "TUNER_STORAGE"


def resolve_url(url: str | None) -> str:
    url = url or os.environ.get(ENV) or f"sqlite:///{storage_root() / 'tuner.db'}"
    if url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url[len("postgres://"):]
    elif url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if not (url.startswith("sqlite:///") or url.startswith("postgresql+")):
        raise StorageError(
            f"unsupported storage URL {redact(url)!r}: use sqlite:///path/to/tuner.db or "
            "postgresql+psycopg://user:password@host:5432/dbname"
        )
    return url


_SECRET_QUERY = re.compile(r"(?i)([?&](?:password|sslpassword|passfile|sslkey|pass)=)[^&#\s]*")
_URL = re.compile(r"(?P<scheme>[a-z][a-z0-9+.\-]*://)(?P<rest>[^\s'\"]*)", re.IGNORECASE)


def redact(text: str) -> str:
    """Every URL in ``text`` with its password (userinfo, even with an ``@`` inside, and query
    parameters such as ``password``/``sslpassword``) replaced by ``***``."""

    def one(m: re.Match) -> str:
        rest = m.group("rest")
        slash = rest.find("/")
        authority, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
        at = authority.rfind("@")  # the host follows the *last* @: a password may contain @
        if at >= 0:
            userinfo, host = authority[:at], authority[at + 1:]
            user = userinfo.split(":", 1)[0]
            authority = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
        return m.group("scheme") + authority + _SECRET_QUERY.sub(r"\1***", path)

    return _URL.sub(one, text)


class RedactingFilter(logging.Filter):
    """Log records never carry a password, whoever logs them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg, record.args = record.getMessage(), ()
        record.msg = redact(str(record.msg))
        return True


def heartbeat_settings() -> tuple[int, int]:
    """(interval, grace) in seconds; a trial whose heartbeat is older than grace is retried."""
    interval = int(os.environ.get("TUNER_HEARTBEAT_INTERVAL", "10"))
    grace = int(os.environ.get("TUNER_HEARTBEAT_GRACE", str(3 * interval)))
    return interval, grace


def outage_window() -> float:
    """How long storage operations are retried through a database outage (seconds)."""
    return float(os.environ.get("TUNER_DB_OUTAGE_SECONDS", "300"))


def sqlite_path(url: str) -> Path | None:
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else None
    return None if path in (None, "", ":memory:") else Path(path)


def check_writable(url: str) -> None:
    """A SQLite database (or the directory it would be created in) must be writable."""
    path = sqlite_path(url)
    if path is None:
        return
    target = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
    if not os.access(target, os.W_OK):
        raise StorageError(f"cannot write the SQLite database at {path}: {target} is read-only")


def make_storage(url: str | None, *, heartbeat: bool = True, create: bool = True) -> Any:
    """The study storage. ``create=False`` (read-only commands): a SQLite file must already exist."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from sqlalchemy.exc import SQLAlchemyError

    from tuner.study.retrying import RetryingRDBStorage

    url = resolve_url(url)
    path = sqlite_path(url)
    if path is not None:
        if not create and not path.is_file():
            raise StorageError(f"no database at {path} (this command only reads; create a study with tuner launch)")
        if create:
            check_writable(url)
            path.parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}}
    else:
        # A small pool per worker: max_connections is shared by every worker on every machine.
        engine_kwargs = {"pool_size": 2, "max_overflow": 2, "pool_pre_ping": True, "pool_recycle": 1800,
                         "connect_args": {"connect_timeout": 10}}
    interval, grace = heartbeat_settings()
    kwargs: dict[str, Any] = {}
    if heartbeat:
        kwargs = dict(heartbeat_interval=interval, grace_period=grace,
                      heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
    try:
        for attempt in range(CREATE_ATTEMPTS):
            try:
                return RetryingRDBStorage(url, engine_kwargs=engine_kwargs, outage_seconds=outage_window(), **kwargs)
            except SQLAlchemyError as exc:
                # two processes creating the same new database at once (two launches, workers on
                # several machines): the loser's CREATE/INSERT collides with the winner's; the
                # schema exists now, so opening again succeeds
                if attempt + 1 == CREATE_ATTEMPTS or not _creation_race(exc):
                    raise
                time.sleep(0.2 * (attempt + 1))
    except ImportError as exc:
        raise StorageError(f"the database driver for {redact(url)} is not installed ({exc.name or exc}); "
                           "PostgreSQL needs `pip install psycopg[binary]` (postgresql+psycopg://)") from None
    except (SQLAlchemyError, OSError, ValueError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StorageError(f"cannot open storage {redact(url)}: {redact(reason)}") from None


CREATE_ATTEMPTS = 5


def _creation_race(exc: Exception) -> bool:
    reason = str(getattr(exc, "orig", None) or exc).lower()
    return any(s in reason for s in ("unique constraint", "already exists", "duplicate key"))


def study_names(storage: Any) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]
