"""What a cluster does to the service, done for real: database restarts and outages, many workers
racing for the last trials, kill -9, SIGTERM to the launcher or its whole process group.
Every scenario must end on exactly the budget with no trial left RUNNING."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time

import optuna
import pytest

from tests.conftest import ROOT, run_cli
from tests.pg import PASSWORD, postgres_cluster
from tests.study.conftest import write_study

pytestmark = pytest.mark.slow
States = optuna.trial.TrialState


_STORAGES: dict[str, optuna.storages.RDBStorage] = {}


def _storage(url: str) -> optuna.storages.RDBStorage:
    """One storage per URL for the test's own reads, without a pool: polling must not hold
    connections (the cluster allows 60)."""
    from sqlalchemy.pool import NullPool

    if url not in _STORAGES:
        _STORAGES[url] = optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": NullPool})
    return _STORAGES[url]


def _counts(url: str, name: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in optuna.load_study(study_name=name, storage=_storage(url)).get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _finished(url: str, name: str) -> set[int]:
    study = optuna.load_study(study_name=name, storage=_storage(url))
    return {t.number for t in study.get_trials(deepcopy=False, states=(States.COMPLETE, States.PRUNED))}


def _launch(cfg, url: str, trials: int, workers: int, env: dict, name: str = "small") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tuner", "launch", "--config", str(cfg), "--trials", str(trials),
                             "--workers", str(workers), "--storage", url, "--study", name, "--no-progress"],
                            cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _wait_for(predicate, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return
        except (KeyError, Exception):  # noqa: BLE001 - the study may not exist yet / db restarting
            pass
        time.sleep(0.3)
    raise AssertionError("condition not reached")


def _worker_pids(parent: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


@pytest.mark.parametrize("storage, budget", [("sqlite", 4), ("postgres", 6)])
def test_eight_workers_land_exactly_on_small_budgets(tmp_path, env, storage, budget):
    cfg = write_study(tmp_path / "small.yaml", facts={"per_trial": 2}, search={"v_num_grad_steps": {"low": 5, "high": 8}})
    with postgres_cluster() if storage == "postgres" else _nullcluster(tmp_path) as cluster:
        for budget in (budget,):
            name = f"b{budget}"
            proc = _launch(cfg, cluster.url, budget, 8, env, name)
            out, err = proc.communicate(timeout=400)
            assert proc.returncode == 0, err
            counts = _counts(cluster.url, name)
            assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == budget, counts
            assert counts.get("RUNNING", 0) == 0 and counts.get("WAITING", 0) == 0, counts
            assert PASSWORD not in out + err


class _nullcluster:
    def __init__(self, tmp_path) -> None:
        self.url = f"sqlite:///{tmp_path / 'tuner.db'}"

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _outage_study(tmp_path, env, action, budget: int = 14):
    """A 4-worker PostgreSQL study with slow-ish trials; ``action(cluster)`` runs once 3 trials
    have finished. Returns (launch result, finished before, finished after)."""
    cfg = write_study(tmp_path / "small.yaml", facts={"per_trial": 2},
                      search={"v_num_grad_steps": {"low": 30, "high": 45}}, pruner="none")
    env = {**env, "TUNER_DB_OUTAGE_SECONDS": "120"}
    with postgres_cluster() as cluster:
        proc = _launch(cfg, cluster.url, budget, 4, env)
        _wait_for(lambda: len(_finished(cluster.url, "small")) >= 3)
        before = _finished(cluster.url, "small")
        action(cluster)
        out, err = proc.communicate(timeout=500)
        counts = _counts(cluster.url, "small")
        after = _finished(cluster.url, "small")
    return proc.returncode, out, err, counts, before, after


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_database_restart_mid_study(tmp_path, env, mode):
    code, out, err, counts, before, after = _outage_study(tmp_path, env, lambda c: c.restart(mode))
    assert code == 0, err
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == 14 and counts.get("RUNNING", 0) == 0, counts
    assert before <= after  # no finished trial lost
    assert "Traceback" not in err and PASSWORD not in out + err


def test_database_down_for_20_seconds(tmp_path, env):
    def outage(cluster) -> None:
        cluster.stop("fast")
        time.sleep(20)
        cluster.start()

    code, out, err, counts, before, after = _outage_study(tmp_path, env, outage)
    assert code == 0, err
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == 14 and counts.get("RUNNING", 0) == 0, counts
    assert before <= after
    assert "Traceback" not in err
    assert "database unreachable" in err  # one line per outage and process, not a traceback
    # ... nor Optuna's warnings with the failed statement and its parameters (issue 23)
    assert "[SQL:" not in err and "Falling back to a slower alternative" not in err, err
    assert len([ln for ln in err.splitlines() if "database unreachable" in ln]) <= 5, err  # launcher + 4 workers


@pytest.mark.parametrize("target", ["launch", "group"])
def test_sigterm_stops_everything_and_the_same_command_resumes(tmp_path, env, target):
    # trials long enough (a few seconds) that the signal lands inside one: with the small
    # study's sub-second trials both workers were sometimes between trials (CI, stop 18)
    small_study = write_study(tmp_path / "small.yaml", search={"v_num_grad_steps": {"low": 60, "high": 80}})
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    proc = _launch(small_study, url, 30, 2, env)
    _wait_for(lambda: _counts(url, "small").get("RUNNING", 0) >= 1 and len(_worker_pids(proc.pid)) == 2)
    workers = _worker_pids(proc.pid)
    if target == "launch":
        os.kill(proc.pid, signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGTERM)  # what docker stop / systemd send
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    time.sleep(1.5)
    assert not any(_alive(p) for p in workers), "a worker outlived its launcher"
    counts = _counts(url, "small")
    assert counts.get("RUNNING", 0) == 0, counts
    assert counts.get("WAITING", 0) >= 1  # the interrupted trials are queued again
    assert "Traceback" not in err and len([ln for ln in err.splitlines() if "terminated" in ln]) == 1, err
    done = len(_finished(url, "small"))
    resume = run_cli("launch", "--config", str(small_study), "--trials", str(done + 3), "--workers", "1",
                     "--storage", url, "--no-progress", env=env)
    assert resume.returncode == 0, resume.stderr
    counts = _counts(url, "small")
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == done + 3 and counts.get("RUNNING", 0) == 0


def test_workers_die_with_a_killed_launcher(tmp_path, small_study, env):
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    proc = _launch(small_study, url, 30, 2, env)
    _wait_for(lambda: _counts(url, "small").get("RUNNING", 0) >= 1 and len(_worker_pids(proc.pid)) == 2)
    workers = _worker_pids(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    _wait_for(lambda: not any(_alive(p) for p in workers), timeout=30)
    assert _counts(url, "small").get("RUNNING", 0) == 0


def test_remote_code_needs_the_workers_consent(tmp_path, env):
    cfg = write_study(tmp_path / "remote.yaml", name="remote", model={"trust_remote_code": True})
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    assert run_cli("launch", "--config", str(cfg), "--create-only", "--storage", url, env=env).returncode == 0
    refused = run_cli("worker", "--study", "remote", "--storage", url, env=env)
    assert refused.returncode == 2 and "--trust-remote-code" in refused.stderr and "Traceback" not in refused.stderr
    assert _counts(url, "remote") == {"WAITING": _counts(url, "remote").get("WAITING", 0)}  # nothing ran


def test_a_trial_without_heartbeat_does_not_block_the_budget(tmp_path, small_study, env):
    """A worker that died between creating its trial and its first heartbeat (simulated: a
    trial asked for by hand, never told) leaves a RUNNING trial Optuna never judges stale; the
    study still lands on exactly its budget with nothing RUNNING, and the orphan is failed."""
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    created = run_cli("launch", "--config", str(small_study), "--trials", "3", "--storage", url, "--create-only",
                      env=env)
    assert created.returncode == 0, created.stderr
    study = optuna.load_study(study_name="small", storage=_storage(url))
    orphan = study.ask()  # RUNNING, no heartbeat, nobody will ever finish it
    proc = _launch(small_study, url, 3, 2, env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    counts = _counts(url, "small")
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == 3 and counts.get("RUNNING", 0) == 0, counts
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == orphan.number)
    assert frozen.state == States.FAIL
    assert "never sent a heartbeat" in err and "Traceback" not in err


def _open_at(url: str, start: float, results) -> None:
    from tuner.study.storage import make_storage

    while time.time() < start:  # every process opens the new database at the same instant
        pass
    try:
        make_storage(url, heartbeat=False)
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the test
        results.put(f"{type(exc).__name__}: {exc}")


def test_processes_creating_one_new_database_at_once_all_open_it(tmp_path):
    """Two launches (or workers on several machines) creating the same new storage at once: one
    creates the schema, the others' colliding CREATE/INSERT is retried instead of ending the
    process with "table studies already exists" (seen when two launches shared a fresh SQLite)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    for round_ in range(3):
        url = f"sqlite:///{tmp_path / f'new{round_}.db'}"
        results = ctx.Queue()
        start = time.time() + 4  # after the spawned interpreters have imported
        procs = [ctx.Process(target=_open_at, args=(url, start, results)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        outcomes = [results.get(timeout=5) for _ in procs]
        assert outcomes == ["ok"] * 4, outcomes


# -- issue 23: a frozen worker, a delete during a run, refused connections, a read-only home --


def _trial_of(url: str, name: str, number: int):
    study = optuna.load_study(study_name=name, storage=_storage(url))
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def test_a_frozen_worker_drops_its_result_and_carries_on(tmp_path, env):
    """SIGSTOP a worker mid-trial past the heartbeat grace: the other worker fails its trial as
    stale and runs the retry; on SIGCONT the frozen worker drops its result with one line (never
    tells the FAIL trial: "Cannot tell a FAIL trial" ended it) and writes nothing to that trial."""
    cfg = write_study(tmp_path / "small.yaml", facts={"per_trial": 2},
                      search={"v_num_grad_steps": {"low": 60, "high": 80}}, pruner="none")
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    proc = _launch(cfg, url, 6, 2, env)
    workers: list[int] = []

    def running_on_a_worker():
        workers[:] = _worker_pids(proc.pid)
        study = optuna.load_study(study_name="small", storage=_storage(url))
        return next((t for t in study.get_trials(deepcopy=False, states=(States.RUNNING,))
                     if t.user_attrs.get("worker", {}).get("pid") in workers), None)

    _wait_for(running_on_a_worker)
    frozen = running_on_a_worker()
    pid = frozen.user_attrs["worker"]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:  # grace 4 s: the other worker fails the trial as stale at its next reservation
        _wait_for(lambda: _trial_of(url, "small", frozen.number).state == States.FAIL, timeout=120)
        time.sleep(2)
    finally:
        os.kill(pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Cannot tell" not in err, err
    counts = _counts(url, "small")
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == 6 and counts.get("RUNNING", 0) == 0, counts
    failed = _trial_of(url, "small", frozen.number)
    assert failed.state == States.FAIL
    assert not {"per_fact", "trajectory", "mean", "seconds"} & set(failed.user_attrs), failed.user_attrs
    assert len([ln for ln in err.splitlines() if f"trial {frozen.number} was finished elsewhere" in ln]) == 1, err
    assert _alive(pid) is False or pid not in _worker_pids(proc.pid)


def test_delete_while_launch_runs_stops_the_workers_then_deletes(tmp_path, env):
    """``tuner delete --yes`` during ``tuner launch`` (and a worker started by hand): the study is
    marked, every worker stops within a heartbeat, the launcher exits with one line, the study is
    deleted and verified gone before "deleted" is printed (it used to print it while PostgreSQL
    had refused the cascade, and the launch ran on to its budget)."""
    cfg = write_study(tmp_path / "small.yaml", facts={"per_trial": 2},
                      search={"v_num_grad_steps": {"low": 30, "high": 45}}, pruner="none")
    with postgres_cluster() as cluster:
        proc = _launch(cfg, cluster.url, 40, 2, env)
        _wait_for(lambda: len(_finished(cluster.url, "small")) >= 2)
        extra = subprocess.Popen([sys.executable, "-m", "tuner", "worker", "--study", "small", "--storage", cluster.url,
                                  "--quiet"], cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        _wait_for(lambda: _counts(cluster.url, "small").get("RUNNING", 0) >= 2)
        deleted = run_cli("delete", "--study", "small", "--yes", "--storage", cluster.url, env=env, timeout=200)
        assert deleted.returncode == 0, deleted.stderr
        assert "deleted study 'small'" in deleted.stdout and "Traceback" not in deleted.stderr
        assert "small" not in [s.study_name for s in _storage(cluster.url).get_all_studies()]
        out, err = proc.communicate(timeout=120)
        extra_out, extra_err = extra.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "Traceback" not in err and "Traceback" not in extra_err, err + extra_err
    assert len([ln for ln in err.splitlines() if "tuner: error:" in ln]) == 1, err
    assert "study 'small' is being deleted (tuner delete)" in err
    assert extra.returncode == 0, extra_err
    assert len([ln for ln in extra_err.splitlines() if "is being deleted" in ln]) == 1, extra_err
    assert PASSWORD not in out + err + deleted.stdout + deleted.stderr


def _hog(url: str) -> list:
    """Every connection slot the server has left, held by this process."""
    import psycopg

    conns = []
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    while True:
        try:
            conns.append(psycopg.connect(plain, connect_timeout=5))
        except psycopg.OperationalError as exc:
            assert "too many clients" in str(exc), exc
            return conns


def test_refused_connections_are_retried_like_an_outage(tmp_path, env):
    """A server that refuses connections (too many clients) when launch starts is retried with
    backoff, one line that names the refusal, and the study still lands on its budget."""
    cfg = write_study(tmp_path / "small.yaml", facts={"per_trial": 2})
    with postgres_cluster(max_connections=12) as cluster:
        hogs = _hog(cluster.url)
        proc = _launch(cfg, cluster.url, 4, 2, {**env, "TUNER_DB_OUTAGE_SECONDS": "120"})
        time.sleep(6)
        for conn in hogs:
            conn.close()
        out, err = proc.communicate(timeout=400)
        counts = _counts(cluster.url, "small")
    assert proc.returncode == 0, err
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == 4 and counts.get("RUNNING", 0) == 0, counts
    assert "Traceback" not in err and "invalid data in the commit" not in err, err
    refused = [ln for ln in err.splitlines() if "refused the connection (too many clients" in ln]
    assert len(refused) == 1, err  # one line for the outage in the one process that met it


def test_workers_that_cannot_connect_exit_with_one_line_and_launch_reports_them(tmp_path, env):
    """Every slot taken once the launcher is running: its workers retry for the outage window,
    exit with one line each, and launch names every one (exit code, last line) and exits 3
    (degraded) because the budget was not met."""
    cfg = write_study(tmp_path / "small.yaml", facts={"per_trial": 2})
    with postgres_cluster(max_connections=12) as cluster:
        proc = _launch(cfg, cluster.url, 4, 2, {**env, "TUNER_DB_OUTAGE_SECONDS": "5"})
        _wait_for(lambda: len(_worker_pids(proc.pid)) == 2, timeout=120)
        hogs = _hog(cluster.url)  # the launcher keeps its pooled connections; the workers get none
        try:
            out, err = proc.communicate(timeout=300)
        finally:
            for conn in hogs:
                conn.close()
    assert proc.returncode == 3, err
    assert "Traceback" not in err and "invalid data in the commit" not in err, err
    early = [ln for ln in err.splitlines() if "exited early with code 2" in ln]
    assert len(early) == 2 and all("refused the connection (too many clients" in ln for ln in early), err
    assert "run degraded: 0/4 trials finished; 2 of 2 worker(s) exited early" in err
    assert PASSWORD not in out + err


@contextlib.contextmanager
def _read_only(path):
    """``path`` read-only for the processes started inside: a read-only bind mount in a private
    mount namespace as root (root ignores permission bits), else permission bits."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")] if not p.is_symlink()}
        for p in modes:
            p.chmod(modes[p] & ~0o222)
        try:
            yield []
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a read-only directory here (no mount namespaces)")
    yield ["unshare", "--mount", "--propagation", "private", "sh", "-c",
           f'mount --bind "{path}" "{path}" && mount -o remount,bind,ro "{path}" && exec "$@"', "sh"]


def test_read_only_home_with_postgres_writes_nothing(tmp_path, env, default_model):
    """A read-only TUNER_HOME (model cache inside it) with PostgreSQL storage: launch stops with
    one line before touching the database (it used to create the study and its first trials,
    then fail on the model's lock file)."""
    import psycopg

    from tuner.models.build import BuildSpec, model_dir

    home = tmp_path / "rohome"
    kb = str(ROOT / "studies/facts/synthetic_kb.json")
    shutil.copytree(model_dir(BuildSpec(kb=kb), root=ROOT / "storage"), model_dir(BuildSpec(kb=kb), root=home))
    cfg = write_study(tmp_path / "small.yaml")
    with postgres_cluster() as cluster, _read_only(home) as wrap:
        proc = subprocess.run([*wrap, sys.executable, "-m", "tuner", "launch", "--config", str(cfg), "--trials", "4",
                               "--workers", "1", "--storage", cluster.url, "--no-progress"], cwd=ROOT,
                              env={**os.environ, **env, "TUNER_HOME": str(home)}, capture_output=True, text=True,
                              timeout=300)
        with psycopg.connect(cluster.url.replace("postgresql+psycopg://", "postgresql://")) as conn:
            table = conn.execute("SELECT to_regclass('public.studies')").fetchone()[0]
            studies = conn.execute("SELECT count(*) FROM studies").fetchone()[0] if table else 0
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("tuner: error:")]
    assert len(lines) == 1 and "not writable" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert studies == 0  # nothing in the database (not even the tables)
    assert table is None
