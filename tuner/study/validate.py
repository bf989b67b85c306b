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
from tuner.hparams import EditHParams
from tuner.metrics.scoring import Thresholds, score_metrics, score_unedited
from tuner.study.config import StudyConfig
from tuner.study.export import HOLDOUT, best_trial, ranked_trials
from tuner.study.references import UNEDITED, edit_metrics, reference_settings

log = logging.getLogger(__name__)
COLUMNS = ("value", "efficacy", "paraphrase", "specificity", "S", "final_prob", "rebound", "disabling")
"""Per setting, over the held-out facts: the study's objective, CounterFact's three success rates
and S (their harmonic mean), means of P(new) and the rebound, the count of disabling edits."""


def _reproducible(t: Any) -> bool:
    return EditHParams.from_dict(t.user_attrs["hparams"]).reproducible_in_easyedit()


def top_trials(study: Any, k: int, where: Any = None) -> list[Any]:
    """The ``k`` best complete feasible trials (by the first objective), best first."""
    return ranked_trials(study, where=where)[:k]


def candidates(study: Any, cfg: StudyConfig, top: int, family: str, n_layers: int) -> list[dict[str, Any]]:
    """What is compared: the top trials, the best trials EasyEdit can reproduce (when the top
    ones are not), then the two references every user knows."""
    tuned = top_trials(study, top)
    tuned += [t for t in top_trials(study, max(1, top // 2), where=_reproducible) if t not in tuned]
    out = [{"label": f"trial #{t.number}", "trial": t.number, "tuning_value": t.values[0],
            "hp": EditHParams.from_dict(t.user_attrs["hparams"])} for t in tuned]
    out += [{"label": label, "trial": None, "tuning_value": None, "hp": hp}
            for label, hp in reference_settings(cfg.hparams, family, n_layers)]
    return out


def best_row(rows: list[dict[str, Any]], where: Any = None) -> dict[str, Any] | None:
    """The held-out winner: the feasible setting (tuned or reference) with the highest S,
    ties broken by the study's objective, then by the tuning rank."""
    kept = [r for r in rows if r.get("feasible") and r["label"] != UNEDITED and (where is None or where(r))]
    return max(kept, key=lambda r: (r["S"], r["value"], -rows.index(r))) if kept else None


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
    editor = loaded.editor(progress=progress, disabling=cfg.disabling_rule())
    cands = candidates(study, cfg, top, loaded.adapter.family, editor.n_layers)
    measured = []
    for cand in tqdm(cands, desc=f"held-out validation ({len(facts)} facts)", unit="setting", disable=not progress):
        try:
            measured.append((cand, [r.metrics for r in edit_metrics(editor, cfg, facts, cand["hp"])]))
        except EditError as exc:  # e.g. a non-finite loss: this setting fails here, the others still count
            measured.append((cand, str(exc).splitlines()[0]))
    refs = [m for c, m in measured if c["trial"] is None and not isinstance(m, str)]
    some = next((m for _, m in measured if not isinstance(m, str)), None)
    if some is None:
        raise EditError("every setting failed on the held-out facts")
    unedited = score_unedited(some, cfg.objective)
    thresholds = Thresholds.of([score_metrics(m, cfg.objective) for m in refs], unedited)
    rows = []
    for cand, metrics in measured:
        row = {k: cand[k] for k in ("label", "trial", "tuning_value")}
        row["hparams"] = cand["hp"].to_dict()
        row["easyedit"] = cand["hp"].reproducible_in_easyedit()
        if isinstance(metrics, str):
            row.update({"error": metrics, "feasible": False, "why": "failed"})
        else:
            row.update(score_metrics(metrics, cfg.objective, thresholds).to_dict())
        rows.append(row)
    rows.append({"label": UNEDITED, "trial": None, "tuning_value": None, "hparams": None, "easyedit": False,
                 **unedited.to_dict()})
    winner, twin = best_row(rows), best_row(rows, where=lambda r: r["easyedit"])
    record = {"facts": [f.case_id for f in facts], "top": top, "rows": rows,
              "winner": winner["label"] if winner else None,
              "easyedit_winner": twin["label"] if twin else None,
              "thresholds": thresholds.to_dict(), "fingerprint": loaded.fingerprint}
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


def cells(row: dict[str, Any], record: dict[str, Any]) -> list[str]:
    marks = ("*" if row["label"] == record["winner"] else "") + ("E" if row["label"] == record.get("easyedit_winner")
                                                                  else "")
    label = row["label"] + (f" {marks}" if marks else "")
    if "error" in row:
        return [label, _fmt(row["tuning_value"]), "failed: " + row["error"]] + [""] * (len(COLUMNS) - 1) + ["no", ""]
    return [label, _fmt(row["tuning_value"])] + [_fmt(row.get(c)) for c in COLUMNS] + \
        ["yes" if row["feasible"] else "no", row.get("why") or ""]


HEADER = ("setting", "tuning value", *COLUMNS, "feasible", "why infeasible")


def table(record: dict[str, Any]) -> str:
    """The validation as a fixed-width text table (``*`` the exported setting, ``E`` the one in
    rome_hparams.yaml) and the verdict under it."""
    body = [list(HEADER)] + [cells(r, record) for r in record["rows"]]
    widths = [max(len(row[i]) for row in body) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) if i in (0, len(HEADER) - 1) else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths))).rstrip() for row in body]
    return "\n".join([f"held-out validation on {len(record['facts'])} facts (never tuned on):", *lines,
                      *verdict(record)])


def markdown(record: dict[str, Any]) -> str:
    lines = [f"### Held-out validation on {len(record['facts'])} facts", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cells(r, record)) + " |" for r in record["rows"]]
    return "\n".join(lines + [""] + [f"- {line}" for line in verdict(record)])


def row_of(record: dict[str, Any], label: str | None) -> dict[str, Any] | None:
    return next((r for r in record["rows"] if r["label"] == label), None)


def verdict(record: dict[str, Any]) -> list[str]:
    """Plain lines: what is exported, how it compares with the references, and why."""
    refs = [r for r in record["rows"] if r["trial"] is None and "error" not in r]
    against = ", ".join(f"{r['label']} {r['S']:.2f}" for r in refs)
    win = row_of(record, record["winner"])
    if win is None:
        return ["no setting is feasible on the held-out facts: the export falls back to the best trial on the "
                "tuning facts"]
    lines = [f"* exported: {win['label']} — held-out S {win['S']:.2f} (efficacy {win['efficacy']:.2f}, paraphrase "
             f"{_fmt(win['paraphrase'])}, specificity {_fmt(win['specificity'])}); references: {against}"]
    tuned = [r for r in record["rows"] if r["trial"] is not None]
    if win["trial"] is None:
        lines.append(f"a reference beats every tuned setting on the held-out facts: the export is {win['label']}'s "
                     "setting, not a tuned one")
    elif not tuned:
        lines.append("no tuned setting was feasible")
    twin = row_of(record, record.get("easyedit_winner"))
    if twin is not None and twin["label"] != win["label"]:
        lines.append(f"E rome_hparams.yaml: {twin['label']}, the best setting EasyEdit reproduces (held-out S "
                     f"{twin['S']:.2f}); the exported setting needs rome-tuner (rome_hparams_rome_tuner_only.yaml)")
    for r in record["rows"]:
        if not r.get("feasible") and r["label"] != UNEDITED and r.get("why"):
            lines.append(f"{r['label']} infeasible: {r['why']}")
    return lines
