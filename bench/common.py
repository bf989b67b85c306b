"""Helpers shared by the benchmarks: the test suite's workspace helpers (one copy, in
``tests/workspace.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.workspace import ROOT, shared_home  # noqa: E402
from tests.workspace import study_file as default_study  # noqa: E402

__all__ = ["ROOT", "default_study", "shared_home"]
