"""``tuner worker``: join a study, load the model once, run trials until the global budget is met.

    tuner worker --study default --storage postgresql://user:pw@host/db --device cuda:1

A trial starts only while finished (complete + pruned) + running < budget, counted across every
worker on every machine, or when a retried trial is waiting. A killed worker's trial is failed
once its heartbeat is stale and re-enqueued as WAITING by the storage's
``RetryHeartbeatStaleTrialCallback`` (``tuner.study.storage.make_storage``)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from tuner.errors import TunerError

log = logging.getLogger(__name__)
MAX_CONSECUTIVE_FAILURES = 5
POLL_SECONDS = 1.0


@dataclass
class Counts:
    complete: int = 0
    pruned: int = 0
    running: int = 0
    waiting: int = 0
    failed: int = 0
    infeasible: int = 0  # complete, but with a disabling edit
    best: float | None = None  # best complete feasible value (single-objective studies), from the same read

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def count_trials(study: Any) -> Counts:
    from optuna.trial import TrialState

    from tuner.study.objective import feasible

    c = Counts()
    single = len(study.directions) == 1
    maximize = single and study.direction.name == "MAXIMIZE"
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            c.complete += 1
            if not feasible(t):
                c.infeasible += 1
            elif single and t.value is not None and (
                    c.best is None or (t.value > c.best if maximize else t.value < c.best)):
                c.best = t.value
        elif t.state == TrialState.PRUNED:
            c.pruned += 1
        elif t.state == TrialState.RUNNING:
            c.running += 1
        elif t.state == TrialState.WAITING:
            c.waiting += 1
        elif t.state == TrialState.FAIL:
            c.failed += 1
    return c


def budget_of(study: Any) -> int:
    return int(study.user_attrs.get("budget", 0))


def ensure_baseline(study: Any, cfg: Any, editor: Any, facts: list) -> None:
    """ROME's textbook hyperparameters on the same facts: what every study is compared with."""
    if "baseline" in study.user_attrs:
        return
    from tuner.rome.hparams import preset
    from tuner.study.objective import fact_score

    hp = preset("textbook", cfg.hparams, n_layers=editor.n_layers)
    metrics = [editor.edit(f, hp).metrics for f in facts]
    n = len(metrics)
    study.set_user_attr("baseline", {
        "hparams": hp.to_dict(),
        "score": sum(fact_score(m, cfg.objective) for m in metrics) / n,
        "final_prob": sum(m["final_prob"] for m in metrics) / n,
        "rebound": sum(m["rebound"] for m in metrics) / n,
        "efficacy": sum(m["efficacy"] for m in metrics) / n,
    })


def fail_if_running(study: Any, number: int | None) -> None:
    """Ctrl-C can land after the objective returned but before Optuna stored the result; never
    leave this worker's trial RUNNING (it would wait for the heartbeat grace to be retried)."""
    import optuna

    if number is None:
        return
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is not None and trial.state == optuna.trial.TrialState.RUNNING:
        study.tell(number, state=optuna.trial.TrialState.FAIL)


def run_worker(url: str | None, name: str, *, device: str | None = None, threads: int | None = None,
               quiet: bool = False, seed_offset: int | None = None) -> int:
    import optuna
    import torch

    from tuner.study.objective import Objective
    from tuner.study.setup import bound_space, load_existing, make_pruner, make_sampler
    from tuner.study.storage import make_storage, resolve_url

    url = resolve_url(url)
    storage = make_storage(url)
    _, cfg = load_existing(storage, url, name)  # the config is parsed once, here
    space = bound_space(cfg)
    facts = cfg.select_facts()
    loaded = cfg.load_model(device=device, progress=not quiet)
    if loaded.device == "cpu":
        # Several CPU workers on one machine must not oversubscribe the cores: OpenMP threads
        # spin-wait, and 2 workers × all cores ran ~10× slower than 2 × 1 thread here.
        # `tuner launch` passes cores // workers; a worker started by hand defaults to 1.
        torch.set_num_threads(threads or 1)
    elif threads:
        torch.set_num_threads(threads)
    editor = loaded.editor(progress=not quiet)
    # Workers need distinct sampler seeds or they propose the same points. Launch numbers its
    # workers (worker 0 uses the study seed, so one worker is fully reproducible); a worker
    # started by hand falls back to its pid.
    offset = os.getpid() if seed_offset is None else seed_offset
    study = optuna.load_study(study_name=name, storage=storage,
                              sampler=make_sampler(cfg, seed=cfg.seed + offset), pruner=make_pruner(cfg))
    ensure_baseline(study, cfg, editor, facts)
    objective = Objective(cfg, editor, facts, space, fingerprint=loaded.fingerprint, device=loaded.device)
    log.info("worker %d on %s joined study %r (%d facts per trial)", os.getpid(), loaded.device, name, len(facts))
    ran, failures = 0, 0
    while True:
        optuna.storages.fail_stale_trials(study)  # a dead worker's trial → FAIL + a WAITING retry
        counts = count_trials(study)
        if counts.finished >= budget_of(study):
            break
        if counts.waiting == 0 and counts.finished + counts.running >= budget_of(study):
            # Other workers hold the rest of the budget. Wait: if one of them dies, its trial goes
            # stale, is failed here and re-enqueued as WAITING, and this worker runs it.
            time.sleep(POLL_SECONDS)
            continue
        done: list = []
        try:
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False,
                           callbacks=[lambda _study, trial: done.append(trial)])
        except KeyboardInterrupt:
            fail_if_running(study, objective.current)
            raise
        ran += 1
        if done and done[-1].state == optuna.trial.TrialState.FAIL:
            failures += 1
            if failures >= MAX_CONSECUTIVE_FAILURES:
                reason = done[-1].user_attrs.get("fail_reason", "see the trial attributes")
                raise TunerError(f"{failures} trials in a row failed; last reason: {reason}")
        else:
            failures = 0
    log.info("worker %d done: ran %d trials", os.getpid(), ran)
    return ran
