"""Pruning that can pay: a trial reports the mean P(new) of its facts every PRUNE_EVERY
optimisation steps, and a pruned trial stops its optimisation there (no evaluation after)."""

from __future__ import annotations

import optuna
import pytest

from tests.conftest import run_cli
from tests.study.conftest import write_study
from tuner.study.objective import PRUNE_EVERY

States = optuna.trial.TrialState


@pytest.mark.slow
def test_pruned_trials_stop_during_the_optimisation(tmp_path, env):
    cfg = write_study(tmp_path / "small.yaml", search={"v_num_grad_steps": {"low": 15, "high": 40}})
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    proc = run_cli("launch", "--config", str(cfg), "--trials", "24", "--workers", "1", "--storage", url,
                   "--no-progress", env=env)
    assert proc.returncode == 0, proc.stderr
    trials = optuna.load_study(study_name="small", storage=url).get_trials(deepcopy=False)
    for t in trials:
        steps = sorted(t.intermediate_values)
        assert steps == list(range(PRUNE_EVERY, PRUNE_EVERY * len(steps) + 1, PRUNE_EVERY)), steps
        assert all(0.0 <= v <= 1.0 for v in t.intermediate_values.values())
    pruned = [t for t in trials if t.state == States.PRUNED]
    assert pruned, "the median pruner pruned nothing in 24 trials"
    for t in pruned:
        assert max(t.intermediate_values) <= t.params["v_num_grad_steps"]  # stopped inside the optimisation
        assert t.user_attrs["per_fact"] == []  # and nothing was evaluated
    complete = [t for t in trials if t.state == States.COMPLETE]
    assert all(len(t.user_attrs["per_fact"]) == 3 for t in complete)


@pytest.mark.slow
def test_wilcoxon_pruner_pairs_facts_after_the_warmup(tmp_path, env):
    """pruner: wilcoxon reports each fact's P(new) once, after pruner_warmup forward passes, with the
    fact's index as the step (the facts are the paired instances of the signed-rank test)."""
    cfg = write_study(tmp_path / "w.yaml", pruner="wilcoxon", pruner_warmup=5, facts={"per_trial": 6},
                      search={"v_num_grad_steps": {"low": 5, "high": 12}})
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    proc = run_cli("launch", "--config", str(cfg), "--trials", "14", "--workers", "1", "--storage", url,
                   "--no-progress", env=env)
    assert proc.returncode == 0, proc.stderr
    trials = optuna.load_study(study_name="small", storage=url).get_trials(deepcopy=False)
    reported = [t for t in trials if t.intermediate_values]
    assert reported
    for t in reported:
        assert set(t.intermediate_values) == set(range(6)), t.intermediate_values  # one value per fact
        assert all(0.0 <= v <= 1.0 for v in t.intermediate_values.values())
    for t in trials:
        if t.state == States.PRUNED:
            assert t.user_attrs["per_fact"] == []


def test_gp_with_a_pruner_is_warned_about(tmp_path, env):
    """Optuna's GP sampler learns only from completed trials, so with a pruner it proposes the
    pruned settings again (bench/search.py measured 92 % pruned): launch says so, once."""
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    for pruner, warned in (("median", True), ("none", False)):
        cfg = write_study(tmp_path / f"{pruner}.yaml", name=pruner, sampler="gp", pruner=pruner)
        proc = run_cli("launch", "--config", str(cfg), "--create-only", "--storage", url, env=env)
        assert proc.returncode == 0, proc.stderr
        assert ("use sampler tpe to prune" in proc.stderr) == warned, proc.stderr
