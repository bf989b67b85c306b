from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT


@pytest.fixture
def home(tmp_path, default_model) -> Path:
    """A private TUNER_HOME that shares the (deterministic) model and stats caches."""
    h = tmp_path / "home"
    h.mkdir()
    for sub in ("models", "stats"):
        (ROOT / "storage" / sub).mkdir(parents=True, exist_ok=True)
        os.symlink(ROOT / "storage" / sub, h / sub)
    return h


@pytest.fixture
def env(home) -> dict[str, str]:
    return {"TUNER_HOME": str(home), "TUNER_HEARTBEAT_INTERVAL": "1", "TUNER_HEARTBEAT_GRACE": "4"}


def write_study(path: Path, **changes) -> Path:
    data = yaml.safe_load((ROOT / "studies/default.yaml").read_text())
    data["model"]["kb"] = str(ROOT / "studies/facts/synthetic_kb.json")
    data["facts"]["path"] = str(ROOT / "studies/facts/synthetic_edits.json")
    data["facts"]["per_trial"] = 3
    data["search"]["v_num_grad_steps"] = {"low": 5, "high": 15}
    data["name"] = "small"
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def small_study(tmp_path) -> Path:
    return write_study(tmp_path / "small.yaml")
