"""``tuner launch | worker | status | report | dashboard | copy``: parsers and entry points.

``launch`` is composed here: the study service runs the trials (``tuner.study.launch``), then
this module prints the summary, exports the best setting (``tuner.study.export``) and writes the
report (``tuner.report``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from tuner.cli.options import add_config, add_device, add_storage

BATCH_TRIALS_HELP = ("trials a worker runs as one batch (their facts' v* optimised together, their edits scored "
                     "together; each trial's result as if alone). auto: as many as fit half the free GPU memory "
                     "(at most 8), 1 on the CPU")


def register(sub: argparse._SubParsersAction) -> None:
    _launch_parser(sub)
    _worker_parser(sub)
    _view_parsers(sub)
    _admin_parsers(sub)


def _launch_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("launch", help="create or resume a study and run it with local workers",
                       description="Create (or resume) a study and run local workers until the budget "
                                   "of finished trials is met, across all workers on all machines.")
    add_config(p)
    p.add_argument("--trials", type=int, help="trial budget (default: the study's `trials`)")
    p.add_argument("--study", help="study name (default: the YAML's `name`)")
    add_storage(p)
    p.add_argument("--workers", default="auto", help="local workers: a number, or auto = one per visible GPU, else 1")
    p.add_argument("--threads", type=int,
                   help="CPU threads per local worker (default: cores ÷ workers; lower it on a loaded machine)")
    p.add_argument("--batch-trials", default="auto", metavar="N|auto",
                   help=BATCH_TRIALS_HELP)
    p.add_argument("--create-only", action="store_true", help="create the study (and tables) and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--widen-bounds", action="store_true",
                   help="continue a finished study whose best trial sits on a bound of the search space: a new "
                        "study NAME-wide with those bounds moved out (x/÷4 on log ranges, half the range otherwise), "
                        "warm-started from its best trials")
    p.add_argument("--warm-start-from", metavar="STUDY",
                   help="a new study starts with this study's 5 best feasible trials (same storage; "
                        "e.g. a smaller model of the same family), after ROME's textbook setting")
    p.add_argument("--seed-from-trace", action="store_true",
                   help="causal-trace the facts first and start the search at the top MLP layers")
    p.set_defaults(run="tuner.cli.study_commands:launch")


def _worker_parser(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("worker", help="join an existing study and run trials until its budget is met")
    w.add_argument("--study", required=True, help="study name")
    add_storage(w)
    add_device(w)
    w.add_argument("--threads", type=int, help="CPU threads for torch (default on CPU: 1, so several workers share the cores)")
    w.add_argument("--batch-trials", default="auto", metavar="N|auto",
                   help=BATCH_TRIALS_HELP)
    w.add_argument("--quiet", action="store_true", help="log warnings only (used by launch)")
    w.add_argument("--sampler-seed-offset", type=int, help="sampler seed = study seed + this (default: the pid)")
    w.add_argument("--trust-remote-code", action="store_true",
                   help="consent to run the checkpoint's own Python code when the study asks for it "
                        "(or TUNER_TRUST_REMOTE_CODE=1); never taken from the database alone")
    w.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # set by launch: stop when it is gone
    w.set_defaults(run="tuner.cli.study_commands:worker")


def _view_parsers(sub: argparse._SubParsersAction) -> None:
    """report, dashboard, status."""
    r = sub.add_parser("report", help="write the HTML report of a study and refresh its dashboard figures")
    r.add_argument("--study", required=True, help="study name")
    add_storage(r)
    r.add_argument("--out", help="output directory (default: storage/reports/<study>)")
    r.add_argument("--x", help="first hyperparameter of the loss surface (default: layer)")
    r.add_argument("--y", help="second hyperparameter of the loss surface (default: v_lr)")
    r.add_argument("--metric", default="value", choices=["value", "final_prob", "rebound", "final_loss"],
                   help="what the surface shows first (default: the objective)")
    r.add_argument("--top-k", type=int, default=3, help="trajectories of the top-k trials besides best/median/worst")
    r.set_defaults(run="tuner.cli.study_commands:report")

    d = sub.add_parser("dashboard", help="serve optuna-dashboard on the study storage")
    add_storage(d)
    d.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    d.add_argument("--port", type=int, default=8080)
    d.set_defaults(run="tuner.cli.study_commands:dashboard")

    s = sub.add_parser("status", help="counts by state, best trial and workers of a study")
    s.add_argument("--study", help="study name (default: list the studies)")
    add_storage(s)
    s.set_defaults(run="tuner.cli.study_commands:status")


def _admin_parsers(sub: argparse._SubParsersAction) -> None:
    """copy, delete, validate."""
    c = sub.add_parser("copy", help="copy a study between storages (e.g. SQLite → PostgreSQL)")
    c.add_argument("--study", required=True, help="study name")
    c.add_argument("--from", dest="src", required=True, help="source storage URL")
    c.add_argument("--to", dest="dst", required=True, help="destination storage URL")
    c.set_defaults(run="tuner.cli.study_commands:copy")

    x = sub.add_parser("delete", help="delete a study and all its trials from the storage",
                       description="Delete a study (its trials, attributes, dashboard figures) from the storage. "
                                   "Workers running it stop within a heartbeat (and tuner launch exits) before it "
                                   "is removed. Its exported files and reports under storage/ are kept.")
    x.add_argument("--study", required=True, help="study name")
    add_storage(x)
    x.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    x.set_defaults(run="tuner.cli.study_commands:delete")

    v = sub.add_parser("validate", help="compare the top trials, ROME's textbook setting and EasyEdit's defaults "
                                        "on held-out facts",
                       description="Edit the study's held-out facts (facts.holdout, never tuned on) with its top-K "
                                   "trials, ROME's textbook setting and the model family's EasyEdit defaults; store "
                                   "the table in the study and export the best of the top-K on those facts.")
    v.add_argument("--study", required=True, help="study name")
    add_storage(v)
    add_device(v)
    v.add_argument("--top", type=int, default=5, help="how many of the best trials to validate (default 5)")
    v.add_argument("--holdout", type=int, help="held-out facts (default: the study's facts.holdout)")
    v.add_argument("--trust-remote-code", action="store_true", help="consent to run the checkpoint's own code")
    v.add_argument("--no-progress", action="store_true", help="no progress bars")
    v.set_defaults(run="tuner.cli.study_commands:validate")


def launch(args: argparse.Namespace) -> int:
    from tuner.study.launch import launch as run_launch

    done = run_launch(args.config, trials=args.trials, study_name=args.study, url=args.storage,
                      workers=args.workers, create_only=args.create_only, progress=not args.no_progress,
                      seed_from_trace=args.seed_from_trace, threads=args.threads,
                      warm_start_from=args.warm_start_from, widen_bounds=args.widen_bounds,
                      batch_trials=args.batch_trials)
    if done.finished:
        summarize(done.study, done.cfg, progress=not args.no_progress)
    return done.exit_code


def summarize(study: Any, cfg: Any, *, progress: bool = True) -> list[Path] | None:
    """Print the outcome of a finished study, validate it on its held-out facts (when it has
    them), export its setting and write its report."""
    from tuner.errors import StudyError
    from tuner.study.export import best_trial
    from tuner.study.verdict import bounds_line, infeasible_reasons, rows_table, trade_off_line, tuning_rows
    from tuner.study.worker import count_trials

    counts = count_trials(study)
    print(f"study {study.study_name!r}: {counts.complete} complete, {counts.pruned} pruned, "
          f"{counts.failed} failed")
    if counts.infeasible:
        reasons = ", ".join(f"{n} {why}" for why, n in infeasible_reasons(study).most_common())
        print(f"{counts.infeasible} complete trial(s) infeasible, never exported: {reasons or 'see the trials'}")
    try:
        trial = best_trial(study)
    except StudyError:
        trial = None
        print("no completed feasible trial")
    if trial is not None:
        if len(study.directions) > 1:
            names = " vs ".join(study.metric_names or [])
            print(f"Pareto front ({names}): {len(study.best_trials)} trials; the best first objective is shown")
        print(f"best trial #{trial.number} on the tuning facts: value {', '.join(f'{v:.4f}' for v in trial.values)}")
        for k, v in trial.params.items():
            print(f"  {k:<20} {v:.5g}" if isinstance(v, float) else f"  {k:<20} {v}")
        on_bound = bounds_line(study, cfg, trial)
        if on_bound:
            print(on_bound)
    rows = tuning_rows(study, trial)
    if rows:
        print(rows_table(rows, f"on the {len(cfg.select_facts())} tuning facts (S = CounterFact's harmonic mean of "
                               "efficacy, paraphrase and specificity):"))
    line = trade_off_line(study)
    if line:
        print(line)
    if cfg.facts.holdout:
        from tuner.errors import TunerError
        from tuner.study.validate import run_validation, table

        try:
            print(table(run_validation(study, cfg, progress=progress)))
        except TunerError as exc:  # the trials are done: export by the tuning value, say why
            print(f"held-out validation not run ({exc}); exporting the best trial on the tuning facts")
    if trial is None and not (study.user_attrs.get("holdout") or {}).get("winner"):
        print("nothing to export")
        return None
    return export_and_report(study, cfg)


def export_and_report(study: Any, cfg: Any) -> list[Path]:
    """The exported setting's files and the HTML report (after a launch, after ``tuner validate``)."""
    from tuner.paths import storage_root
    from tuner.report.html import write_report
    from tuner.study.export import export_best

    paths = export_best(study, cfg)
    for path in paths:
        print(f"wrote {path}")
    page = write_report(study, cfg, storage_root() / "reports" / study.study_name)
    print(f"wrote {page} (figures also stored in the study for optuna-dashboard)")
    return paths


def validate(args: argparse.Namespace) -> int:
    from tuner.study.setup import load_existing
    from tuner.study.storage import make_storage, resolve_url
    from tuner.study.validate import run_validation, table
    from tuner.study.worker import REMOTE_CODE_ENV, check_remote_code

    url = resolve_url(args.storage)
    study, cfg = load_existing(make_storage(url, heartbeat=False, create=False), url, args.study)
    check_remote_code(cfg, args.trust_remote_code or os.environ.get(REMOTE_CODE_ENV) == "1", args.study)
    record = run_validation(study, cfg, top=args.top, holdout=args.holdout, device=args.device,
                            progress=not args.no_progress)
    print(table(record))
    export_and_report(study, cfg)
    return 0


def worker(args: argparse.Namespace) -> int:
    import logging

    from tuner.study.worker import run_worker

    if args.quiet:
        logging.getLogger().setLevel(logging.WARNING)
    from tuner.study.worker import REMOTE_CODE_ENV, parse_batch_trials

    trust = args.trust_remote_code or os.environ.get(REMOTE_CODE_ENV) == "1"
    run_worker(args.storage, args.study, device=args.device, threads=args.threads, quiet=args.quiet,
               seed_offset=args.sampler_seed_offset, parent_pid=args.parent_pid, trust_remote_code=trust,
               batch_trials=parse_batch_trials(args.batch_trials))
    return 0


def status(args: argparse.Namespace) -> int:
    from collections import Counter

    from tuner.study.export import best_trial
    from tuner.study.setup import load_existing
    from tuner.study.storage import make_storage, redact, resolve_url, study_names
    from tuner.study.worker import budget_of, count_trials

    url = resolve_url(args.storage)
    storage = make_storage(url, heartbeat=False, create=False)
    if not args.study:
        names = study_names(storage)
        print(f"studies in {redact(url)}: {', '.join(names) if names else 'none'}")
        return 0
    study, cfg = load_existing(storage, url, args.study)
    c = count_trials(study)
    print(f"study {args.study!r} in {redact(url)}")
    print(f"budget {budget_of(study)}: {c.finished} finished ({c.complete} complete, {c.pruned} pruned), "
          f"{c.running} running, {c.waiting} waiting, {c.failed} failed, {c.infeasible} infeasible "
          "(a disabling edit or a specificity drop beyond the guard)")
    t = None
    if c.complete > c.infeasible:
        t = best_trial(study)
        print(f"best trial #{t.number}: value {', '.join(f'{v:.4f}' for v in t.values)}  params {t.params}")
    from tuner.study.verdict import rows_table, trade_off_line, tuning_rows

    rows = tuning_rows(study, t if c.complete > c.infeasible else None)
    if rows:
        print(rows_table(rows, "on the tuning facts:"))
    line = trade_off_line(study)
    if line:
        print(line)
    record = study.user_attrs.get("holdout")
    if record:
        from tuner.study.validate import verdict

        print(f"held-out validation on {len(record['facts'])} facts:")
        for line in verdict(record):
            print(f"  {line}")
    workers = Counter()
    for t in study.get_trials(deepcopy=False):
        w = t.user_attrs.get("worker")
        if w:
            workers[(w["host"], w["pid"], w["device"])] += 1
    for (host, pid, device), n in sorted(workers.items()):
        print(f"worker {host} pid {pid} on {device}: {n} trials")
    return 0


def report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tuner.paths import storage_root
    from tuner.report.html import write_report
    from tuner.study.setup import load_existing
    from tuner.study.storage import make_storage, resolve_url

    url = resolve_url(args.storage)
    study, cfg = load_existing(make_storage(url, heartbeat=False, create=False), url, args.study)
    out = Path(args.out) if args.out else storage_root() / "reports" / args.study
    path = write_report(study, cfg, out, x=args.x, y=args.y, metric=args.metric, top_k=args.top_k)
    print(f"wrote {path}")
    return 0


def dashboard(args: argparse.Namespace) -> int:
    from tuner.report.dashboard import serve
    from tuner.study.storage import redact, resolve_url

    url = resolve_url(args.storage)
    print(f"optuna-dashboard on {redact(url)}: http://{args.host}:{args.port}/  (Ctrl-C stops)", flush=True)
    serve(url, args.host, args.port)
    return 0


def copy(args: argparse.Namespace) -> int:
    import optuna

    from tuner.errors import StudyError
    from tuner.study.setup import load_existing
    from tuner.study.storage import make_storage, redact, resolve_url, study_names

    src, dst = resolve_url(args.src), resolve_url(args.dst)
    load_existing(make_storage(src, heartbeat=False, create=False), src, args.study)  # exists and is a tuner study
    target = make_storage(dst, heartbeat=False)
    if args.study in study_names(target):
        raise StudyError(f"study {args.study!r} already exists in {redact(dst)}")
    optuna.copy_study(from_study_name=args.study, from_storage=make_storage(src, heartbeat=False, create=False),
                      to_storage=target)
    print(f"copied study {args.study!r}: {redact(src)} -> {redact(dst)}")
    return 0


def delete(args: argparse.Namespace) -> int:
    import sys

    from tuner.errors import StudyError
    from tuner.study.remove import delete_study
    from tuner.study.setup import check_study_name
    from tuner.study.storage import make_storage, redact, resolve_url, study_names

    check_study_name(args.study)
    url = resolve_url(args.storage)
    storage = make_storage(url, create=False)  # with heartbeats: which running trials have live workers
    if args.study not in study_names(storage):
        raise StudyError(f"study {args.study!r} not found in {redact(url)}")
    n = len(storage.get_all_trials(storage.get_study_id_from_name(args.study), deepcopy=False))
    if not args.yes:
        if not sys.stdin.isatty():
            raise StudyError(f"refusing to delete study {args.study!r} without confirmation: add --yes")
        answer = input(f"delete study {args.study!r} and its {n} trials from {redact(url)}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("not deleted")
            return 1
    delete_study(storage, url, args.study)  # workers stop first; verified gone, else an error
    print(f"deleted study {args.study!r} ({n} trials) from {redact(url)}")
    return 0
