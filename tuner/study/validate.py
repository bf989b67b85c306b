"""Held-out validation: do the tuned hyperparameters generalise to facts they were not tuned on?

    tuner validate --study default [--top 5]

The study's top-K feasible trials, ROME's textbook setting and the model family's EasyEdit
defaults each edit the held-out facts (``facts.holdout``: seeded, disjoint from the tuning
facts) and are scored with the study's own objective and constraints. The result is stored in
the study (user attribute ``holdout``), printed as a table, shown in the report and as the
study's note in optuna-dashboard. The exported "best" is the best of the top-K on these facts
(``winner``), so a setting that only fits the tuning facts is not exported.

``tuner launch`` runs this at the end of a study whose YAML sets ``facts.holdout``."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from tqdm.auto import tqdm

from tuner.errors import ConfigError, EditError
from tuner.rome.hparams import ROMEHyperParams, easyedit_preset_name, preset
from tuner.study.config import StudyConfig
from tuner.study.export import HOLDOUT, best_trial

log = logging.getLogger(__name__)
COLUMNS = ("score", "efficacy", "final_prob", "paraphrase", "specificity", "specificity_pre", "rebound", "disabling")
"""Per setting, means over the held-out facts (``disabling``: how many edits were disabling)."""


def top_trials(study: Any, k: int) -> list[Any]:
    """The ``k`` best complete feasible trials (by the first objective), best first."""
    from optuna.trial import TrialState

    from tuner.study.objective import feasible

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if feasible(t)]
    sign = 1 if study.directions[0].name == "MAXIMIZE" else -1
    return sorted(done, key=lambda t: (-sign * t.values[0], t.number))[:k]


def candidates(study: Any, cfg: StudyConfig, top: int, family: str, n_layers: int) -> list[dict[str, Any]]:
    """What is compared: the top trials, then the two references every user knows."""
    out = [{"label": f"trial #{t.number}", "trial": t.number, "rank": i + 1, "tuning_value": t.values[0],
            "hp": ROMEHyperParams.from_dict(t.user_attrs["hparams"])} for i, t in enumerate(top_trials(study, top))]
    out.append({"label": "textbook", "trial": None, "rank": None, "tuning_value": None,
                "hp": preset("textbook", cfg.hparams, n_layers=n_layers)})
    name = easyedit_preset_name(family)
    out.append({"label": name, "trial": None, "rank": None, "tuning_value": None,
                "hp": preset(name, cfg.hparams, n_layers=n_layers)})
    return out


def score_setting(editor: Any, cfg: StudyConfig, facts: list[Any], hp: ROMEHyperParams) -> dict[str, Any]:
    """One setting on the held-out facts: the study's objective, its constraints, the means."""
    from tuner.rome.modes import run_edits
    from tuner.study.objective import disabling, fact_score, specificity_violation

    metrics = [r.metrics for r in run_edits(editor, facts, hp, cfg.facts.mode)]
    for m in metrics:
        m["disabling_edit"] = disabling(m, cfg.objective)
    n = len(metrics)

    def mean(key: str) -> float | None:
        values = [m[key] for m in metrics if m.get(key) is not None]
        return round(sum(values) / len(values), 5) if values else None

    row = {key: mean(key) for key in COLUMNS if key not in ("score", "disabling")}
    row["score"] = round(sum(fact_score(m, cfg.objective) for m in metrics) / n, 5)
    row["disabling"] = sum(bool(m["disabling_edit"]) for m in metrics)
    row["feasible"] = row["disabling"] == 0 and specificity_violation(metrics, cfg.objective) <= 0
    return row


def run_validation(study: Any, cfg: StudyConfig, *, top: int = 5, holdout: int | None = None,
                   device: str | None = None, progress: bool = True, loaded: Any = None) -> dict[str, Any]:
    """Validate and store the result in the study; returns the stored record."""
    if top < 1:
        raise ConfigError(f"--top must be >= 1, got {top}")
    if holdout is not None:
        if holdout < 1:
            raise ConfigError(f"--holdout must be >= 1, got {holdout}")
        cfg = cfg.replace(facts=dataclasses.replace(cfg.facts, holdout=holdout))
    if cfg.facts.holdout < 1:
        raise ConfigError(f"study {study.study_name!r} has no held-out facts: pass --holdout N, or set "
                          "facts.holdout in the study YAML of a new study")
    facts = cfg.select_holdout()
    best_trial(study)  # a study with nothing to validate says so before any model is loaded
    loaded = loaded or cfg.load_model(device=device, progress=progress)
    editor = loaded.editor(progress=progress)
    rows = []
    cands = candidates(study, cfg, top, loaded.adapter.family, editor.n_layers)
    for cand in tqdm(cands, desc=f"held-out validation ({len(facts)} facts)", unit="setting", disable=not progress):
        row = {k: cand[k] for k in ("label", "trial", "rank", "tuning_value")}
        row["hparams"] = cand["hp"].to_dict()
        try:
            row.update(score_setting(editor, cfg, facts, cand["hp"]))
        except EditError as exc:  # e.g. a non-finite loss: this setting fails here, the others still count
            row.update({"error": str(exc).splitlines()[0], "feasible": False})
        rows.append(row)
    tuned = [r for r in rows if r["trial"] is not None and r.get("feasible")]
    winner = max(tuned, key=lambda r: (r["score"], -r["rank"]))["trial"] if tuned else None
    record = {"facts": [f.case_id for f in facts], "top": top, "rows": rows, "winner": winner,
              "fingerprint": loaded.fingerprint}
    study.set_user_attr(HOLDOUT, record)
    try:
        from optuna_dashboard import save_note

        save_note(study, markdown(record))
    except ImportError:  # the dashboard is optional: the attribute and the report still show it
        pass
    return record


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def cells(row: dict[str, Any], winner: int | None) -> list[str]:
    label = row["label"] + (" *" if row["trial"] is not None and row["trial"] == winner else "")
    if "error" in row:
        return [label, _fmt(row["tuning_value"]), "failed: " + row["error"]] + [""] * (len(COLUMNS) - 1) + ["no"]
    return [label, _fmt(row["tuning_value"])] + [_fmt(row.get(c)) for c in COLUMNS] + \
        ["yes" if row["feasible"] else "no"]


HEADER = ("setting", "tuning value", *COLUMNS, "feasible")


def table(record: dict[str, Any]) -> str:
    """The validation as a fixed-width text table (``*`` marks the exported setting)."""
    body = [list(HEADER)] + [cells(r, record["winner"]) for r in record["rows"]]
    widths = [max(len(row[i]) for row in body) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in body]
    return "\n".join([f"held-out validation on {len(record['facts'])} facts (never tuned on):", *lines, footer(record)])


def markdown(record: dict[str, Any]) -> str:
    lines = [f"### Held-out validation on {len(record['facts'])} facts", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cells(r, record["winner"])) + " |" for r in record["rows"]]
    return "\n".join(lines + ["", footer(record)])


def footer(record: dict[str, Any]) -> str:
    if record["winner"] is None:
        return "no top trial is feasible on the held-out facts: the export falls back to the best tuning trial"
    return (f"* exported: trial #{record['winner']}, the best of the top {record['top']} trials on the held-out "
            "facts (score = the study's objective per fact, averaged)")
