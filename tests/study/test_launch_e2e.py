"""``tuner launch`` / ``tuner worker`` as real processes against SQLite and a real PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml

from tests.conftest import ROOT, run_cli
from tests.pg import PASSWORD, postgres_server
from tests.study.conftest import write_study
from tuner.study.config import StudyConfig

pytestmark = pytest.mark.slow
States = optuna.trial.TrialState


def _study(url: str, name: str = "small") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def _states(study: optuna.Study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _pids(study: optuna.Study) -> set[int]:
    return {t.user_attrs["worker"]["pid"] for t in study.get_trials(deepcopy=False) if "worker" in t.user_attrs}


def _popen(*args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tuner", *args], cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_launch_two_workers_sqlite(tmp_path, small_study, env, home):
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    proc = run_cli("launch", "--config", str(small_study), "--trials", "12", "--workers", "2",
                   "--storage", url, "--no-progress", env=env)
    assert proc.returncode == 0, proc.stderr
    study = _study(url)
    states = _states(study)
    finished = states.get("COMPLETE", 0) + states.get("PRUNED", 0)
    assert finished == 12 and states.get("RUNNING", 0) == 0
    assert len(_pids(study)) == 2
    assert "best trial #" in proc.stdout and "textbook" in proc.stdout and "unedited" in proc.stdout
    best_yaml, easy_yaml = home / "best/small/study.yaml", home / "best/small/rome_hparams.yaml"
    best = StudyConfig.load(best_yaml)
    assert best.search.dimensions == () and best.hparams.to_dict() == study.best_trial.user_attrs["hparams"]
    easy = yaml.safe_load(easy_yaml.read_text())
    assert easy["alg_name"] == "ROME" and easy["layers"] == [best.hparams.layer]
    assert easy["rewrite_module_tmp"] == "model.layers.{}.mlp.down_proj"
    # every trial is reproducible from what is stored
    t = study.best_trial
    assert {"hparams", "fingerprint", "per_fact", "trajectory", "worker", "facts"} <= set(t.user_attrs)
    assert len(t.user_attrs["per_fact"]) == 3
    first = t.user_attrs["per_fact"][0]
    assert len(t.user_attrs["trajectory"][0]["prob"]) == first["n_steps"] <= t.params["v_num_grad_steps"]
    assert first["n_steps"] == t.params["v_num_grad_steps"] or first["early_stopped"]
    assert t.user_attrs["context_templates"][0] == "{}" and t.user_attrs["constraints"][0] == 0.0 and len(t.user_attrs["constraints"]) == 4
    # status sees both workers
    st = run_cli("status", "--study", "small", "--storage", url, env=env)
    assert st.returncode == 0 and st.stdout.count("worker ") == 2


def test_postgres_separate_worker_joins_and_budget_holds(tmp_path, env):
    # slower trials (40-60 steps), so the launch's own worker is up before the early one has run them all
    small_study = write_study(tmp_path / "small.yaml", search={"v_num_grad_steps": {"low": 40, "high": 60}},
                              pruner="none")
    with postgres_server() as url:
        create = run_cli("launch", "--config", str(small_study), "--trials", "10", "--create-only",
                         "--storage", url, env=env)
        assert create.returncode == 0, create.stderr
        remote = _popen("worker", "--study", "small", "--quiet", env={**env, "TUNER_STORAGE": url})
        # one thread each: launch's default (all cores for its one worker) beside the separate
        # worker oversubscribes 2 cores, and its worker then spent the whole study measuring the
        # references (py-spy: compute_vs under references.ensure) while the other ran every trial
        launch = run_cli("launch", "--config", str(small_study), "--trials", "10", "--workers", "1", "--threads", "1",
                         "--storage", url, "--no-progress", env=env)
        out, err = remote.communicate(timeout=300)
        assert launch.returncode == 0, launch.stderr
        assert remote.returncode == 0, err
        study = _study(url)
        states = _states(study)
        finished = states.get("COMPLETE", 0) + states.get("PRUNED", 0)
        assert finished == 10 and states.get("RUNNING", 0) == 0
        assert len(_pids(study)) == 2  # the separately started worker contributed
        for text in (create.stdout, create.stderr, launch.stdout, launch.stderr, out, err):
            assert PASSWORD not in text
        # move the study to a SQLite file: same trials, same best value
        sqlite = f"sqlite:///{tmp_path / 'copy.db'}"
        copied = run_cli("copy", "--study", "small", "--from", url, "--to", sqlite, env=env)
        assert copied.returncode == 0 and PASSWORD not in copied.stdout + copied.stderr
        assert len(_study(sqlite).trials) == len(study.trials) and _study(sqlite).best_value == study.best_value


def test_killed_worker_trial_is_retried(tmp_path, env):
    """kill -9 of a worker late in an 8-trial study: its trial is failed by heartbeat and rerun,
    the study ends on exactly 8 finished trials with nothing RUNNING."""
    cfg = write_study(tmp_path / "slow.yaml", search={"v_num_grad_steps": {"low": 60, "high": 80}},
                      pruner="none")
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    launch = _popen("launch", "--config", str(cfg), "--trials", "8", "--workers", "2", "--storage", url,
                    "--no-progress", env=env)
    victim = None
    deadline = time.time() + 240
    while victim is None and time.time() < deadline:
        time.sleep(0.5)
        try:
            study = _study(url)
        except KeyError:
            continue
        if len(study.get_trials(deepcopy=False, states=(States.COMPLETE, States.PRUNED))) < 5:
            continue  # near the end of the budget, where an overshoot or a lost retry would show
        for t in study.get_trials(deepcopy=False, states=(States.RUNNING,)):
            if "worker" in t.user_attrs:
                victim = t.user_attrs["worker"]["pid"]
                break
    assert victim is not None, "no trial started"
    os.kill(victim, signal.SIGKILL)
    out, err = launch.communicate(timeout=400)
    assert launch.returncode == 0, err
    study = _study(url)
    states = _states(study)
    assert states.get("RUNNING", 0) == 0
    assert states.get("FAIL", 0) >= 1  # the killed worker's trial, failed by heartbeat
    assert states.get("COMPLETE", 0) + states.get("PRUNED", 0) == 8  # exactly the budget
    retried = [t for t in study.get_trials(deepcopy=False)
               if t.system_attrs.get("failed_trial") is not None]  # set by RetryHeartbeatStaleTrialCallback
    assert retried and all(t.state == States.COMPLETE for t in retried)


def test_interrupt_then_resume(tmp_path, small_study, env):
    """Ctrl-C while a trial runs (deterministic: wait for a RUNNING trial, then signal the group,
    as a terminal does): one line, exit 130, nothing left RUNNING, the same command resumes."""
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    launch = _popen("launch", "--config", str(small_study), "--trials", "40", "--workers", "1",
                    "--storage", url, "--no-progress", env=env)
    deadline = time.time() + 180
    while time.time() < deadline:
        time.sleep(0.2)
        try:
            states = _states(_study(url))
        except Exception:  # noqa: BLE001 - the study or its tables may not exist yet
            continue
        if states.get("COMPLETE", 0) >= 1 and states.get("RUNNING", 0) >= 1:
            break
    os.killpg(launch.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground process group
    _, err = launch.communicate(timeout=120)
    assert launch.returncode == 130, err
    assert "rerun the same command to resume" in err and "Traceback" not in err
    assert len([ln for ln in err.splitlines() if "interrupted" in ln]) == 1, err
    before = _study(url)
    assert _states(before).get("RUNNING", 0) == 0
    done_before = {t.number for t in before.get_trials(deepcopy=False, states=(States.COMPLETE, States.PRUNED))}
    resume = run_cli("launch", "--config", str(small_study), "--trials", str(len(done_before) + 3),
                     "--workers", "1", "--storage", url, "--no-progress", env=env)
    assert resume.returncode == 0, resume.stderr
    after = _study(url)
    done_after = {t.number for t in after.get_trials(deepcopy=False, states=(States.COMPLETE, States.PRUNED))}
    assert done_before < done_after and len(done_after) == len(done_before) + 3
    assert _states(after).get("RUNNING", 0) == 0


def test_same_config_and_seed_give_same_first_trials(tmp_path, small_study, env):
    params = []
    for i in range(2):
        url = f"sqlite:///{tmp_path / f'db{i}.db'}"
        proc = run_cli("launch", "--config", str(small_study), "--trials", "2", "--workers", "1",
                       "--storage", url, "--no-progress", env=env)
        assert proc.returncode == 0, proc.stderr
        trials = sorted(_study(url).get_trials(deepcopy=False), key=lambda t: t.number)
        params.append([(t.params, t.value) for t in trials[:2]])
    assert params[0] == params[1]


def _assert_error(proc, needle):
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("tuner: error:")]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_inputs_write_nothing(tmp_path, small_study, env):
    db = tmp_path / "t.db"
    _assert_error(run_cli("launch", "--config", str(small_study), "--storage", "mysql://u:pw@h/db", env=env),
                  "unsupported storage URL")
    proc = run_cli("launch", "--config", str(small_study), "--storage",
                   "postgresql+psycopg://u:topsecret@127.0.0.1:1/db", env=env)
    _assert_error(proc, "cannot open storage postgresql+psycopg://u:***@127.0.0.1:1/db")
    assert "topsecret" not in proc.stderr
    _assert_error(run_cli("worker", "--study", "nope", "--storage", f"sqlite:///{db}", env=env),
                  "no database at")
    assert not db.exists()
    bad = write_study(tmp_path / "bad.yaml", search={"v_lr": {"low": 2.0, "high": 0.5}})
    _assert_error(run_cli("launch", "--config", str(bad), "--storage", f"sqlite:///{tmp_path / 'b.db'}", env=env),
                  "search.v_lr: low (2.0) > high (0.5)")
    assert not (tmp_path / "b.db").exists()
    _assert_error(run_cli("launch", "--config", str(small_study), "--workers", "zero",
                          "--storage", f"sqlite:///{tmp_path / 'c.db'}", env=env), "--workers must be")
    assert not (tmp_path / "c.db").exists()
    # a second launch with a different config under the same name is refused, the study untouched
    ok = run_cli("launch", "--config", str(small_study), "--create-only", "--storage", f"sqlite:///{db}", env=env)
    assert ok.returncode == 0, ok.stderr
    other = write_study(tmp_path / "other.yaml", seed=7)
    _assert_error(run_cli("launch", "--config", str(other), "--create-only", "--storage", f"sqlite:///{db}",
                          env=env), "already exists")


def test_multi_objective_and_gp_sampler(tmp_path, env, home):
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    mo = write_study(tmp_path / "mo.yaml", name="mo", objective={"multi_objective": True})
    proc = run_cli("launch", "--config", str(mo), "--trials", "6", "--workers", "1", "--storage", url,
                   "--no-progress", env=env)
    assert proc.returncode == 0, proc.stderr
    study = _study(url, "mo")
    assert len(study.directions) == 2 and study.metric_names == ["efficacy_minus_rebound", "specificity"]
    assert study.best_trials and "Pareto front" in proc.stdout
    assert (home / "reports/mo/index.html").is_file()
    gp = write_study(tmp_path / "gp.yaml", name="gp", sampler="gp")
    proc = run_cli("launch", "--config", str(gp), "--trials", "12", "--workers", "1", "--storage", url,
                   "--no-progress", env=env)
    assert proc.returncode == 0, proc.stderr
    states = _states(_study(url, "gp"))
    assert states.get("COMPLETE", 0) + states.get("PRUNED", 0) == 12 and not states.get("FAIL")
