"""The markdown note stored with every trial, shown by optuna-dashboard beside the trial."""

from __future__ import annotations

from typing import Any

from tuner.hparams import KNOBS, EditHParams
from tuner.metrics.record import SHOWN

FACT_COLUMNS = SHOWN


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trial_note(per_fact: list[dict[str, Any]], hp: EditHParams) -> str:
    """Per-fact metrics and every hyperparameter (one row per knob of ``KNOBS``)."""
    cols = [c for c in FACT_COLUMNS if any(c in m for m in per_fact)]
    n_disabling = sum(bool(m.get("disabling_edit")) for m in per_fact)
    lines = [f"**INFEASIBLE: {n_disabling} disabling edit(s)** — never the best trial.", ""] if n_disabling else []
    lines += ["### Per-fact metrics", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(m.get(c)) for c in cols) + " |" for m in per_fact]
    lines += ["", "### Hyperparameters", ""]
    lines += [f"- `{name}` = {getattr(hp, name)}  <small>{k.help}</small>" for name, k in KNOBS.items()]
    return "\n".join(lines)


def save_trial_note(trial: Any, per_fact: list[dict[str, Any]], hp: EditHParams) -> None:
    from optuna_dashboard import save_note

    save_note(trial, trial_note(per_fact, hp))
