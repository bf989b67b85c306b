"""``bench/search.py`` at toy size (CI): real launches with two samplers, a table with one row
per sampler and pruner, the held-out score of each run's export and the references."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_search_benchmark_toy(tmp_path, default_model):
    out = tmp_path / "runs.json"
    proc = subprocess.run([sys.executable, "bench/search.py", "--toy", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("target: 95% of the best value any run found")
    assert [line.split()[:2] for line in lines[2:4]] == [["tpe", "median"], ["random", "none"]]
    assert "textbook" in lines[-1] and "easyedit-llama" in lines[-1]
    runs = json.loads(out.read_text())
    assert len(runs) == 2 and all(len(r["history"]) == 6 and r["holdout"] is not None for r in runs)
    again = subprocess.run([sys.executable, "bench/search.py", "--table", str(out)], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert again.stdout == proc.stdout
