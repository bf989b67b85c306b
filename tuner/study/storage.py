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
log = logging.getLogger(__name__)


def resolve_url(url: str | None) -> str:
    url = url or os.environ.get(ENV) or f"sqlite:///{storage_root() / 'tuner.db'}"
    remember_secrets(url)
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
_SECRETS: set[str] = set()
"""Password-like parts of every storage URL this process has seen (``remember_secrets``)."""


def remember_secrets(text: str) -> None:
    """Note the password-like parts of every URL in ``text`` — the userinfo after the user name
    up to the *last* ``@`` (a password may contain ``@``, ``/`` or ``:``), each of its ``@``/``:``
    pieces, and ``password=``-like query values — so ``redact`` removes them from any text, also
    where a library echoes a malformed URL's pieces (psycopg: "failed to resolve host 'PW@host'")."""
    for m in re.finditer(r"[a-z][a-z0-9+.\-]*://(\S*)", text, re.IGNORECASE):
        rest = m.group(1)
        at = rest.rfind("@")
        if at >= 0 and ":" in rest[:at]:
            secret = rest[:at].split(":", 1)[1]
            _SECRETS.update(p for p in {secret, *re.split(r"[@:/]", secret)} if p)
        for q in re.finditer(r"(?i)[?&](?:password|sslpassword|passfile|sslkey|pass)=([^&#\s]*)", rest):
            if q.group(1):
                _SECRETS.add(q.group(1))


def _redact_secrets(text: str) -> str:
    # longest first, so a piece never leaves part of a longer secret behind; a piece of 1-3
    # characters only where it stands alone (not inside a word), so "ab" does not mangle "table"
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret == "***":
            continue
        if len(secret) >= 4:
            text = text.replace(secret, "***")
        else:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text)
    return text


def redact(text: str) -> str:
    """Every URL in ``text`` with its password (userinfo, even with an ``@`` inside, and query
    parameters such as ``password``/``sslpassword``) replaced by ``***``, and every password-like
    part of a storage URL seen by this process removed wherever it appears, URL or not."""

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

    remember_secrets(text)
    return _redact_secrets(_URL.sub(one, text))


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
    from optuna.exceptions import StorageInternalError
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from sqlalchemy.exc import SQLAlchemyError

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
        return _open(url, engine_kwargs, kwargs)
    except ImportError as exc:
        raise StorageError(f"the database driver for {redact(url)} is not installed ({exc.name or exc}); "
                           "PostgreSQL needs `pip install psycopg[binary]` (postgresql+psycopg://)") from None
    except (SQLAlchemyError, StorageInternalError, OSError, ValueError) as exc:
        from tuner.study.retrying import describe, refusal

        if refusal(exc):
            raise StorageError(f"cannot open storage {redact(url)}: {describe(exc)} for {outage_window():.0f} s; "
                               "raise the server's max_connections or run fewer workers (each holds up to 4)") from None
        raise StorageError(f"cannot open storage {redact(url)}: {redact(describe(exc))}") from None


def _open(url: str, engine_kwargs: dict[str, Any], kwargs: dict[str, Any]) -> Any:
    """Open the storage. Two processes creating the same new database at once collide (retried
    a few times); a server that refuses the connection (too many clients, a connection limit,
    starting up) is retried with backoff for the outage window, one line per process."""
    from sqlalchemy.exc import SQLAlchemyError

    from tuner.study.retrying import RetryingRDBStorage, describe, refusal

    deadline, delay, attempt, warned = None, 0.5, 0, False
    while True:
        try:
            return RetryingRDBStorage(url, engine_kwargs=engine_kwargs, outage_seconds=outage_window(), **kwargs)
        except Exception as exc:  # noqa: BLE001 - classified below, re-raised unless retried
            if refusal(exc):
                deadline = deadline or time.monotonic() + outage_window()
                if time.monotonic() >= deadline:
                    raise
                if not warned:
                    log.warning("%s; retrying for up to %.0f s", describe(exc), outage_window())
                    warned = True
                time.sleep(delay)
                delay = min(10.0, delay * 2)
                continue
            # two processes creating the same new database at once (two launches, workers on
            # several machines): the loser's CREATE/INSERT collides with the winner's; the
            # schema exists now, so opening again succeeds
            attempt += 1
            if not isinstance(exc, SQLAlchemyError) or attempt == CREATE_ATTEMPTS or not _creation_race(exc):
                raise
            time.sleep(0.2 * attempt)


CREATE_ATTEMPTS = 5


def _creation_race(exc: Exception) -> bool:
    reason = str(getattr(exc, "orig", None) or exc).lower()
    return any(s in reason for s in ("unique constraint", "already exists", "duplicate key"))


def study_names(storage: Any) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]
