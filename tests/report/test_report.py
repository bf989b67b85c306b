"""The HTML report and optuna-dashboard, built from real studies run through the CLI, checked
in a real headless Chromium and over HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pytest

from tests.conftest import ROOT, run_cli, shared_home
from tests.report.browser import chromium, js_errors, non_blank, wait_for_plots

pytestmark = pytest.mark.slow


class _Divs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        d = dict(attrs)
        if tag == "div" and d.get("id", "").startswith("fig-"):
            self.ids.append(d["id"][4:])
        if tag == "script":
            self.scripts += 1


@pytest.fixture(scope="module")
def ran_study(tmp_path_factory, default_model):
    from tests.study.conftest import write_study

    tmp = tmp_path_factory.mktemp("report")
    home = shared_home(tmp / "home")
    env = {"TUNER_HOME": str(home)}
    cfg = write_study(tmp / "small.yaml")
    url = f"sqlite:///{tmp / 'tuner.db'}"
    proc = run_cli("launch", "--config", str(cfg), "--trials", "16", "--workers", "2", "--storage", url,
                   "--no-progress", env=env)
    assert proc.returncode == 0, proc.stderr
    return tmp, url, env


def _render(page: Path, n_figures: int, shot: Path) -> tuple[int, list[str]]:
    with chromium() as driver:
        driver.get(page.resolve().as_uri())
        drawn = wait_for_plots(driver, n_figures)
        time.sleep(0.5)
        driver.save_screenshot(str(shot))
        return drawn, js_errors(driver)


def test_report_has_every_figure_and_renders(ran_study):
    tmp, url, env = ran_study
    out = tmp / "report"
    proc = run_cli("report", "--study", "small", "--storage", url, "--out", str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    page = out / "index.html"
    text = page.read_text()
    parser = _Divs()
    parser.feed(text)
    expected = {"loss-surface", "loss-surface-final_prob", "loss-surface-rebound", "loss-surface-final_loss",
                "loss-surface-3d", "trajectories", "rebound-map", "importance-objective", "importance-rebound",
                "history", "timeline", "methods"}
    assert expected <= set(parser.ids)
    assert "edit mode: independent" in text and "rome layer" in text  # method, layer and mode in hovers and summary
    assert text.count("plotly.js v") <= 2 and len(text) > 3_000_000 // 1000  # plotly.js embedded once, offline
    assert "Best trial #" in text and "Per-fact metrics" in text and "textbook" in text
    drawn, errors = _render(page, len(parser.ids), tmp / "report.png")
    assert drawn == len(parser.ids) and errors == []
    distinct, nonwhite = non_blank(tmp / "report.png")
    assert distinct > 50 and nonwhite > 0.03


def test_report_for_empty_and_failed_studies(tmp_path, default_model):
    from tests.study.conftest import write_study

    cfg = write_study(tmp_path / "small.yaml")
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    env = {"TUNER_HOME": str(tmp_path / "home")}
    assert run_cli("launch", "--config", str(cfg), "--create-only", "--storage", url, env=env).returncode == 0
    proc = run_cli("report", "--study", "small", "--storage", url, "--out", str(tmp_path / "empty"), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "No completed trial yet" in (tmp_path / "empty/index.html").read_text()
    # a study whose trials all failed
    study = optuna.load_study(study_name="small", storage=url)
    for _ in range(3):
        t = study.ask()
        t.suggest_int("layer", 0, 3)
        study.tell(t, state=optuna.trial.TrialState.FAIL)
    proc = run_cli("report", "--study", "small", "--storage", url, "--out", str(tmp_path / "failed"), env=env)
    assert proc.returncode == 0, proc.stderr
    page = tmp_path / "failed/index.html"
    assert "Only failed trials so far" in page.read_text()
    parser = _Divs()
    parser.feed(page.read_text())
    drawn, errors = _render(page, len(parser.ids), tmp_path / "failed.png")
    assert drawn == len(parser.ids) and errors == []


def test_report_with_one_trial(tmp_path, default_model):
    from tests.study.conftest import write_study

    cfg = write_study(tmp_path / "small.yaml")
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    home = shared_home(tmp_path / "home")
    proc = run_cli("launch", "--config", str(cfg), "--trials", "1", "--workers", "1", "--storage", url,
                   "--no-progress", env={"TUNER_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr
    text = (home / "reports/small/index.html").read_text()  # written by launch itself
    assert "Only one completed trial" in text and "Best trial #0" in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def test_dashboard_serves_trials_and_rome_figures(ran_study):
    tmp, url, env = ran_study
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tuner", "dashboard", "--storage", url, "--port", str(port)],
                            cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                studies = _get(f"{base}/api/studies")
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.3)
        entry = next(s for s in studies["study_summaries"] if s["study_name"] == "small")
        detail = _get(f"{base}/api/studies/{entry['study_id']}?after=0")
        assert len(detail["trials"]) >= 16
        ids = {g["id"] for g in detail["plotly_graph_objects"]}
        assert {"rome-loss-surface", "rome-trajectories", "rome-importance-objective"} <= ids
        surface = json.loads(next(g["graph_object"] for g in detail["plotly_graph_objects"]
                                  if g["id"] == "rome-loss-surface"))
        layout = surface["layout"]
        assert layout["yaxis"]["type"] == "log" and layout["yaxis"]["title"]["text"] == "v_lr"
        assert layout["xaxis"]["title"]["text"] == "layer"
        assert detail["objective_names"] == ["score"]
        notes = [t for t in detail["trials"] if t.get("note", {}).get("body")]
        assert notes and "Per-fact metrics" in notes[0]["note"]["body"]
    finally:
        proc.terminate()
        proc.wait(10)
