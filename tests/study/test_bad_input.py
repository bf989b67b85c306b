"""Hostile and broken input: one line, exit code 2, no traceback, and nothing written — the
database dump and the file tree are byte-identical before and after."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli
from tests.study.conftest import write_study

pytestmark = pytest.mark.slow


def _tree(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            h.update(f"L {p.relative_to(root)} -> {os.readlink(p)}\n".encode())
        elif p.is_file():
            h.update(f"F {p.relative_to(root)} {hashlib.sha256(p.read_bytes()).hexdigest()}\n".encode())
        else:
            h.update(f"D {p.relative_to(root)}\n".encode())
    return h.hexdigest()


def _dump(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return "\n".join(conn.iterdump())


@pytest.fixture(scope="module")
def world(tmp_path_factory, default_model):
    """A storage root with one healthy study, a private model cache (copied, so it can be broken),
    and the bad inputs as files."""
    root = tmp_path_factory.mktemp("bad")
    home = root / "home"
    (home / "models").mkdir(parents=True)
    model = _model_dir(home)
    shutil.copytree(_model_dir(ROOT / "storage"), model)
    os.symlink(ROOT / "storage/stats", home / "stats")
    db = root / "tuner.db"
    good = write_study(root / "good.yaml")
    made = run_cli("launch", "--config", str(good), "--create-only", "--storage", f"sqlite:///{db}",
                   env={"TUNER_HOME": str(home)})
    assert made.returncode == 0, made.stderr
    facts = root / "facts"
    facts.mkdir()
    record = json.loads((ROOT / "studies/facts/synthetic_edits.json").read_text())[0]
    (facts / "empty.json").write_text("[]")
    no_brace = json.loads(json.dumps(record))
    no_brace["requested_rewrite"]["prompt"] = "Someone is a citizen of"
    (facts / "no_brace.json").write_text(json.dumps([no_brace]))
    (facts / "one.json").write_text(json.dumps([record]))
    return root, home, db, good


def _model_dir(root: Path) -> Path:
    from tuner.models.build import BuildSpec, model_dir

    return model_dir(BuildSpec(kb=str(ROOT / "studies/facts/synthetic_kb.json")), root=root)


def _yaml(root: Path, name: str, **changes) -> str:
    return str(write_study(root / f"{name}.yaml", **changes))


CASES = {
    # point 4: half-made studies
    "missing fact file": (lambda r: ["launch", "--config", _yaml(r, "a", facts={"path": str(r / "nope.json")}), "--study", "a"],
                          "not found"),
    "fact record without {}": (lambda r: ["launch", "--config", _yaml(r, "b", facts={"path": str(r / "facts/no_brace.json"), "per_trial": 1}), "--study", "b"],
                               "fact record 0"),
    "empty fact file": (lambda r: ["launch", "--config", _yaml(r, "c", facts={"path": str(r / "facts/empty.json")}), "--study", "c"],
                        "empty"),
    "per_trial > facts": (lambda r: ["launch", "--config", _yaml(r, "d", facts={"path": str(r / "facts/one.json"), "per_trial": 3}), "--study", "d"],
                          "facts.per_trial 3 exceeds the 1 facts"),
    "zero threads": (lambda r: ["launch", "--config", str(r / "good.yaml"), "--study", "t", "--threads", "0"],
                     "--threads must be >= 1, got 0"),
    "bad search bounds": (lambda r: ["launch", "--config", _yaml(r, "e", search={"v_lr": {"low": 2.0, "high": 0.5}}), "--study", "e"],
                          "low (2.0) > high (0.5)"),
    # point 5: study names are never paths
    "name with ..": (lambda r: ["launch", "--config", str(r / "good.yaml"), "--study", "../../x"], "study name '../../x' is not allowed"),
    "absolute name": (lambda r: ["launch", "--config", str(r / "good.yaml"), "--study", "/tmp/abs"], "is not allowed"),
    "hidden name": (lambda r: ["launch", "--config", str(r / "good.yaml"), "--study", ".x"], "is not allowed"),
    "report ../": (lambda r: ["report", "--study", "../../x"], "is not allowed"),
    "status ../": (lambda r: ["status", "--study", "../x"], "is not allowed"),
    # point 7: read-only commands never create
    "status on a missing db": (lambda r: ["status", "--storage", f"sqlite:///{r}/typo/dir/tuner.db"], "no database at"),
    "worker on a missing db": (lambda r: ["worker", "--study", "small", "--storage", f"sqlite:///{r}/typo.db"], "no database at"),
    "report on a missing db": (lambda r: ["report", "--study", "small", "--storage", f"sqlite:///{r}/typo.db"], "no database at"),
    "copy from a missing db": (lambda r: ["copy", "--study", "small", "--from", f"sqlite:///{r}/typo.db", "--to", f"sqlite:///{r}/t2.db"], "no database at"),
    "delete unknown study": (lambda r: ["delete", "--study", "nope", "--yes"], "study 'nope' not found"),
    # point 8: passwords never leak
    "password as query parameter": (lambda r: ["status", "--storage", "postgresql://u@127.0.0.1:1/db?password=topsecret"], "password=***"),
    "password with @": (lambda r: ["status", "--storage", "postgresql+psycopg://u:top@secret@127.0.0.1:1/db"], "cannot open storage"),
    "driver not installed": (lambda r: ["status", "--storage", "postgresql+pg8000://u:topsecret@127.0.0.1:1/db"], "driver"),
    # point 6: corrupt storage
    "unknown study": (lambda r: ["worker", "--study", "nope"], "study 'nope' not found"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_one_line_exit_2_nothing_written(world, case):
    root, home, db, _ = world
    argv, needle = CASES[case]
    args = argv(root)
    if "--storage" not in args and "--from" not in args:
        args += ["--storage", f"sqlite:///{db}"]
    tree, dump = _tree(root), _dump(db)
    proc = run_cli(*args, env={"TUNER_HOME": str(home)})
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("tuner: error:")]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "topsecret" not in proc.stderr + proc.stdout
    assert _dump(db) == dump and _tree(root) == tree


def test_broken_model_cache_names_the_fix(world):
    root, home, db, good = world
    model = _model_dir(home)
    weights = model / "model.safetensors"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[: len(original) // 2])
        tree, dump = _tree(root), _dump(db)
        proc = run_cli("launch", "--config", str(good), "--study", "fresh", "--trials", "2", "--storage",
                       f"sqlite:///{db}", env={"TUNER_HOME": str(home)}, timeout=120)
        assert proc.returncode == 2 and "tuner model build --force" in proc.stderr and "Traceback" not in proc.stderr
        assert _dump(db) == dump and _tree(root) == tree
        weights.write_bytes(original)
        meta = (model / "meta.json").read_text()
        (model / "meta.json").write_text(meta[:20])
        proc = run_cli("edit", "--config", str(good), env={"TUNER_HOME": str(home)})
        assert proc.returncode == 2 and "meta.json is unreadable" in proc.stderr and "--force" in proc.stderr
        (model / "meta.json").write_text(meta)
    finally:
        weights.write_bytes(original)


def test_corrupt_statistics_are_moved_aside_and_recomputed(tiny_editor, tmp_path, stats_texts):
    from tuner.rome.layer_stats import second_moment

    ed = tiny_editor("llama")
    kw = dict(n_samples=300, fingerprint="fp", root=tmp_path, progress=False)
    good = second_moment(ed.model, ed.tok, ed.adapter, 0, stats_texts, **kw)
    path = next((tmp_path / "stats").rglob("*.safetensors"))
    path.write_bytes(path.read_bytes()[:100])
    again = second_moment(ed.model, ed.tok, ed.adapter, 0, stats_texts, **kw)
    assert (again - good).abs().max() < 1e-6
    assert list(path.parent.glob("*.corrupt-*"))


def test_checkpoint_without_statistics_corpus_runs_with_mom2_off(tmp_path, tiny_models, tiny_tok, env):
    """A real checkpoint with no statistics corpus and ``mom2_adjustment: false``: the textbook
    baseline follows the study's setting (it used to force C⁻¹ and fail after writing the study)."""
    import optuna

    model_dir = tmp_path / "tiny-llama"
    tiny_models("llama").save_pretrained(model_dir)
    tiny_tok.save_pretrained(model_dir)
    cfg = write_study(tmp_path / "ckpt.yaml", name="ckpt", model={"name": str(model_dir)},
                      hparams={"mom2_adjustment": False, "layer": 1},
                      search={"layer": {"low": 0, "high": 2}, "v_num_grad_steps": {"low": 5, "high": 6}},
                      facts={"per_trial": 2})
    url = f"sqlite:///{tmp_path / 't.db'}"
    proc = run_cli("launch", "--config", str(cfg), "--trials", "2", "--workers", "1", "--storage", url,
                   "--no-progress", env=env)
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="ckpt", storage=url)
    assert study.user_attrs["references"]["rows"][0]["hparams"]["mom2_adjustment"] is False
