"""The study's answer in words: the best trial against the references on the tuning facts, and
the efficacy–specificity trade-off of the completed trials (its Pareto front and knee).

Used by the launch summary, ``tuner status`` and the report; the held-out verdict is
``tuner.study.validate.verdict``."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tuner.study.references import REFERENCES, UNEDITED

COLUMNS = ("value", "efficacy", "paraphrase", "specificity", "S")


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def scored_trials(study: Any) -> list[Any]:
    """Complete trials carrying their ``score`` record (``tuner.metrics.scoring.SettingScore``)."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "score" in t.user_attrs]


def infeasible_reasons(study: Any) -> Counter:
    """How many complete trials are infeasible, by reason."""
    out: Counter = Counter()
    for t in scored_trials(study):
        for reason in filter(None, (t.user_attrs["score"].get("why") or "").split("; ")):
            out[reason] += 1
    return out


def tuning_rows(study: Any, best: Any | None) -> list[dict[str, Any]]:
    """The best trial and the references (textbook, EasyEdit, unedited) on the tuning facts."""
    rows = []
    if best is not None and "score" in best.user_attrs:
        rows.append({"label": f"best trial #{best.number}", **best.user_attrs["score"]})
    record = study.user_attrs.get(REFERENCES) or {}
    rows += record.get("rows", [])
    return rows


def rows_table(rows: list[dict[str, Any]], title: str) -> str:
    header = ["setting", *COLUMNS, "feasible", "why infeasible"]
    body = [header] + [[r["label"], *(_fmt(r.get(c)) for c in COLUMNS),
                        "-" if r["label"] == UNEDITED else ("yes" if r.get("feasible") else "no"), r.get("why") or ""]
                       for r in rows]
    widths = [max(len(row[i]) for row in body) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i in (0, len(header) - 1) else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths))).rstrip() for row in body]
    return "\n".join([title, *lines])


def pareto_front(study: Any) -> list[Any]:
    """Complete trials no other complete trial beats on both mean efficacy and mean specificity,
    by efficacy."""
    pts = [(t, t.user_attrs["score"]["efficacy"], t.user_attrs["score"].get("specificity") or 0.0)
           for t in scored_trials(study)]
    front = [(t, e, s) for t, e, s in pts
             if not any((e2 >= e and s2 >= s) and (e2 > e or s2 > s) for _, e2, s2 in pts)]
    seen, out = set(), []
    for t, e, s in sorted(front, key=lambda x: (x[1], -x[2], x[0].number)):
        if (e, s) not in seen:  # one trial per point
            seen.add((e, s))
            out.append(t)
    return out


def knee(front: list[Any]) -> Any | None:
    """The front's knee: the point farthest from the line joining its two ends (axes scaled to
    the front's range); with fewer than three points, the one with the higher harmonic mean."""
    if not front:
        return None
    pts = [(t.user_attrs["score"]["efficacy"], t.user_attrs["score"].get("specificity") or 0.0) for t in front]
    if len(front) < 3:
        return max(front, key=lambda t: t.user_attrs["score"]["S"])
    (e0, s0), (e1, s1) = pts[0], pts[-1]
    de, ds = (e1 - e0) or 1.0, (s0 - s1) or 1.0

    def distance(p: tuple[float, float]) -> float:
        x, y = (p[0] - e0) / de, (p[1] - s1) / ds  # the ends map to (0, 1) and (1, 0)
        return (x + y - 1) / 2 ** 0.5

    return front[max(range(len(front)), key=lambda i: distance(pts[i]))]


def trade_off_line(study: Any) -> str | None:
    """One line on the efficacy–specificity trade-off, or None when no trial is scored."""
    front = pareto_front(study)
    k = knee(front)
    if k is None:
        return None
    s = k.user_attrs["score"]
    line = (f"efficacy–specificity trade-off: {len(front)} trial(s) on the Pareto front; knee trial #{k.number} "
            f"(efficacy {s['efficacy']:.2f}, specificity {_fmt(s.get('specificity'))}, S {s['S']:.2f})")
    if len(front) > 1:
        line += "; ends " + ", ".join(f"#{t.number} (efficacy {t.user_attrs['score']['efficacy']:.2f}, specificity "
                                      f"{_fmt(t.user_attrs['score'].get('specificity'))})" for t in (front[0], front[-1]))
    return line


def bounds_line(study: Any, cfg: Any, trial: Any) -> str | None:
    """A warning when ``trial`` (the best) sits on a bound of the search space, or None."""
    from tuner.study.setup import bound_space

    hits = bound_space(cfg).on_bounds(dict(trial.params))
    if not hits:
        return None
    where = ", ".join(f"{name} {trial.params[name]:.4g} (search.{name}.{side} = {bound:g})" for name, side, bound in hits)
    return (f"warning: the best trial sits on a bound of the search space: {where}; the optimum may lie beyond. "
            f"Continue in a widened space: the same tuner launch with --widen-bounds (study "
            f"{study.study_name}-wide, warm-started from this one)")
