"""Workspaces shared by the tests and the benchmarks (``bench/``): a private TUNER_HOME that
reuses the deterministic model and statistics caches, and study files derived from the
default study with absolute paths."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def shared_home(path: Path) -> Path:
    """A private TUNER_HOME at ``path`` that shares the deterministic model and stats caches."""
    path.mkdir(parents=True, exist_ok=True)
    for sub in ("models", "stats"):
        (ROOT / "storage" / sub).mkdir(parents=True, exist_ok=True)
        os.symlink(ROOT / "storage" / sub, path / sub)
    return path


def study_file(path: Path, **changes: Any) -> Path:
    """The default study with absolute fact paths; a mapping in ``changes`` updates that section,
    anything else replaces the key."""
    data = yaml.safe_load((ROOT / "studies/default.yaml").read_text())
    data["model"]["kb"] = str(ROOT / "studies/facts/synthetic_kb.json")
    data["facts"]["path"] = str(ROOT / "studies/facts/synthetic_edits.json")
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data))
    return path
