"""Does seeding the search from causal tracing reach a good objective in fewer trials?

    python bench/trace_seeding.py [--seeds 3] [--trials 40]

For each study seed, runs the default study with and without ``--seed-from-trace`` (1 worker,
same budget) and prints the best objective and the first trial reaching 90% of the better of
the two, side by side.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, default_study, shared_home  # noqa: E402


def run(cfg: Path, home: Path, tag: str, trials: int, seeded: bool) -> list[float]:
    import optuna

    url = f"sqlite:///{home / f'{tag}.db'}"
    cmd = [sys.executable, "-m", "tuner", "launch", "--config", str(cfg), "--trials", str(trials), "--workers", "1",
           "--storage", url, "--study", tag, "--no-progress"] + (["--seed-from-trace"] if seeded else [])
    subprocess.run(cmd, cwd=ROOT, env={**os.environ, "TUNER_HOME": str(home)}, check=True, capture_output=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials_ = sorted(optuna.load_study(study_name=tag, storage=url).trials, key=lambda t: t.number)
    best, curve = float("-inf"), []
    for t in trials_:
        if t.value is not None and t.state.name == "COMPLETE":
            best = max(best, t.value)
        curve.append(best)
    return curve


def first_reaching(curve: list[float], target: float) -> int | None:
    return next((i + 1 for i, v in enumerate(curve) if v >= target), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=40)
    args = ap.parse_args()
    print(f"{'seed':>4} {'best plain':>11} {'best seeded':>12} {'plain: trials to 90%':>21} {'seeded: trials to 90%':>22}")
    with tempfile.TemporaryDirectory() as d:
        home = shared_home(Path(d))
        for seed in range(args.seeds):
            cfg = default_study(home / f"seed{seed}.yaml", seed=seed)
            plain = run(cfg, home, f"plain{seed}", args.trials, False)
            seeded = run(cfg, home, f"seeded{seed}", args.trials, True)
            target = 0.9 * max(plain[-1], seeded[-1])
            print(f"{seed:>4} {plain[-1]:>11.4f} {seeded[-1]:>12.4f} {str(first_reaching(plain, target)):>21} "
                  f"{str(first_reaching(seeded, target)):>22}")


if __name__ == "__main__":
    main()
