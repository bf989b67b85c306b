"""A study's trials as plain rows, the one place that reads trial attributes for the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class Row:
    number: int
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    value: float | None
    params: dict[str, Any]
    mean: dict[str, float]
    trajectory: list[dict[str, list[float]]]
    worker: str
    start: datetime | None
    end: datetime | None
    per_fact: list[dict[str, Any]] = field(default_factory=list)
    feasible: bool = True
    """No disabling edit and no specificity drop beyond the guard; an infeasible trial is never
    the best one."""
    hparams: dict[str, Any] = field(default_factory=dict)
    mode: str = "independent"

    @property
    def setting(self) -> str:
        """Method, window and edit mode, as every figure's hover shows them."""
        method = self.hparams.get("method", "rome")
        layer = self.hparams.get("layer")
        where = (f"layer {layer}" if method == "rome" else
                 f"layers {layer}-{layer + self.hparams.get('window_size', 1) - 1}" if layer is not None else "")
        return f"{method} {where}, {self.mode}".replace(" ,", ",")

    def metric(self, name: str) -> float | None:
        if name == "value":
            return self.value
        return self.mean.get(name)

    def mean_curve(self, key: str) -> list[float]:
        """Per-step mean over facts of ``prob`` or ``loss``; a fact that stopped early keeps its
        last value for the remaining steps (its δ no longer changes)."""
        curves = [t[key] for t in self.trajectory if t.get(key)]
        if not curves:
            return []
        n = max(len(c) for c in curves)
        return [sum(c[min(i, len(c) - 1)] for c in curves) / len(curves) for i in range(n)]


def rows(study: Any) -> list[Row]:
    from tuner.study.objective import feasible

    mode = study.user_attrs.get("config", {}).get("facts", {}).get("mode", "independent")
    out = []
    for t in study.get_trials(deepcopy=False):
        w = t.user_attrs.get("worker")
        out.append(Row(
            number=t.number,
            state=t.state.name,
            value=t.values[0] if t.values else None,
            params=dict(t.params),
            mean=dict(t.user_attrs.get("mean", {})),
            trajectory=list(t.user_attrs.get("trajectory", [])),
            worker=f"{w['host']}:{w['pid']} ({w['device']})" if w else "unknown",
            start=t.datetime_start,
            end=t.datetime_complete,
            per_fact=list(t.user_attrs.get("per_fact", [])),
            feasible=feasible(t),
            hparams=dict(t.user_attrs.get("hparams", {})),
            mode=mode,
        ))
    return out


def complete(rs: list[Row]) -> list[Row]:
    return [r for r in rs if r.state == "COMPLETE" and r.value is not None]


def complete_feasible(rs: list[Row]) -> list[Row]:
    return [r for r in complete(rs) if r.feasible]
