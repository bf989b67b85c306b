"""Held-out validation: the held-out facts are disjoint from the tuning facts and deterministic;
``tuner validate`` prints and stores its table; the export is the best of the top trials on the
held-out facts, and never a setting that is infeasible there."""

from __future__ import annotations

import dataclasses

import pytest

from tests.conftest import ROOT, run_cli
from tuner.errors import ConfigError
from tuner.study.config import StudyConfig


def test_holdout_is_disjoint_deterministic_and_leaves_the_tuning_facts_alone():
    cfg = StudyConfig.load(ROOT / "studies/default.yaml")
    assert cfg.facts.holdout >= 8  # the default study ships a held-out set
    tuning = [f.case_id for f in cfg.select_facts()]
    held = [f.case_id for f in cfg.select_holdout()]
    assert len(held) == cfg.facts.holdout and len(set(held)) == len(held)
    assert not set(tuning) & set(held)
    assert held == [f.case_id for f in cfg.select_holdout()]  # same draw every time
    without = cfg.replace(facts=dataclasses.replace(cfg.facts, holdout=0))
    assert [f.case_id for f in without.select_facts()] == tuning  # adding a hold-out set changes no trial
    other = cfg.replace(facts=dataclasses.replace(cfg.facts, seed=1))
    assert [f.case_id for f in other.select_holdout()] != held
    too_many = cfg.replace(facts=dataclasses.replace(cfg.facts, holdout=60))
    with pytest.raises(ConfigError, match="facts.per_trial 8 \\+ facts.holdout 60 exceed the 60 facts"):
        too_many.select_facts()


@pytest.mark.slow
def test_launch_validates_on_holdout_and_tuner_validate_stores_the_table(tmp_path, env):
    import optuna
    import yaml

    from tests.study.conftest import write_study

    url = f"sqlite:///{tmp_path / 't.db'}"
    cfg_path = write_study(tmp_path / "s.yaml", facts={"per_trial": 3, "holdout": 4})
    proc = run_cli("launch", "--config", str(cfg_path), "--trials", "5", "--workers", "1", "--storage", url,
                   "--no-progress", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "held-out validation on 4 facts" in proc.stdout and "textbook" in proc.stdout, proc.stdout

    proc = run_cli("validate", "--study", "small", "--top", "2", "--storage", url, "--no-progress", env=env)
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="small", storage=url)
    record = study.user_attrs["holdout"]
    cfg = StudyConfig.load(cfg_path)
    assert record["facts"] == [f.case_id for f in cfg.select_holdout()]
    tuned_on = set(study.trials[0].user_attrs["facts"])
    assert len(record["facts"]) == 4 and not tuned_on & set(record["facts"])
    labels = [r["label"] for r in record["rows"]]
    assert labels[-3:] == ["textbook", "easyedit-llama", "unedited"], labels
    ranked = sorted((t for t in study.trials if t.state.name == "COMPLETE" and t.user_attrs["score"]["feasible"]),
                    key=lambda t: (-t.value, t.number))
    assert [r["trial"] for r in record["rows"][:2]] == [t.number for t in ranked[:2]]
    for row in record["rows"]:
        assert 0.0 <= row["efficacy"] <= 1.0 and 0.0 <= row["final_prob"] <= 1.0 and row["disabling"] >= 0
        assert 0.0 <= row["S"] <= 1.0 and row["label"] in proc.stdout
    # the winner: the feasible setting, tuned or reference, with the best held-out S
    candidates = [r for r in record["rows"] if r["feasible"] and r["label"] != "unedited"]
    winner = next(r for r in record["rows"] if r["label"] == record["winner"])
    assert winner["feasible"] and winner["S"] == max(r["S"] for r in candidates)
    assert f"* exported: {record['winner']}" in proc.stdout
    best = yaml.safe_load((env_home(env) / "best" / "small" / "study.yaml").read_text())
    assert best["hparams"] == winner["hparams"]
    page = (env_home(env) / "reports" / "small" / "index.html").read_text()
    assert "Held-out validation on 4 facts" in page and "id='verdict'" in page

    status = run_cli("status", "--study", "small", "--storage", url, env=env)
    assert f"* exported: {record['winner']}" in status.stdout and "unedited" in status.stdout, status.stdout

    bad = run_cli("validate", "--study", "small", "--top", "0", "--storage", url, env=env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--top must be >= 1" in bad.stderr


def env_home(env):
    from pathlib import Path

    return Path(env["TUNER_HOME"])


def test_a_setting_infeasible_on_the_holdout_is_never_exported(tmp_path, default_model):
    """The better trial (on the tuning facts and the held-out ones) makes disabling edits there:
    the export is the other one."""
    import optuna

    from tuner.study.export import export_best
    from tuner.study.objective import CONSTRAINTS
    from tuner.study.validate import run_validation

    cfg = StudyConfig.load(ROOT / "studies/default.yaml")
    cfg = cfg.replace(facts=dataclasses.replace(cfg.facts, holdout=4),
                      objective=dataclasses.replace(cfg.objective, max_update_norm=2.0))
    big = cfg.hparams.replace(v_lr=2.0, clamp_norm_factor=16.0, v_num_grad_steps=40)  # ‖ΔW‖/‖W‖ 5.6–11 here
    small = cfg.hparams.replace(clamp_norm_factor=1.0, v_num_grad_steps=10)  # 0.35–0.7
    study = optuna.create_study(direction="maximize", study_name="hold",
                                storage=f"sqlite:///{tmp_path / 'h.db'}")
    for value, hp in [(0.9, big), (0.5, small)]:
        study.add_trial(optuna.trial.create_trial(
            params={"v_lr": hp.v_lr}, distributions={"v_lr": optuna.distributions.FloatDistribution(0.01, 5)},
            value=value, user_attrs={"hparams": hp.to_dict(), CONSTRAINTS: [0.0, 0.0, 0.0, 0.0]}))
    record = run_validation(study, cfg, top=2, progress=False, loaded=default_model)
    rows = {r["trial"]: r for r in record["rows"] if r["trial"] is not None}
    assert rows[0]["disabling"] == 4 and not rows[0]["feasible"] and "disabling edits" in rows[0]["why"]
    assert rows[0]["S"] >= rows[1]["S"]  # as good on the held-out facts, and still not exported
    assert record["winner"] != "trial #0"
    paths = export_best(study, cfg, out_dir=tmp_path / "best")
    assert StudyConfig.load(paths[0]).hparams != big
