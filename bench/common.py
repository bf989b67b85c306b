"""Helpers shared by the benchmarks: a private TUNER_HOME sharing the model/stats caches, and
the default study with absolute paths and a few changes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def shared_home(path: Path) -> Path:
    for sub in ("models", "stats"):
        (ROOT / "storage" / sub).mkdir(parents=True, exist_ok=True)
        os.symlink(ROOT / "storage" / sub, path / sub)
    return path


def default_study(path: Path, **changes: Any) -> Path:
    data = yaml.safe_load((ROOT / "studies/default.yaml").read_text())
    data["model"]["kb"] = str(ROOT / "studies/facts/synthetic_kb.json")
    data["facts"]["path"] = str(ROOT / "studies/facts/synthetic_edits.json")
    data.update(changes)
    path.write_text(yaml.safe_dump(data))
    return path
