"""Benchmark of the tuning service on the embedded default model.

    python bench/run.py            # ~4 minutes on 2 CPU cores

Prints, measured side by side in this one run:
  * trials/min with 1 and with 2 local workers (same study config, fresh storage each);
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
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        home = shared_home(Path(d))
        subprocess.run([sys.executable, "-m", "tuner", "model", "build"], cwd=ROOT, check=True, capture_output=True)
        median = default_study(home / "median.yaml", pruner="median")
        none = default_study(home / "none.yaml", pruner="none")
        t1, _ = run_study(none, args.trials, 1, home, "w1")
        t2, url2 = run_study(none, args.trials, 2, home, "w2")
        per_trial, per_compute, ratio = overhead(url2, "w2")
        tp, _ = run_study(median, args.study_trials, 1, home, "pruned")
        tn, _ = run_study(none, args.study_trials, 1, home, "unpruned")
    print(f"{'measure':<48} {'value':>10}")
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
