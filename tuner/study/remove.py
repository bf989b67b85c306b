"""``tuner delete``: remove a study even while workers run it, and say so only once it is gone.

    tuner delete --study default --yes

The study is first marked (user attribute ``deleting``): every worker sees the mark within one
heartbeat (or at its next reservation), fails its running trial and stops with one line, and a
``tuner launch`` running the study exits. Once no trial is RUNNING on a live worker, the study is
deleted under its budget lock (so no worker can start a trial meanwhile) and its absence is
checked; a deletion that could not be completed is an error, never reported as done."""

from __future__ import annotations

import datetime
import logging
import os
import socket
import time
from typing import Any

from tuner.errors import StudyError
from tuner.study.storage import heartbeat_settings, redact, study_names

log = logging.getLogger(__name__)
ATTEMPTS = 3


def live_running(storage: Any, study_id: int, grace: float) -> list[int]:
    """Numbers of the study's RUNNING trials whose worker is alive: a heartbeat younger than
    ``grace``, or no heartbeat yet on a trial younger than ``grace``."""
    from sqlalchemy import text

    stale = set(storage._get_stale_trial_ids(study_id))
    cutoff = datetime.datetime.now() - datetime.timedelta(seconds=grace)
    with storage.engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT t.trial_id, t.number, h.trial_id, t.datetime_start FROM trials t "
            "LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
            "WHERE t.study_id = :sid AND t.state = 'RUNNING'"), {"sid": study_id}).fetchall()
    return [number for trial_id, number, beat, start in rows
            if trial_id not in stale and (beat is not None or start is None or start > cutoff)]


def delete_study(storage: Any, url: str, name: str, *, wait: float | None = None) -> None:
    """Mark, wait for the workers to stop (up to ``wait`` s: default two heartbeats past the
    grace period), delete under the budget lock, verify. Raises ``StudyError`` if not deleted."""
    import optuna

    from tuner.study.budget import BudgetLock
    from tuner.study.worker import DELETING

    interval, grace = heartbeat_settings()
    wait = grace + 2 * interval if wait is None else wait
    study_id = storage.get_study_id_from_name(name)
    storage.set_study_user_attr(study_id, DELETING, {"host": socket.gethostname(), "pid": os.getpid(),
                                                     "at": datetime.datetime.now().isoformat(timespec="seconds")})
    deadline = time.monotonic() + wait
    lock = BudgetLock(storage, url, name)
    live: list[int] = []
    failure = ""
    for _ in range(ATTEMPTS):
        while time.monotonic() < deadline and live_running(storage, study_id, grace):
            time.sleep(min(1.0, interval / 2))
        with lock.held():  # no worker reserves a trial meanwhile (they also see the mark under it)
            live = live_running(storage, study_id, grace)
            if live:
                break
            try:
                optuna.delete_study(study_name=name, storage=storage)
            except KeyError:  # deleted by someone else meanwhile
                pass
            except Exception as exc:  # noqa: BLE001 - e.g. a late worker's write violated the cascade: retry
                failure = str(getattr(exc, "orig", None) or exc.__cause__ or exc).strip().splitlines()[0]
                log.debug("delete of study %r failed: %s", name, failure)
        if name not in study_names(storage):
            return
        time.sleep(1.0)
    if live:
        try:  # nothing was deleted: the study goes on as before
            storage.set_study_user_attr(study_id, DELETING, None)
        except Exception:  # noqa: BLE001 - the mark stays; the workers that saw it have stopped anyway
            pass
        raise StudyError(f"study {name!r} not deleted: trial(s) {live} still running on live workers after "
                         f"{wait:.0f} s; stop them (Ctrl-C the launch, SIGTERM the workers) and rerun")
    raise StudyError(f"study {name!r} is still in {redact(url)} after {ATTEMPTS} attempts to delete it"
                     + (f" ({redact(failure)})" if failure else ""))
