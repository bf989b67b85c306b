"""``bench/search.py``: its table computed from known trial histories (fast), and at toy size
(CI): real launches with two samplers, a table with one row per sampler and pruner, the
held-out score of each run's export and the references."""

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


def _bench_search():
    """``bench/search.py`` as a module (it is a script, not a package member)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_search", ROOT / "bench" / "search.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(sampler, pruner, seed, values, pruned=0.0):
    """A run as ``run_one`` records it: trial i completes at 10·(i+1) s; None is a pruned or
    infeasible trial."""
    return {"sampler": sampler, "pruner": pruner, "seed": seed, "trials": len(values), "wall": 60.0 * len(values),
            "history": [(i, 10.0 * (i + 1), v) for i, v in enumerate(values)], "pruned": pruned,
            "holdout": None, "references": {}}


# the table's columns and their widths, as bench/search.py's header lays them out
_COLUMNS = [("sampler", 8), ("pruner", 12), ("runs", 5), ("reached", 9), ("trials", 15), ("minutes", 12),
            ("to_random", 11), ("best", 8), ("held_out", 10), ("pruned", 8), ("wall", 10)]


def _cells(line):
    out, at = {}, 0
    for name, width in _COLUMNS:
        out[name] = line[at:at + width].strip()
        at += width
    return out


def test_trials_to_target_from_a_known_history():
    """The table's figures for known histories, worked out by hand: the best value any run found
    is 1.0, so the target is 0.95; TPE seed 0 first reaches it at its 3rd trial (30 s: a
    pruned trial still counts), seed 1 at its 5th (50 s), random search never (> 6); random
    search's median best is 0.4, which TPE reaches at trials 1 and 4 (median 2.5)."""
    search = _bench_search()
    runs = [_run("tpe", "median", 0, [0.5, None, 0.96, 1.0, 0.2, 0.3], pruned=1 / 6),
            _run("tpe", "median", 1, [0.1, 0.2, 0.3, 0.4, 0.97, 0.5]),
            _run("random", "none", 0, [0.2, 0.3, None, 0.4, 0.1, 0.35])]
    assert search.reach(runs[0], 0.95) == (3, 30.0)
    assert search.reach(runs[1], 0.95) == (5, 50.0)
    assert search.reach(runs[2], 0.95) == (None, None)
    lines = search.table(runs).splitlines()
    assert lines[0].startswith("target: 95% of the best value any run found (1.0000) = 0.9500")
    assert "random search's median best (0.4)" in lines[0]
    tpe, random = _cells(lines[2]), _cells(lines[3])
    assert tpe == {"sampler": "tpe", "pruner": "median", "runs": "2", "reached": "2", "trials": "4",
                   "minutes": "0.67", "to_random": "2.5", "best": "0.9850", "held_out": "-", "pruned": "8%",
                   "wall": "6.00"}
    assert random == {"sampler": "random", "pruner": "none", "runs": "1", "reached": "0", "trials": "> 6",
                      "minutes": "-", "to_random": "4", "best": "0.4000", "held_out": "-", "pruned": "0%",
                      "wall": "6.00"}
    assert len(lines) == 4  # no held-out references were recorded: no references line
