"""Benchmark of the tuning service on the embedded default model.

    python bench/run.py                          # ~5 minutes on 2 CPU cores
    python bench/run.py --baseline f6b237c       # also the same study on an older commit

Prints, measured side by side in this one run:
  * per edit of the default study's hyperparameters (8 facts, 1 thread): v* of the facts
    optimised together, one after another, and by the plain sequential reference loop of the
    tests (``tests/rome/reference_rome.py``: one unpadded prompt per forward pass);
  * trials/min with 1 and with 2 local workers (same study config, fresh storage each), and
    with ``--baseline REF`` the same 1-worker study run from a git worktree of REF ("before");
  * the ratio of a trial's wall time (storage round trips, sampling, bookkeeping included) to
    the pure edit compute of its facts (stats + k* + v* + update + eval);
  * the wall time of a 60-trial study with the median pruner and without pruning.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, default_study, shared_home  # noqa: E402


def run_study(cfg: Path, trials: int, workers: int, home: Path, tag: str) -> tuple[float, str]:
    url = f"sqlite:///{home / f'{tag}.db'}"
    env = {**os.environ, "TUNER_HOME": str(home)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tuner", "launch", "--config", str(cfg), "--trials", str(trials),
                    "--workers", str(workers), "--storage", url, "--study", tag, "--no-progress"],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0, url


def per_edit(n_facts: int = 8) -> dict[str, float]:
    """Seconds per fact for v* on the default model with the default study's hyperparameters."""
    import torch

    from tests.rome.reference_rome import reference_v_star
    from tuner.plumbing.tokens import target_token_ids
    from tuner.rome.compute_v import VRequest, compute_vs
    from tuner.study.config import StudyConfig

    torch.set_num_threads(1)
    cfg = StudyConfig.load(ROOT / "studies/default.yaml")
    editor = cfg.load_model(device="cpu", progress=False).editor(progress=False)
    facts = cfg.select_facts()[:n_facts]
    hp = cfg.hparams.replace(early_stop_loss=None, v_num_grad_steps=30)  # every path runs the same 30 steps
    templates = editor.context_templates(hp)
    reqs = [VRequest(f.prompt, f.subject, tuple(target_token_ids(editor.tok, f.rewrite_prompt, f.target_new)))
            for f in facts]
    m, tok, ad = editor.model, editor.tok, editor.adapter

    def clock(fn) -> float:
        fn()  # warm-up
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) / len(facts)

    return {
        "batched": clock(lambda: compute_vs(m, tok, ad, hp, reqs, templates)),
        "one by one": clock(lambda: [compute_vs(m, tok, ad, hp, [r], templates) for r in reqs]),
        "reference loop": clock(lambda: [reference_v_star(m, tok, ad.rewrite.format(hp.layer), ad.seq_first, hp,
                                                          f.prompt, f.subject, f.target_new, templates)
                                         for f in facts]),
    }


def baseline_launch(ref: str, cfg: Path, trials: int, home: Path) -> float:
    """Wall time of the same 1-worker study run by the code of git ``ref`` (a temporary worktree)."""
    tree = home / "baseline-tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), ref], cwd=ROOT, check=True, capture_output=True)
    try:
        url = f"sqlite:///{home / 'baseline.db'}"
        env = {**os.environ, "TUNER_HOME": str(home), "PYTHONPATH": str(tree)}
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tuner", "launch", "--config", str(cfg), "--trials", str(trials),
                        "--workers", "1", "--storage", url, "--study", "baseline", "--no-progress"],
                       cwd=tree, env=env, check=True, capture_output=True)
        return time.perf_counter() - t0
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)


def overhead(url: str, tag: str) -> tuple[float, float, float]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name=tag, storage=url).get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    wall = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials)
    compute = sum(t.user_attrs["compute_seconds"] for t in trials)
    return wall / len(trials), compute / len(trials), wall / compute


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=30, help="trials per throughput run (default 30)")
    ap.add_argument("--study-trials", type=int, default=60, help="trials of the pruning comparison (default 60)")
    ap.add_argument("--baseline", metavar="REF", help="also run the 1-worker study with the code of this git ref")
    args = ap.parse_args()
    edits = per_edit()
    with tempfile.TemporaryDirectory() as d:
        home = shared_home(Path(d))
        subprocess.run([sys.executable, "-m", "tuner", "model", "build"], cwd=ROOT, check=True, capture_output=True)
        median = default_study(home / "median.yaml", pruner="median")
        none = default_study(home / "none.yaml", pruner="none")
        t1, _ = run_study(none, args.trials, 1, home, "w1")
        tb = baseline_launch(args.baseline, none, args.trials, home) if args.baseline else None
        t2, url2 = run_study(none, args.trials, 2, home, "w2")
        per_trial, per_compute, ratio = overhead(url2, "w2")
        tp, _ = run_study(median, args.study_trials, 1, home, "pruned")
        tn, _ = run_study(none, args.study_trials, 1, home, "unpruned")
    print(f"{'measure':<48} {'value':>10}")
    for name, seconds in edits.items():
        print(f"{f'v* per fact, 30 steps, {name} (ms)':<48} {1000 * seconds:>10.1f}")
    print(f"{'one by one / batched':<48} {edits['one by one'] / edits['batched']:>10.2f}x")
    print(f"{'reference loop / batched':<48} {edits['reference loop'] / edits['batched']:>10.2f}x")
    if tb is not None:
        print(f"{f'trials/min, 1 worker, {args.baseline} (before)':<48} {60 * args.trials / tb:>10.1f}")
    print(f"{'trials/min, 1 worker':<48} {60 * args.trials / t1:>10.1f}")
    print(f"{'trials/min, 2 workers':<48} {60 * args.trials / t2:>10.1f}")
    print(f"{'speed-up 2 workers / 1 worker':<48} {t1 / t2:>10.2f}x")
    print(f"{'trial wall time (s), mean':<48} {per_trial:>10.3f}")
    print(f"{'pure edit compute per trial (s), mean':<48} {per_compute:>10.3f}")
    print(f"{'trial wall / pure edit compute':<48} {ratio:>10.3f}")
    print(f"{f'{args.study_trials}-trial study, median pruner (s)':<48} {tp:>10.1f}")
    print(f"{f'{args.study_trials}-trial study, no pruning (s)':<48} {tn:>10.1f}")
    print(f"{'pruning speed-up':<48} {tn / tp:>10.2f}x")


if __name__ == "__main__":
    main()
