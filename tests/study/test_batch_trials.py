"""Several trials in one batch (``--batch-trials``): every trial's result is the one it gets
alone, the budget stays exact, a pruned trial leaves the batch, a signal queues every trial of
the batch again."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli


def _objective(default_model, cfg, **kwargs):
    from tuner.study.objective import Objective
    from tuner.study.setup import bound_space

    editor = default_model.editor(progress=False, disabling=cfg.disabling_rule())
    return Objective(cfg, editor, cfg.select_facts(), bound_space(cfg), fingerprint=default_model.fingerprint,
                     device="cpu", **kwargs)


PARAMS = [  # two layers, so the batch splits in two groups; steps and early stops differ
    {"layer": 1, "v_lr": 0.6, "v_weight_decay": 0.05, "v_num_grad_steps": 12, "clamp_norm_factor": 4.0,
     "kl_factor": 0.0625, "lr_schedule": "constant"},
    {"layer": 0, "v_lr": 2.0, "v_weight_decay": 0.01, "v_num_grad_steps": 9, "clamp_norm_factor": 8.0,
     "kl_factor": 0.01, "lr_schedule": "cosine"},
    {"layer": 1, "v_lr": 3.0, "v_weight_decay": 0.2, "v_num_grad_steps": 15, "clamp_norm_factor": 2.5,
     "kl_factor": 0.001, "lr_schedule": "cosine"},
    {"layer": 0, "v_lr": 0.8, "v_weight_decay": 0.5, "v_num_grad_steps": 6, "clamp_norm_factor": 12.0,
     "kl_factor": 0.1, "lr_schedule": "constant"},
]


def _run(objective, batched: bool):
    import optuna

    study = optuna.create_study(direction="maximize")
    for p in PARAMS:
        study.enqueue_trial(p)
    trials = [study.ask() for _ in PARAMS]
    if batched:
        hps = [objective.start(t) for t in trials]
        gets = objective.batch(trials, hps)
        values = [objective.finish(t, hp, get) for t, hp, get in zip(trials, hps, gets)]
    else:
        values = [objective(t) for t in trials]
    return values, [study._storage.get_trial(t._trial_id).user_attrs["per_fact"] for t in trials]


def test_a_batch_of_trials_gives_each_trial_its_result_alone(tmp_path, default_model):
    from tests.study.conftest import write_study
    from tuner.study.config import StudyConfig

    cfg = StudyConfig.load(write_study(tmp_path / "s.yaml", pruner="none"))
    objective = _objective(default_model, cfg)
    alone_values, alone_facts = _run(objective, batched=False)
    batch_values, batch_facts = _run(objective, batched=True)
    assert batch_values == pytest.approx(alone_values, abs=2e-4)
    assert len({v for v in alone_values}) == len(PARAMS)  # four different results, not one repeated
    for a, b in zip(alone_facts, batch_facts):
        for ma, mb in zip(a, b):
            assert mb["n_steps"] == ma["n_steps"] and mb["early_stopped"] == ma["early_stopped"]
            for k in ("final_prob", "efficacy", "paraphrase", "specificity", "rebound", "update_norm"):
                assert mb[k] == pytest.approx(ma[k], abs=2e-4), k


@pytest.mark.slow
def test_launch_with_batched_trials_meets_the_budget_exactly(tmp_path, env):
    import optuna

    from tests.study.conftest import write_study

    cfg = write_study(tmp_path / "s.yaml", sampler="gp", pruner="none")
    url = f"sqlite:///{tmp_path / 'b.db'}"
    proc = run_cli("launch", "--config", str(cfg), "--trials", "7", "--workers", "1", "--batch-trials", "3",
                   "--storage", url, "--no-progress", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    study = optuna.load_study(study_name="small", storage=url)
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    assert states.count("COMPLETE") == 7 and len(states) == 7, states
    assert "best trial #" in proc.stdout
    # the sampler saw each batch's earlier settings as running trials: no two settings repeat
    params = [tuple(sorted(t.params.items())) for t in study.get_trials(deepcopy=False)]
    assert len(set(params)) == len(params)


def test_bad_batch_trials_is_one_line_and_writes_nothing(tmp_path, env, small_study):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    proc = run_cli("launch", "--config", str(small_study), "--trials", "3", "--batch-trials", "0",
                   "--storage", url, env=env)
    assert proc.returncode == 2 and "--batch-trials" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.db").exists()


def test_batch_size_from_free_memory():
    from tuner.study.worker import MAX_BATCH_TRIALS, batch_size_for

    per_trial = 8 * (4 * 3 * 4096 + 8 * (4096 * 11008 + 4096 + 11008))  # 8 facts of a 7 B model: ~2.9 GB
    assert batch_size_for(60 * 2**30, 8, 4096, 11008) == MAX_BATCH_TRIALS
    assert batch_size_for(3 * per_trial, 8, 4096, 11008) == 1
    assert batch_size_for(7 * per_trial, 8, 4096, 11008) == 3
    assert batch_size_for(1, 8, 4096, 11008) == 1


@pytest.mark.slow
def test_sigterm_queues_every_trial_of_the_batch_again(tmp_path, env):
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.study.conftest import write_study
    from tests.study.test_faults import _counts, _wait_for

    # trials of a few seconds, so the signal lands inside a batch's optimisation
    cfg = write_study(tmp_path / "s.yaml", sampler="tpe", pruner="none",
                      search={"v_num_grad_steps": {"low": 60, "high": 80}})
    url = f"sqlite:///{tmp_path / 'b.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "tuner", "launch", "--config", str(cfg), "--trials", "20",
                             "--workers", "1", "--batch-trials", "3", "--storage", url, "--no-progress"],
                            cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    _wait_for(lambda: _counts(url, "small").get("RUNNING", 0) == 3)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    counts = _counts(url, "small")
    assert counts.get("RUNNING", 0) == 0 and counts.get("FAIL", 0) == 3, counts
    import optuna

    trials = optuna.load_study(study_name="small", storage=url).get_trials(deepcopy=False)
    failed = {t.number: t.params for t in trials if t.state.name == "FAIL"}
    retries = {t.user_attrs.get("retry_of"): t.system_attrs.get("fixed_params") for t in trials
               if t.state.name == "WAITING"}
    assert all(retries.get(n) == p for n, p in failed.items()), (failed, retries)  # all three queued again
    assert "Traceback" not in err, err
    resume = run_cli("launch", "--config", str(cfg), "--trials", str(counts.get("COMPLETE", 0) + 3), "--workers", "1",
                     "--batch-trials", "3", "--storage", url, "--no-progress", env=env)
    assert resume.returncode == 0, resume.stderr[-2000:]
    after = _counts(url, "small")
    assert after.get("RUNNING", 0) == 0 and after["COMPLETE"] == counts.get("COMPLETE", 0) + 3  # budget exact
    done = optuna.load_study(study_name="small", storage=url).get_trials(deepcopy=False)
    ran = {t.user_attrs.get("retry_of") for t in done if t.state.name == "COMPLETE"}
    assert len(set(failed) & ran) >= 2  # queued trials run first (one queued start-up trial may come before)
