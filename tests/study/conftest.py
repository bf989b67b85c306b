from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.workspace import shared_home, study_file


@pytest.fixture
def home(tmp_path, default_model) -> Path:
    """A private TUNER_HOME that shares the (deterministic) model and stats caches."""
    return shared_home(tmp_path / "home")


@pytest.fixture
def env(home) -> dict[str, str]:
    return {"TUNER_HOME": str(home), "TUNER_HEARTBEAT_INTERVAL": "1", "TUNER_HEARTBEAT_GRACE": "4"}


def write_study(path: Path, **changes) -> Path:
    """The small study the end-to-end tests run: 3 facts per trial, 5–15 steps, no held-out facts."""
    search = dict(yaml.safe_load((ROOT / "studies/default.yaml").read_text())["search"])
    search["v_num_grad_steps"] = {"low": 5, "high": 15}
    search.update(changes.pop("search", {}))
    facts = {"per_trial": 3, "holdout": 0, **changes.pop("facts", {})}  # held-out validation: only where tested
    # the sampler and pruner the end-to-end tests were written against (the default study now
    # uses GP without pruning: bench/search.py)
    changes = {"sampler": "tpe", "pruner": "median", **changes}
    return study_file(path, **{"name": "small", "facts": facts, "search": search, **changes})


@pytest.fixture
def small_study(tmp_path) -> Path:
    return write_study(tmp_path / "small.yaml")
