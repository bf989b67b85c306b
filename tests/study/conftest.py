from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, shared_home


@pytest.fixture
def home(tmp_path, default_model) -> Path:
    """A private TUNER_HOME that shares the (deterministic) model and stats caches."""
    return shared_home(tmp_path / "home")


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
