"""The settings every tuned setting is judged against, on the same facts: ROME's textbook
setting, the model family's EasyEdit defaults, and the unedited model.

Their scores on the tuning facts are measured once per study (by the first worker to start; the
edits are deterministic, so any worker measures the same) and stored in the study (user attribute
``references``); the relative guards (``tuner.metrics.scoring.Thresholds``) come from them. The
held-out validation measures them again on its own facts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tuner.hparams import EditHParams, easyedit_preset_name, preset
from tuner.metrics.scoring import Thresholds, score_metrics, score_unedited

REFERENCES = "references"
"""The study user attribute with the references' scores on the tuning facts."""
UNEDITED = "unedited"


def reference_settings(base: EditHParams, family: str, n_layers: int) -> list[tuple[str, EditHParams]]:
    """(label, hyperparameters) of ROME's textbook setting and the family's EasyEdit defaults."""
    name = easyedit_preset_name(family)
    return [("textbook", preset("textbook", base, n_layers=n_layers)), (name, preset(name, base, n_layers=n_layers))]


def edit_metrics(editor: Any, cfg: Any, facts: Sequence[Any], hp: EditHParams, **kwargs: Any) -> list[dict]:
    """Every fact edited with ``hp`` in the study's mode (``disabling_edit`` judged by the
    editor's rule: the study's thresholds, ``StudyConfig.load_model``)."""
    from tuner.edit.modes import run_edits

    return run_edits(editor, facts, hp, cfg.facts.mode, **kwargs)


def measure(editor: Any, cfg: Any, facts: Sequence[Any], family: str) -> dict[str, Any]:
    """The references and the unedited model on ``facts``: rows of label, hyperparameters and
    ``SettingScore`` fields, and the thresholds the relative guards use (so the references are
    feasible against them by construction)."""
    measured = [(label, hp, [r.metrics for r in edit_metrics(editor, cfg, facts, hp)])
                for label, hp in reference_settings(cfg.hparams, family, editor.n_layers)]
    unedited = score_unedited(measured[0][2], cfg.objective)
    thresholds = Thresholds.of([score_metrics(m, cfg.objective) for _, _, m in measured], unedited)
    rows = [{"label": label, "hparams": hp.to_dict(), **score_metrics(m, cfg.objective, thresholds).to_dict()}
            for label, hp, m in measured]
    rows.append({"label": UNEDITED, "hparams": None, **unedited.to_dict()})
    return {"facts": [f.case_id for f in facts], "rows": rows, "thresholds": thresholds.to_dict()}


def ensure(study: Any, cfg: Any, editor: Any, facts: Sequence[Any], family: str) -> Thresholds:
    """The references on the tuning facts, measured once per study; returns the thresholds."""
    record = study.user_attrs.get(REFERENCES)
    if not record or record.get("facts") != [f.case_id for f in facts]:
        record = measure(editor, cfg, facts, family)
        study.set_user_attr(REFERENCES, record)
    return Thresholds.from_dict(record["thresholds"])
