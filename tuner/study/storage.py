"""Storage URLs: one function turns ``--storage``/``TUNER_STORAGE``/the default into an Optuna
RDB storage. SQLite for one machine, PostgreSQL (``postgresql+psycopg://``) for several.
Passwords never appear in messages (``redact``).

    tuner status --storage postgresql://user:pw@host:5432/tuner"""

from __future__ import annotations

import os
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


def redact(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def heartbeat_settings() -> tuple[int, int]:
    """(interval, grace) in seconds; a trial whose heartbeat is older than grace is retried."""
    interval = int(os.environ.get("TUNER_HEARTBEAT_INTERVAL", "10"))
    grace = int(os.environ.get("TUNER_HEARTBEAT_GRACE", str(3 * interval)))
    return interval, grace


def make_storage(url: str | None, *, heartbeat: bool = True) -> Any:
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from sqlalchemy.exc import SQLAlchemyError

    url = resolve_url(url)
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if str(path) not in ("", ":memory:"):
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
        return RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
    except (SQLAlchemyError, OSError, ValueError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StorageError(f"cannot open storage {redact(url)}: {reason}") from None


def study_names(storage: Any) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]
