"""The exported setting must be the user's winner: the objective no non-edit can win, guards
relative to the model's own references, the verdict against them, exports users cannot misread.

The test bed (``tests/testbed.py``) is a 2-layer, width-64 model on facts of its own where ROME's
edits cost their neighbours: under the old rules (final_prob − rebound, an absolute specificity
guard) every real edit there is infeasible and only non-edits remain."""

from __future__ import annotations

import dataclasses

import pytest

from tests.conftest import ROOT, run_cli
from tuner.metrics.scoring import CONSTRAINT_NAMES, Thresholds, score_metrics
from tuner.study.config import ObjectiveSpec, StudyConfig

OLD_RULES = ObjectiveSpec(kind="stability", specificity_margin=None, max_specificity_drop=0.05)
"""The objective and guard the project shipped before: what let a non-edit win."""


def _edit(p_new: float, spec: float, *, flipped: bool, para: float = 0.5) -> dict:
    """One fact's metrics, as the editor reports them."""
    return {"final_prob": p_new, "rebound": 0.0, "efficacy": float(flipped), "efficacy_pre": 0.0, "pre_prob": 0.001,
            "paraphrase": para, "paraphrase_prob": para * p_new, "paraphrase_pre": 0.0, "paraphrase_prob_pre": 0.0,
            "specificity": spec, "specificity_pre": 1.0, "neighborhood_keep": spec, "disabling_edit": False}


def test_the_objective_scores_a_non_edit_near_zero_and_a_local_edit_highest():
    obj = ObjectiveSpec()
    non_edit = score_metrics([_edit(0.002, 1.0, flipped=False, para=0.0)] * 4, obj)
    breaks_neighbours = score_metrics([_edit(0.95, 0.05, flipped=True, para=0.9)] * 4, obj)
    local = score_metrics([_edit(0.8, 0.95, flipped=True, para=0.7)] * 4, obj)
    assert non_edit.value < 0.01
    assert breaks_neighbours.value < 0.2 < local.value
    assert local.S == pytest.approx(3 / (1 / 1.0 + 1 / 0.7 + 1 / 0.95))  # CounterFact's harmonic mean
    # the plain mission objective is still there
    plain = score_metrics([_edit(0.8, 0.95, flipped=True)], dataclasses.replace(obj, kind="stability"))
    assert plain.value == pytest.approx(0.8)


@pytest.fixture(scope="module")
def bed():
    """The ChatGLM3-interface test bed: its study and loaded model, and its references measured."""
    from tests.testbed import build_testbed
    from tuner.study.references import measure

    cfg = StudyConfig.load(build_testbed(ROOT / "storage" / "testbeds", "chatglm"))
    loaded = cfg.load_model(device="cpu", progress=False)
    editor = loaded.editor(progress=False)
    facts = cfg.select_facts()
    return cfg, loaded, editor, facts, measure(editor, cfg, facts, loaded.adapter.family)


def _setting(bed, hp, obj: ObjectiveSpec):
    from tuner.study.references import edit_metrics

    cfg, loaded, editor, facts, record = bed
    metrics = [r.metrics for r in edit_metrics(editor, cfg.replace(objective=obj), facts, hp)]
    return score_metrics(metrics, obj, Thresholds.from_dict(record["thresholds"]))


@pytest.mark.slow
def test_on_the_test_bed_a_non_edit_never_wins_and_the_references_are_feasible(bed):
    """A setting too weak to edit (5 steps at v_lr 0.001) against ROME's textbook setting on the
    bed: by the default rules the textbook wins and the non-edit is infeasible; by the old rules
    the textbook is infeasible and the non-edit is the only feasible one — the failure."""
    cfg, loaded, editor, facts, record = bed
    rows = {r["label"]: r for r in record["rows"]}
    assert all(rows[k]["feasible"] for k in ("textbook", "easyedit-chatglm")), rows
    textbook_hp = next(hp for label, hp in _references(bed) if label == "textbook")
    weak = textbook_hp.replace(v_lr=0.001, v_num_grad_steps=5)

    new_textbook, new_weak = _setting(bed, textbook_hp, ObjectiveSpec()), _setting(bed, weak, ObjectiveSpec())
    assert new_textbook.feasible and new_textbook.efficacy > 0.5
    assert not new_weak.feasible and "no edit" in new_weak.why
    assert new_textbook.value > new_weak.value + 0.3

    old_textbook, old_weak = _setting(bed, textbook_hp, OLD_RULES), _setting(bed, weak, OLD_RULES)
    assert old_weak.efficacy == 0.0
    drop = dict(zip(CONSTRAINT_NAMES, old_textbook.constraints))["specificity_drop"]
    assert drop > 0 and dict(zip(CONSTRAINT_NAMES, old_weak.constraints))["specificity_drop"] <= 0  # the old failure


def _references(bed):
    from tuner.study.references import reference_settings

    cfg, loaded, editor, facts, record = bed
    return reference_settings(cfg.hparams, loaded.adapter.family, editor.n_layers)


@pytest.mark.slow
def test_launch_on_the_test_bed_exports_a_real_edit_and_says_how_it_compares(tmp_path, bed):
    """A short study on the bed: the export edits the held-out facts (efficacy above the unedited
    model's) at least as well as the best reference, and the summary, status and report say so."""
    import optuna
    import yaml

    from tests.workspace import shared_home

    cfg, *_ = bed
    data = yaml.safe_load(cfg.to_yaml())
    data.update(trials=10, facts={**data["facts"], "per_trial": 6, "holdout": 12})
    data["search"]["v_num_grad_steps"] = {"low": 10, "high": 40}
    path = tmp_path / "bed.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {"TUNER_HOME": str(shared_home(tmp_path / "home")), "TUNER_TRUST_REMOTE_CODE": "1"}
    url = f"sqlite:///{tmp_path / 't.db'}"
    proc = run_cli("launch", "--config", str(path), "--trials", "10", "--workers", "1", "--storage", url,
                   "--no-progress", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for needle in ("textbook", "easyedit-chatglm", "unedited", "efficacy–specificity trade-off", "* exported:",
                   "held-out validation on 12 facts"):
        assert needle in out, (needle, out)
    study = optuna.load_study(study_name=data["name"], storage=url)
    record = study.user_attrs["holdout"]
    rows = {r["label"]: r for r in record["rows"]}
    win = rows[record["winner"]]
    refs = [r for r in record["rows"] if r["trial"] is None and r["label"] != "unedited"]
    assert win["efficacy"] > rows["unedited"]["efficacy"]
    assert win["S"] >= max(r["S"] for r in refs)
    if win["trial"] is None:  # a reference won: the summary says so in one plain line
        assert "a reference beats every tuned setting" in out
    exported = StudyConfig.load(tmp_path / "home" / "best" / data["name"] / "study.yaml")
    assert exported.hparams.to_dict() == win["hparams"]
    easy = (tmp_path / "home" / "best" / data["name"] / "rome_hparams.yaml").read_text()
    assert "EasyEdit reproduces this setting" in easy and "held-out S" in easy
    status = run_cli("status", "--study", data["name"], "--storage", url, env=env)
    assert status.returncode == 0 and "* exported:" in status.stdout and "unedited" in status.stdout
    page = (tmp_path / "home" / "reports" / data["name"] / "index.html").read_text()
    assert "id='verdict'" in page and "Efficacy–specificity trade-off" in page


@pytest.mark.slow
def test_a_reference_that_beats_every_trial_is_the_export(tmp_path, default_model):
    """One tuned trial that barely edits (2 steps): on the held-out facts the references beat it,
    so the export is the best reference, and the verdict says so."""
    import optuna

    from tuner.study.export import export_best
    from tuner.study.objective import CONSTRAINTS
    from tuner.study.validate import run_validation, table

    cfg = StudyConfig.load(ROOT / "studies/default.yaml")
    cfg = cfg.replace(facts=dataclasses.replace(cfg.facts, holdout=6))
    weak = cfg.hparams.replace(v_num_grad_steps=2, v_lr=0.01)
    study = optuna.create_study(direction="maximize", study_name="ref", storage=f"sqlite:///{tmp_path / 'r.db'}")
    study.add_trial(optuna.trial.create_trial(
        params={"v_lr": weak.v_lr}, distributions={"v_lr": optuna.distributions.FloatDistribution(0.001, 5)},
        value=0.9, user_attrs={"hparams": weak.to_dict(), CONSTRAINTS: [0.0, 0.0, 0.0, -1.0]}))
    record = run_validation(study, cfg, top=1, progress=False, loaded=default_model)
    rows = {r["label"]: r for r in record["rows"]}
    assert rows["trial #0"]["S"] < max(rows["textbook"]["S"], rows["easyedit-llama"]["S"])
    assert record["winner"] in ("textbook", "easyedit-llama")
    assert "a reference beats every tuned setting on the held-out facts" in table(record)
    paths = export_best(study, cfg, out_dir=tmp_path / "best")
    assert StudyConfig.load(paths[0]).hparams.to_dict() == rows[record["winner"]]["hparams"]
    assert "held-out S" in (tmp_path / "best" / "rome_hparams.yaml").read_text()


def test_easyedit_only_searches_what_easyedit_reproduces():
    import yaml

    data = yaml.safe_load((ROOT / "studies/default.yaml").read_text())
    data["easyedit_only"] = True
    cfg = StudyConfig.from_dict(data, base_dir=ROOT / "studies")
    assert "lr_schedule" not in cfg.search.names and cfg.hparams.reproducible_in_easyedit()
    assert StudyConfig.from_dict(cfg.to_dict()).search.names == cfg.search.names  # stored and reloaded
