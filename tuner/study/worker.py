"""``tuner worker``: join a study, load the model once, run trials until the global budget is met.

    tuner worker --study default --storage postgresql://user:pw@host/db --device cuda:1

Each trial is reserved under the study's budget lock (``tuner.study.budget``): a queued retry
first, a new trial only while finished + running + queued < budget, so the study ends on exactly
its budget. The trial then runs through Optuna's ask/tell with a heartbeat thread; a killed
worker's trial goes stale, is failed and re-enqueued (``RetryHeartbeatStaleTrialCallback``) and
run by another worker. Ctrl-C / SIGTERM fail the running trial and queue it again."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from tuner.errors import ConfigError, StudyError, TunerError

log = logging.getLogger(__name__)
REMOTE_CODE_ENV = "TUNER_TRUST_REMOTE_CODE"
MAX_CONSECUTIVE_FAILURES = 5
POLL_SECONDS = 1.0
DELETING = "deleting"
"""Study user attribute set by ``tuner delete``: every worker stops within a heartbeat, the
launcher exits, and only then is the study removed."""
STUDY_DELETED = threading.Event()
"""Set in this process once its study is marked for deletion (or gone)."""


@dataclass
class Counts:
    complete: int = 0
    pruned: int = 0
    running: int = 0
    waiting: int = 0
    failed: int = 0
    infeasible: int = 0  # complete, but with a disabling edit or a specificity drop beyond the guard
    best: float | None = None  # best complete feasible value (single-objective studies), from the same read

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def count_trials(study: Any) -> Counts:
    from optuna.trial import TrialState

    from tuner.study.objective import best_first, feasible

    c = Counts()
    single = len(study.directions) == 1
    candidates = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            c.complete += 1
            if not feasible(t):
                c.infeasible += 1
            elif single and t.value is not None:
                candidates.append(t)
        elif t.state == TrialState.PRUNED:
            c.pruned += 1
        elif t.state == TrialState.RUNNING:
            c.running += 1
        elif t.state == TrialState.WAITING:
            c.waiting += 1
        elif t.state == TrialState.FAIL:
            c.failed += 1
    if candidates:
        c.best = best_first(candidates, lambda t: t.value, lambda t: t.number,
                            maximize=study.direction.name == "MAXIMIZE")[0].value
    return c


def budget_of(study: Any) -> int:
    return int(study.user_attrs.get("budget", 0))


class Heartbeat:
    """Records the trial's heartbeat every ``interval`` seconds in a daemon thread, so a worker
    that dies is noticed; retried through outages by the storage itself."""

    def __init__(self, storage: Any, trial_id: int, interval: float, study_id: int | None = None) -> None:
        self._stop = threading.Event()
        self._storage, self._trial_id, self._interval, self._study_id = storage, trial_id, interval, study_id
        storage.record_heartbeat(trial_id)
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._storage.record_heartbeat(self._trial_id)
                if self._study_id is not None and marked_for_deletion(self._storage, self._study_id):
                    stop_for_deletion()
                    return
            except Exception as exc:  # noqa: BLE001 - past the outage window: the trial goes stale
                log.warning("heartbeat of trial id %d not recorded: %s", self._trial_id, str(exc).splitlines()[0])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def marked_for_deletion(storage: Any, study_id: int) -> bool:
    """``tuner delete`` marked the study (or it is gone already)."""
    try:
        return bool(storage.get_study_user_attrs(study_id).get(DELETING))
    except KeyError:  # no such study any more
        return True


def stop_for_deletion() -> None:
    """The study is being deleted: stop at the next checkpoint, as a SIGTERM would, but say why."""
    import signal

    if not STUDY_DELETED.is_set():
        STUDY_DELETED.set()
        os.kill(os.getpid(), signal.SIGTERM)  # acted on at the next checkpoint (between optimisation steps)


WAIT = "wait"
DELETED = "deleted"


def reserve(study: Any, storage: Any, lock: Any, budget: int) -> Any:
    """Under the study's budget lock: a trial to run (a waiting retry first), ``WAIT`` while other
    workers hold the rest of the budget, ``None`` once the budget is met, or ``DELETED`` once
    ``tuner delete`` marked the study. Retried through a database outage like every storage call."""
    import optuna

    from tuner.signals import Interrupted
    from tuner.study.retrying import is_transient
    from tuner.study.storage import heartbeat_settings, outage_window

    deadline = None
    while True:
        reserved = None
        try:
            interval, grace = heartbeat_settings()
            if not storage.in_outage_or_recovering(grace + 2 * interval):
                optuna.storages.fail_stale_trials(study)  # a dead worker's trial → FAIL + a WAITING retry
                fail_silent_trials(study, storage, grace + 2 * interval)
            with lock.held():
                if marked_for_deletion(storage, study._study_id):  # checked under the lock tuner delete takes
                    return DELETED
                counts = count_trials(study)
                if counts.finished >= budget:
                    return None
                if counts.waiting == 0 and counts.finished + counts.running >= budget:
                    return WAIT
                trial = None
                try:
                    trial = study.ask()
                    reserved = trial, Heartbeat(storage, trial._trial_id, storage.get_heartbeat_interval() or 10,
                                               study._study_id)
                except Interrupted:  # signalled between creating the trial and running it
                    if trial is not None:
                        study.tell(trial, state=optuna.trial.TrialState.FAIL)
                        study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
                    raise
            return reserved
        except Exception as exc:
            if reserved is not None:  # the trial is ours and beating; only releasing the lock failed
                return reserved
            if not is_transient(exc):
                raise
            deadline = deadline or time.monotonic() + outage_window()
            if time.monotonic() >= deadline:
                raise
            time.sleep(2.0)


def fail_silent_trials(study: Any, storage: Any, older_than: float) -> None:
    """A RUNNING trial that never recorded a heartbeat (its worker died, or lost the database,
    between creating it and the first heartbeat) is never judged stale by Optuna: fail it once
    it is ``older_than`` seconds old and queue its fixed parameters again, so the study cannot
    wait on it for ever."""
    import datetime

    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from sqlalchemy import text

    cutoff = datetime.datetime.now() - datetime.timedelta(seconds=older_than)
    with storage.engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT t.trial_id FROM trials t JOIN studies s ON s.study_id = t.study_id "
            "LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
            "WHERE s.study_name = :name AND t.state = 'RUNNING' AND h.trial_id IS NULL AND t.datetime_start < :cutoff"
        ), {"name": study.study_name, "cutoff": cutoff}).fetchall()
    for (trial_id,) in rows:
        frozen = storage.get_trial(trial_id)
        try:
            failed = storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        except UpdateFinishedTrialError:  # another worker got there first
            continue
        if failed:
            log.warning("trial %d never sent a heartbeat; failed and queued again", frozen.number)
            params = frozen.system_attrs.get("fixed_params") or dict(frozen.params)
            if params:
                study.enqueue_trial(params, user_attrs={"retry_of": frozen.number})


def run_trial(study: Any, objective: Any, trial: Any, heartbeat: Heartbeat) -> Any:
    """Run one reserved trial and tell Optuna its outcome. An interrupt (Ctrl-C, SIGTERM, the
    launcher gone) fails it and re-enqueues its parameters, so the rerun repeats it."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    from tuner.signals import Interrupted, checkpoint, deferred_signals

    def tell(**kwargs: Any) -> Any:
        # Another worker may have failed this trial as stale meanwhile (this worker was frozen,
        # e.g. SIGSTOP, or cut off longer than the grace period): its retry is another trial, so
        # this result is dropped, never told (Optuna raises on telling a finished trial).
        stored = study._storage.get_trial(trial._trial_id)
        if stored.state == TrialState.RUNNING:
            try:
                return study.tell(trial, **kwargs)
            except (UpdateFinishedTrialError, ValueError):  # finished elsewhere between the read and the tell
                stored = study._storage.get_trial(trial._trial_id)
                if stored.state == TrialState.RUNNING:
                    raise
        log.warning("trial %d was finished elsewhere (%s: judged stale while this worker was stopped or cut off); "
                    "its result is dropped", trial.number, stored.state.name)
        return stored

    try:
        with deferred_signals():  # a signal now takes effect between facts (objective) or below
            try:
                value = objective(trial)
            except optuna.TrialPruned:
                return tell(state=TrialState.PRUNED)
            except Interrupted:
                heartbeat.stop()
                if tell(state=TrialState.FAIL).state == TrialState.FAIL and not STUDY_DELETED.is_set():
                    study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
                raise
            except UpdateFinishedTrialError:
                return tell(state=TrialState.FAIL)
            except Exception as exc:  # the objective stored the reason; the worker carries on
                log.warning("trial %d failed: %s", trial.number,
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                return tell(state=TrialState.FAIL)
            return tell(values=value)
    finally:
        heartbeat.stop()
        checkpoint()  # a signal that came while the result was being stored


def run_batch(study: Any, objective: Any, reserved: list[tuple[Any, Heartbeat]], hps: list[Any]) -> list[Any]:
    """Run several reserved, started trials (``Objective.start``) as one batch
    (``Objective.batch``) and tell Optuna each outcome, as ``run_trial`` does for one. An
    interrupt fails every trial of the batch and queues each again; any other error in the
    shared work runs the trials one by one, so only the trial at fault fails."""
    from optuna.trial import TrialState

    from tuner.signals import Interrupted, checkpoint, deferred_signals

    trials = [t for t, _ in reserved]
    t0 = time.perf_counter()
    try:
        with deferred_signals():
            outcomes = objective.batch(trials, hps)
    except Interrupted:
        for trial, heartbeat in reserved:
            heartbeat.stop()
            stored = study._storage.get_trial(trial._trial_id)
            if stored.state == TrialState.RUNNING:
                study.tell(trial, state=TrialState.FAIL)
                if not STUDY_DELETED.is_set():
                    study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. one setting's loss diverged: find which, alone
        log.warning("a batch of %d trials failed (%s); running them one by one", len(trials),
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        outcomes = [None] * len(trials)
    share = (time.perf_counter() - t0) / len(trials)
    frozen: list[Any] = []
    try:
        for (trial, heartbeat), hp, get in zip(reserved, hps, outcomes):
            objective.current = trial.number
            if get is None:  # alone, as a trial of its own
                def one(t: Any, hp: Any = hp) -> Any:
                    return objective.finish(t, hp, lambda: objective.alone(t, hp))
            else:
                def one(t: Any, hp: Any = hp, get: Any = get) -> Any:
                    return objective.finish(t, hp, get, seconds=share)
            frozen.append(run_trial(study, one, trial, heartbeat))
    except Interrupted:  # while the batch's results were stored: the rest go back to the queue
        for trial, heartbeat in reserved[len(frozen) + 1:]:
            heartbeat.stop()
            if study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
                study.tell(trial, state=TrialState.FAIL)
                if not STUDY_DELETED.is_set():
                    study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
        raise
    checkpoint()
    return frozen


def reserve_batch(study: Any, storage: Any, lock: Any, budget: int, objective: Any, first: tuple[Any, Heartbeat],
                  size: int) -> tuple[list[tuple[Any, Heartbeat]], list[Any]]:
    """``first`` and up to ``size − 1`` more trials, each started (its setting suggested)
    before the next is asked for, so the sampler sees the batch's earlier settings as running
    trials (Optuna's GP and TPE samplers then propose elsewhere). Stops early when the budget
    has no trial left to give."""
    from optuna.trial import TrialState

    batch, hps = [], []
    nxt: Any = first
    while True:
        trial, heartbeat = nxt
        try:
            hps.append(objective.start(trial))
            batch.append(nxt)
        except Exception as exc:  # noqa: BLE001 - this trial fails; the batch goes on without it
            log.warning("trial %d failed before it ran: %s", trial.number, str(exc).splitlines()[0])
            heartbeat.stop()
            study.tell(trial, state=TrialState.FAIL)
        if len(batch) >= size:
            break
        nxt = reserve(study, storage, lock, budget)
        if not isinstance(nxt, tuple):  # WAIT, None (budget met) or DELETED: run what we have
            break
    return batch, hps


class _Deleted(Exception):
    """The study was marked for deletion: the worker stops (``run_worker`` says so once)."""


def watch_parent(parent_pid: int) -> None:
    """Workers never outlive their launcher: if it disappears (even by kill -9), this worker
    gets SIGTERM and stops like any terminated worker."""
    import signal

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def check_remote_code(cfg: Any, consent: bool, name: str | None = None) -> None:
    """A study read from a database never runs a checkpoint's own code without this process's consent."""
    if cfg.model.trust_remote_code and not consent:
        raise StudyError(f"study {name or cfg.name!r} runs its checkpoint's own Python code (model.trust_remote_code); "
                         f"this process runs it only with --trust-remote-code or {REMOTE_CODE_ENV}=1")


def run_worker(url: str | None, name: str, *, device: str | None = None, threads: int | None = None,
               quiet: bool = False, seed_offset: int | None = None, parent_pid: int | None = None,
               trust_remote_code: bool = False, batch_trials: int | str = 1) -> int:
    from tuner.signals import checkpoint, deferred_signals
    from tuner.study.storage import resolve_url

    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    url = resolve_url(url)
    if parent_pid is not None:
        watch_parent(parent_pid)
    with deferred_signals():  # the worker acts on signals only at its checkpoints, never inside a library
        try:
            return _work(url, name, device=device, threads=threads, quiet=quiet, seed_offset=seed_offset,
                         trust_remote_code=trust_remote_code, checkpoint=checkpoint, batch_trials=batch_trials)
        except BaseException as exc:
            from tuner.study.retrying import is_transient

            # a study deleted under this worker surfaces as whatever call came next (no such
            # trial, no such study): look once, unless the error is the user's or the database's
            suspect = isinstance(exc, Exception) and not isinstance(exc, TunerError) and not is_transient(exc)
            if not (STUDY_DELETED.is_set() or (suspect and _study_gone(url, name))):
                raise
    # one line per worker started by hand; under tuner launch the launcher says it once for all
    log.log(logging.INFO if parent_pid is not None else logging.WARNING,
            "study %r is being deleted (tuner delete): worker %d stops", name, os.getpid())
    return 0


MAX_BATCH_TRIALS = 8
BATCH_MEMORY_SHARE = 0.5
"""``--batch-trials auto`` on a GPU: trials per batch while their v* state and edits fit in this
share of the free device memory (the forward passes are chunked whatever the batch)."""


def parse_batch_trials(value: str | int) -> int | str:
    """``--batch-trials``: a positive count, or ``auto``."""
    if value == "auto":
        return value
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ConfigError(f"--batch-trials must be a positive number of trials or 'auto', got {value!r}")
    return n


def trials_per_batch(value: int | str, device: str, n_facts: int, model_config: Any) -> int:
    """``auto``: one trial at a time on the CPU (``bench/batch_trials.py`` measures what batching
    gains there); on a GPU as many as fit ``BATCH_MEMORY_SHARE`` of its free memory, by the
    size of a trial's δ, Adam state and rank-one updates (at most ``MAX_BATCH_TRIALS``)."""
    value = parse_batch_trials(value)
    if value != "auto":
        return int(value)
    if not str(device).startswith("cuda"):
        return 1
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    d_model = getattr(model_config, "hidden_size", None) or getattr(model_config, "n_embd", None) or 4096
    d_ff = (getattr(model_config, "intermediate_size", None) or getattr(model_config, "ffn_hidden_size", None)
            or getattr(model_config, "n_inner", None) or 4 * d_model)
    return batch_size_for(free, n_facts, d_model, d_ff)


def batch_size_for(free_bytes: int, facts: int, d_model: int, d_ff: int) -> int:
    """Trials that fit ``BATCH_MEMORY_SHARE`` of ``free_bytes``: per fact a trial holds δ and
    Adam's two moments (3 × d_model float32), its rank-one update (d_model × d_ff in float64, the
    largest term) and the scoring's per-row u and Λ."""
    per_trial = facts * (4 * 3 * d_model + 8 * (d_model * d_ff + d_model + d_ff))
    return max(1, min(MAX_BATCH_TRIALS, int(free_bytes * BATCH_MEMORY_SHARE) // max(1, per_trial)))


def _study_gone(url: str, name: str) -> bool:
    """After an error: was the study deleted (or marked for deletion) under this worker?"""
    try:
        from tuner.study.storage import make_storage, study_names

        storage = make_storage(url, heartbeat=False, create=False)
        if name not in study_names(storage):
            return True
        return marked_for_deletion(storage, storage.get_study_id_from_name(name))
    except Exception:  # noqa: BLE001 - cannot tell: the original error stands
        return False


def _work(url: str, name: str, *, device: str | None, threads: int | None, quiet: bool, seed_offset: int | None,
          trust_remote_code: bool, checkpoint: Any, batch_trials: int | str = 1) -> int:
    """Join the study, then run trials (one at a time, or in batches) until its budget is met."""
    from tuner.study.budget import BudgetLock

    study, storage, objective, n_batch = _join(url, name, device=device, threads=threads, quiet=quiet,
                                               seed_offset=seed_offset, trust_remote_code=trust_remote_code,
                                               checkpoint=checkpoint, batch_trials=batch_trials)
    lock = BudgetLock(storage, url, name)
    budget = budget_of(study)
    ran, failures = 0, 0
    while True:
        checkpoint()
        reserved = reserve(study, storage, lock, budget)
        if reserved is None:
            break
        if reserved == DELETED:
            STUDY_DELETED.set()
            raise _Deleted()
        if reserved == WAIT:
            # Other workers hold the rest of the budget. Wait: if one of them dies, its trial goes
            # stale, is failed here and re-enqueued as WAITING, and this worker runs it.
            time.sleep(POLL_SECONDS)
            budget = budget_of(study)
            continue
        if n_batch > 1:
            batch, hps = reserve_batch(study, storage, lock, budget, objective, reserved, n_batch)
            done = run_batch(study, objective, batch, hps) if batch else []
        else:
            trial, heartbeat = reserved
            objective.current = trial.number
            done = [run_trial(study, objective, trial, heartbeat)]
        ran += len(done)
        failures = _count_failures(done, failures)
    log.info("worker %d done: ran %d trials", os.getpid(), ran)
    return ran


def _count_failures(done: list[Any], failures: int) -> int:
    """Consecutive failed trials after ``done``; too many in a row stop the worker."""
    import optuna

    for frozen in done:
        if frozen.state != optuna.trial.TrialState.FAIL:
            failures = 0
            continue
        failures += 1
        if failures >= MAX_CONSECUTIVE_FAILURES:
            reason = frozen.user_attrs.get("fail_reason", "see the trial attributes")
            raise TunerError(f"{failures} trials in a row failed; last reason: {reason}")
    return failures


def _join(url: str, name: str, *, device: str | None, threads: int | None, quiet: bool, seed_offset: int | None,
          trust_remote_code: bool, checkpoint: Any, batch_trials: int | str) -> tuple[Any, Any, Any, int]:
    """(study, storage, objective, trials per batch): the config read from the study, the model
    loaded once, the references measured once per study."""
    import optuna
    import torch

    from tuner.study import references
    from tuner.study.objective import Objective
    from tuner.study.setup import bound_space, load_existing, make_pruner, make_sampler
    from tuner.study.storage import make_storage

    storage = make_storage(url, create=False)
    _, cfg = load_existing(storage, url, name)  # the config is parsed once, here
    check_remote_code(cfg, trust_remote_code, name)
    space = bound_space(cfg)
    facts = cfg.select_facts()
    loaded = cfg.load_model(device=device, progress=not quiet)
    if loaded.device == "cpu":
        # Several CPU workers on one machine must not oversubscribe the cores: OpenMP threads
        # spin-wait, so workers that each take every core slow one another down.
        # `tuner launch` passes cores // workers; a worker started by hand defaults to 1.
        torch.set_num_threads(threads or 1)
    elif threads:
        torch.set_num_threads(threads)
    editor = loaded.editor(progress=not quiet, stats_layers=space.layers(cfg.hparams),
                           disabling=cfg.disabling_rule())
    # Workers need distinct sampler seeds or they propose the same points. Launch numbers its
    # workers (worker 0 uses the study seed, so one worker is fully reproducible); a worker
    # started by hand falls back to its pid.
    offset = os.getpid() if seed_offset is None else seed_offset
    study = optuna.load_study(study_name=name, storage=storage,
                              sampler=make_sampler(cfg, seed=cfg.seed + offset), pruner=make_pruner(cfg))
    checkpoint()
    thresholds = references.ensure(study, cfg, editor, facts, loaded.adapter.family)  # the relative guards
    checkpoint()
    objective = Objective(cfg, editor, facts, space, fingerprint=loaded.fingerprint, device=loaded.device,
                          thresholds=thresholds)
    n_batch = trials_per_batch(batch_trials, loaded.device, len(facts), loaded.model.config)
    log.info("worker %d on %s joined study %r (%d facts per trial%s)", os.getpid(), loaded.device, name, len(facts),
             f", {n_batch} trials per batch" if n_batch > 1 else "")
    return study, storage, objective, n_batch
