"""The global trial budget, enforced in the database: a worker creates (or takes) a trial only
while holding the study's reservation lock, so N workers on M machines finish exactly the
budget — no read-then-act race between them.

- PostgreSQL: a transaction-scoped advisory lock keyed by the study name
  (``pg_advisory_xact_lock``), held while the worker counts the trials and Optuna inserts the
  new one; other workers queue on it.
- SQLite (one machine by nature): a file lock beside the database file; SQLite's own write lock
  cannot be held across Optuna's separate connection without deadlocking it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from filelock import FileLock

from tuner.study.storage import sqlite_path


def lock_key(study_name: str) -> int:
    """A signed 64-bit advisory-lock key for the study."""
    return int.from_bytes(hashlib.sha256(f"tuner-budget:{study_name}".encode()).digest()[:8], "big", signed=True)


class BudgetLock:
    def __init__(self, storage: Any, url: str, study_name: str) -> None:
        self.study_name = study_name
        path = sqlite_path(url)
        self._file = FileLock(str(path) + f".{lock_key(study_name) & 0xFFFFFFFF:08x}.lock") if path else None
        self._engine = None if path else storage.engine

    @contextmanager
    def held(self) -> Iterator[None]:
        if self._file is not None:
            with self._file:
                yield
            return
        from sqlalchemy import text

        with self._engine.begin() as conn:  # committed (lock released) when the block ends
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(self.study_name)})
            yield
