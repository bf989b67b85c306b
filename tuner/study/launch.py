"""``tuner launch``: create or resume a study, start local workers and show one progress bar
until the global budget is met. What is printed, exported and published afterwards is composed
by the caller (``tuner.cli.study_commands``).

    tuner launch --trials 200 [--workers auto] [--storage URL]

Workers are separate processes (``tuner worker``) so a crash or OOM in one cannot take the
launcher down; workers on other machines join with the same storage URL and study name."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from tuner.errors import ConfigError, Degraded, StudyDeleted, StudyError
from tuner.signals import Interrupted, checkpoint, deferred_signals
from tuner.study.config import StudyConfig
from tuner.study.storage import ENV, make_storage, redact, resolve_url

log = logging.getLogger(__name__)


def plan_workers(workers: str, threads: int | None = None) -> list[dict[str, str]]:
    """One dict of env/args per local worker: auto = one per visible GPU, else one CPU worker.
    CPU workers get ``threads`` torch threads each (default: cores ÷ workers)."""
    gpus: list[str] = []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    else:
        try:
            import torch
        except ImportError:  # no torch at all: CPU plan; a broken CUDA install is an error, not "no GPU"
            torch = None
        gpus = [str(i) for i in range(torch.cuda.device_count())] if torch is not None else []
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    if workers == "auto":
        n = max(1, len(gpus))
    else:
        try:
            n = int(workers)
        except ValueError:
            raise ConfigError(f"--workers must be a number or 'auto', got {workers!r}") from None
        if n < 1:
            raise ConfigError(f"--workers must be >= 1, got {n}")
    if gpus:
        extra = {"threads": str(threads)} if threads else {}
        return [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)], "device": "cuda", **extra} for i in range(n)]
    threads = threads or max(1, (os.cpu_count() or 1) // n)
    return [{"device": "cpu", "threads": str(threads)} for _ in range(n)]


@dataclass
class _Worker:
    """A local worker process; its stderr is passed through to ours, and its last line kept for
    the report if it exits early."""

    proc: subprocess.Popen
    index: int
    tail: deque = field(default_factory=lambda: deque(maxlen=1))
    reader: threading.Thread | None = None

    def start_reader(self) -> None:
        def pump() -> None:
            for line in self.proc.stderr:
                sys.stderr.write(line)
                sys.stderr.flush()
                if line.strip():
                    self.tail.append(line.strip())

        self.reader = threading.Thread(target=pump, name=f"worker-{self.index}-stderr", daemon=True)
        self.reader.start()

    @property
    def last_line(self) -> str:
        if self.reader is not None:
            self.reader.join(timeout=5)
        return self.tail[-1] if self.tail else "(no message)"


def _spawn(name: str, url: str, plan: dict[str, str], index: int, *, trust_remote_code: bool) -> _Worker:
    from tuner.study.worker import REMOTE_CODE_ENV

    env = {**os.environ, ENV: url}  # the URL (and its password) travels by env, not by argv
    env.pop(REMOTE_CODE_ENV, None)
    if trust_remote_code:  # the YAML given to this launch is the consent for the workers it starts
        env[REMOTE_CODE_ENV] = "1"
    if "CUDA_VISIBLE_DEVICES" in plan:
        env["CUDA_VISIBLE_DEVICES"] = plan["CUDA_VISIBLE_DEVICES"]
    cmd = [sys.executable, "-m", "tuner", "worker", "--study", name, "--device", plan["device"], "--quiet",
           "--sampler-seed-offset", str(index), "--parent-pid", str(os.getpid())]
    if "threads" in plan:
        cmd += ["--threads", plan["threads"]]
    if "batch_trials" in plan:
        cmd += ["--batch-trials", plan["batch_trials"]]
    worker = _Worker(subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace"), index)
    worker.start_reader()
    return worker


def _postfix(counts: Any) -> str:
    best = "-" if counts.best is None else f"{counts.best:.4f}"
    return f"running={counts.running} pruned={counts.pruned} failed={counts.failed} best={best}"


def _stop(procs: list[subprocess.Popen], timeout: float = 60) -> None:
    """SIGTERM to every worker (each fails and re-enqueues its running trial), then wait."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def widened(cfg: StudyConfig, name: str, url: str) -> tuple[StudyConfig, str, str]:
    """(config, study name, warm start) of ``--widen-bounds``: study ``name``'s best trial's
    bounds moved out, as study ``NAME-wide`` warm-started from ``name``."""
    from tuner.study.export import best_trial
    from tuner.study.setup import bound_space, load_existing

    study, stored = load_existing(make_storage(url, create=False), url, name)
    if stored.search.to_dict() != cfg.search.to_dict():
        raise ConfigError(f"--widen-bounds: study {name!r} was made from another search space; pass its --config")
    hits = bound_space(cfg).on_bounds(dict(best_trial(study).params))
    if not hits:
        raise ConfigError(f"--widen-bounds: the best trial of study {name!r} sits on no bound of its search space")
    search = cfg.search.widen(hits)
    log.info("widened %s", ", ".join(f"search.{k}: {cfg.search.to_dict()[k]} -> {search.to_dict()[k]}"
                                     for k in dict.fromkeys(n for n, _, _ in hits)))
    return cfg.replace(search=search, name=f"{name}-wide"), f"{name}-wide", name


@dataclass
class Launched:
    exit_code: int
    study: Any
    cfg: StudyConfig
    finished: bool
    """The budget was met (not interrupted, not ``--create-only``)."""


def launch(config: str, *, trials: int | None, study_name: str | None, url: str | None, workers: str,
           create_only: bool = False, progress: bool = True, seed_from_trace: bool = False,
           threads: int | None = None, warm_start_from: str | None = None, widen_bounds: bool = False,
           batch_trials: int | str = "auto") -> Launched:
    """Validate everything, create or resume the study, run the local workers until the budget
    is met (or a signal, or a deletion) and report how they ended."""
    from tuner.study.setup import create_or_resume
    from tuner.study.worker import count_trials

    cfg, name, budget, url, warm_start_from = _checked(config, trials, study_name, url, widen_bounds,
                                                      warm_start_from, create_only)
    plans = _worker_plans(workers, threads, batch_trials)
    storage = make_storage(url)
    trace, warm = _seeds(storage, cfg, name, url, seed_from_trace=seed_from_trace, warm_start_from=warm_start_from,
                         progress=progress)
    study, created = create_or_resume(storage, url, cfg, name, budget, trace=trace, warm=warm)
    counts = count_trials(study)
    log.info("%s study %r in %s: %d/%d finished", "created" if created else "resuming", name, redact(url),
             counts.finished, budget)
    if cfg.sampler == "gp" and cfg.pruner != "none" and not cfg.objective.multi_objective:
        log.warning("sampler gp learns only from completed trials: it proposes pruned settings again, so "
                    "pruner %s stops most of its trials (bench/search.py); use sampler tpe to prune", cfg.pruner)
    if create_only:
        return Launched(0, study, cfg, finished=False)
    if cfg.model.is_default:  # train once here, not in every worker at the same time
        cfg.build_default_model(progress=progress)
    return _run_workers(storage, study, cfg, name, url, plans, budget, counts, progress=progress)


def _checked(config: str, trials: int | None, study_name: str | None, url: str | None, widen_bounds: bool,
             warm_start_from: str | None, create_only: bool) -> tuple[StudyConfig, str, int, str, str | None]:
    """(config, study name, budget, storage URL, warm start), every input checked before any row
    or file is written."""
    from tuner.study.setup import check_local_dirs, validate_study
    from tuner.study.storage import sqlite_path

    cfg = StudyConfig.load(config)
    name = study_name or cfg.name
    budget = trials if trials is not None else cfg.trials
    if budget < 1:
        raise ConfigError(f"--trials must be >= 1, got {budget}")
    url = resolve_url(url)
    if widen_bounds:
        cfg, name, warm_start_from = widened(cfg, name, url)
    validate_study(cfg, name)
    if not create_only:  # the directories the model cache, statistics, exports and reports go to
        check_local_dirs(cfg, name)
    if warm_start_from is not None:
        path = sqlite_path(url)
        if path is not None and not path.exists():
            raise StudyError(f"--warm-start-from {warm_start_from}: no database at {path}")
    return cfg, name, budget, url, warm_start_from


def _worker_plans(workers: str, threads: int | None, batch_trials: int | str) -> list[dict[str, str]]:
    from tuner.study.worker import parse_batch_trials

    plans = plan_workers(workers, threads)
    for plan in plans:
        plan["batch_trials"] = str(parse_batch_trials(batch_trials))
    return plans


def _seeds(storage: Any, cfg: StudyConfig, name: str, url: str, *, seed_from_trace: bool,
           warm_start_from: str | None, progress: bool) -> tuple[dict | None, list | None]:
    """What a *new* study starts from: the causal trace's layers and the warm-start trials (an
    existing study is resumed as it is)."""
    from tuner.study.storage import study_names

    if not (seed_from_trace or warm_start_from is not None) or name in study_names(storage):
        return None, None
    trace = warm = None
    if seed_from_trace:
        from tuner.study.trace import run_trace

        trace = run_trace(cfg, facts=max(10, cfg.facts.per_trial), noise=3.0, samples=10, window=None,
                          seed=cfg.seed, progress=progress)
        log.info("causal trace: top MLP layers %s (%d facts traced in %.1fs)", trace["top_mlp_layers"],
                 trace["traced"], trace["seconds"])
    if warm_start_from is not None:
        from tuner.study.setup import warm_start_params

        warm = warm_start_params(storage, url, warm_start_from)
        log.info("warm start: %d trial(s) from study %r enqueued after the textbook setting", len(warm),
                 warm_start_from)
    return trace, warm


def _run_workers(storage: Any, study: Any, cfg: StudyConfig, name: str, url: str, plans: list[dict[str, str]],
                 budget: int, counts: Any, *, progress: bool) -> Launched:
    """The local workers until they exit, with the progress bar (from ``counts``, the study's
    trials before); a signal stops them (their trials re-queued), a deletion mark too."""
    from tuner.study.worker import count_trials

    workers: list[_Worker] = []
    bar = tqdm(total=budget, initial=min(counts.finished, budget), desc=f"study {name}", unit="trial",
               disable=not progress, dynamic_ncols=True)
    deleted = False
    try:
        # While workers run, a signal is acted on here, between polls: raised from the handler it
        # could land in a library's finaliser, where Python prints and drops it.
        with deferred_signals():
            checkpoint()
            if counts.waiting or counts.finished + counts.running < budget:
                workers = [_spawn(name, url, p, i, trust_remote_code=cfg.model.trust_remote_code)
                           for i, p in enumerate(plans)]
            deleted = _poll(storage, study, [w.proc for w in workers], bar, budget)
            checkpoint()
    except (Interrupted, KeyboardInterrupt) as exc:
        bar.close()
        _stop([w.proc for w in workers])
        code = getattr(exc, "exit_code", 130)
        print(f"\n{'terminated' if code == 143 else 'interrupted'}: workers stopped, their running trials failed and "
              f"queued again; rerun the same command to resume study {name!r}", file=sys.stderr)
        return Launched(code, study, cfg, finished=False)
    except Exception:
        if not _being_deleted(storage, study):
            raise
        deleted = True
        _wait_for_deletion_stop([w.proc for w in workers])
    if deleted or _being_deleted(storage, study):
        bar.close()
        raise StudyDeleted(f"study {name!r} is being deleted (tuner delete): its workers stopped; nothing exported")
    counts = count_trials(study)
    bar.n = min(counts.finished, budget)
    bar.set_postfix_str(_postfix(counts))
    bar.close()
    return _outcome(study, cfg, workers, counts, budget)


def _poll(storage: Any, study: Any, procs: list[subprocess.Popen], bar: Any, budget: int) -> bool:
    """Update the bar every second while any worker runs; True when the study is being deleted
    (the workers then stopped)."""
    from tuner.study.worker import count_trials

    while any(p.poll() is None for p in procs):
        time.sleep(1.0)
        checkpoint()
        if _being_deleted(storage, study):
            _wait_for_deletion_stop(procs)
            return True
        counts = count_trials(study)
        bar.n = min(counts.finished, budget)
        bar.set_postfix_str(_postfix(counts), refresh=False)
        bar.refresh()
    return False


def _being_deleted(storage: Any, study: Any) -> bool:
    from tuner.study.worker import marked_for_deletion

    try:
        return marked_for_deletion(storage, study._study_id)
    except Exception:  # noqa: BLE001 - the database is down: not a deletion (the outage is retried elsewhere)
        return False


def _wait_for_deletion_stop(procs: list[subprocess.Popen]) -> None:
    """Workers see the deletion mark within a heartbeat and stop by themselves; a straggler
    (frozen, or an old version) is terminated."""
    from tuner.study.storage import heartbeat_settings

    interval, _ = heartbeat_settings()
    deadline = time.time() + 2 * interval + 30
    while any(p.poll() is None for p in procs) and time.time() < deadline:
        time.sleep(0.5)
    _stop(procs)


def _outcome(study: Any, cfg: StudyConfig, workers: list[_Worker], counts: Any, budget: int) -> Launched:
    """Every worker that exited early is reported (exit code, its last line); a run whose budget
    was not met is degraded (exit 3), not a success."""
    from tuner.study.worker import budget_of

    early = [w for w in workers if w.proc.returncode not in (0, None)]
    for w in early:
        print(f"worker {w.index} (pid {w.proc.pid}) exited early with code {w.proc.returncode}: "
              f"{redact(w.last_line)}", file=sys.stderr)
    target = min(budget, budget_of(study) or budget)
    if counts.finished < target:
        raise Degraded(f"run degraded: {counts.finished}/{target} trials finished; {len(early)} of {len(workers)} "
                       "worker(s) exited early (above); rerun the same command to resume")
    if early:
        print(f"{len(early)} of {len(workers)} worker(s) exited early; the others met the budget", file=sys.stderr)
    return Launched(0, study, cfg, finished=True)
