"""docker-compose.yml validated without a Docker engine, then its topology run for real:
PostgreSQL, the init step, three workers and the dashboard, from the file's own commands."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest

from tests.conftest import ROOT, shared_home
from tests.deploy.compose import load, read_env
from tests.pg import postgres_server
from tuner.cli.main import build_parser

COMPOSE = ROOT / "docker-compose.yml"
ENV = read_env(ROOT / ".env.example")


@pytest.fixture(scope="module")
def compose():
    return load(COMPOSE, ENV)


def _workers(compose):
    return {k: v for k, v in compose["services"].items() if k.startswith("worker")}


def test_services_health_and_order(compose):
    services = compose["services"]
    assert {"postgres", "init", "dashboard"} <= set(services) and len(_workers(compose)) >= 2
    pg = services["postgres"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert any(v.startswith("pgdata:") for v in pg["volumes"]) and "pgdata" in compose["volumes"]
    assert services["init"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in [*_workers(compose), "dashboard"]:
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["init"]["condition"] == "service_completed_successfully"
    for name in ["init", "dashboard", *_workers(compose)]:
        assert "tuner-data:/data" in services[name]["volumes"]  # shared storage/ (models, stats, reports)


def test_every_worker_has_its_own_gpu(compose):
    seen = []
    for name, svc in _workers(compose).items():
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1 and "count" not in devices[0], name
        seen += devices[0]["device_ids"]
    assert len(seen) == len(set(seen))


def test_dashboard_published_on_loopback_only(compose):
    ports = compose["services"]["dashboard"]["ports"]
    assert ports and all(p.startswith("127.0.0.1:") for p in ports)


def test_no_secret_inlined():
    raw = COMPOSE.read_text()
    assert ENV["POSTGRES_PASSWORD"] not in raw and "POSTGRES_PASSWORD:" not in raw
    assert "${POSTGRES_PASSWORD}" in raw  # it comes from .env
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_commands_are_real_tuner_commands(compose):
    parser = build_parser()
    for name, svc in compose["services"].items():
        cmd = svc.get("command")
        if name == "postgres":
            continue
        assert cmd[0] == "tuner", name
        args = parser.parse_args(cmd[1:])  # SystemExit (a failure) on an unknown flag or subcommand
        assert args.command in ("launch", "worker", "dashboard"), name
    init = parser.parse_args(compose["services"]["init"]["command"][1:])
    assert init.create_only and (ROOT / init.config).is_file()


def test_dockerfile_builds_on_cuda_pytorch_without_weights():
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM pytorch/pytorch:" in text and "cuda" in text
    assert "COPY tuner" in text and "pip install" in text
    assert ".safetensors" not in text and "COPY storage" not in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_topology_runs_without_docker(tmp_path, default_model):
    """The compose file's own init/worker/dashboard commands against a real PostgreSQL."""
    from tests.study.conftest import write_study

    study_yaml = write_study(tmp_path / "compose.yaml", name="compose")
    home = shared_home(tmp_path / "home")
    port = _free_port()
    with postgres_server() as url:
        env_vars = {**ENV, "TUNER_STUDY": "compose", "TUNER_CONFIG": str(study_yaml), "TUNER_TRIALS": "9",
                    "DASHBOARD_PORT": str(port)}
        services = load(COMPOSE, env_vars)["services"]
        run_env = {**os.environ, "TUNER_STORAGE": url, "TUNER_HOME": str(home),
                   "TUNER_HEARTBEAT_INTERVAL": "1", "TUNER_HEARTBEAT_GRACE": "4"}

        def start(cmd):
            return subprocess.Popen([sys.executable, "-m", "tuner", *cmd[1:]], cwd=ROOT, env=run_env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        init = start(services["init"]["command"])
        assert init.wait(120) == 0, init.stderr.read()
        worker_cmd = services["worker-gpu0"]["command"]
        t0 = time.time()
        workers = [start(worker_cmd) for _ in range(3)]
        dashboard = start(services["dashboard"]["command"])
        try:
            for w in workers:
                assert w.wait(400) == 0, w.stderr.read()
            wall = time.time() - t0
            study = optuna.load_study(study_name="compose", storage=url)
            trials = study.get_trials(deepcopy=False)
            finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
            assert 9 <= len(finished) <= 10
            assert not [t for t in trials if t.state.name == "RUNNING"]
            per_worker: dict[int, int] = {}
            for t in finished:
                pid = t.user_attrs["worker"]["pid"]
                per_worker[pid] = per_worker.get(pid, 0) + 1
            assert len(per_worker) >= 2
            print(f"compose topology: {len(finished)} trials in {wall:.1f}s, per worker {sorted(per_worker.values())}")
            deadline = time.time() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as resp:
                        listing = json.loads(resp.read())
                    break
                except OSError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.3)
            names = [s["study_name"] for s in listing["study_summaries"]]
            assert "compose" in names
        finally:
            dashboard.terminate()
            dashboard.wait(10)
            for w in workers:
                if w.poll() is None:
                    w.kill()
