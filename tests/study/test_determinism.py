"""The same search twice: one worker, the same study file and seed give the same trials (their
parameters and values, in order) and the same best — GP sampler included, at the thread count
``tuner launch`` picks (all cores for one worker)."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_one_worker_same_seed_same_trials_and_best(tmp_path, env):
    import optuna

    from tests.study.conftest import write_study

    cfg = write_study(tmp_path / "s.yaml", sampler="gp", pruner="none", facts={"per_trial": 3})
    runs = []
    for i in (1, 2):
        url = f"sqlite:///{tmp_path / f'run{i}.db'}"
        proc = run_cli("launch", "--config", str(cfg), "--trials", "14", "--workers", "1", "--storage", url,
                       "--no-progress", env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        study = optuna.load_study(study_name="small", storage=url)
        trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
        runs.append(([(t.params, t.values) for t in trials],
                     next(line for line in proc.stdout.splitlines() if line.startswith("best trial #"))))
    (first, best1), (second, best2) = runs
    assert len(first) == 14 and first == second  # GP proposes from trial 10 on: those match too
    assert best1 == best2
