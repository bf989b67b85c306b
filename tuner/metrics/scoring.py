"""How a setting is scored over facts — one path for the objective, the references, the held-out
validation and ``tuner edit``.

The default objective (``objective.kind: edit``) is anchored on ROME's CounterFact score S, the
harmonic mean of efficacy, paraphrase and neighbourhood success, so that a setting wins only by
editing the fact, generalising it and leaving its neighbours alone — all three at once:

    e = ½·[P(new) > P(true)]          + ½·max(0, P(new) − λ·rebound)           rewrite prompt
    p = ½·share[P(new) > P(true)]      + ½·mean P(new)                           paraphrase prompts
    n = ½·share[P(true) > P(new)]      + ½·mean min(1, P_after(true)/P_before(true))   neighbour prompts
    value = HM(mean e, mean p, mean n) = 3 / (1/E + 1/P + 1/N)        (0 when any term is 0)

Every term is on one probability definition: the sequence probability of the target after the
prompt in the edited model (success compares new and true by their per-token mean
log-probability, as CounterFact does; for single-token targets the two agree). The first half of
each term is CounterFact's success measure (so the value tracks S); the second half is its
probability (so the search sees progress before a fact flips). The stability term of the mission
— final probability minus λ times the rebound of the v* trajectory — is ``e``'s probability.
A non-edit scores near 0 (E ≈ 0), an edit that breaks its neighbours scores low (N small), a
stable, effective, local edit scores high. ``objective.kind: stability`` gives back the plain
mission objective, final_prob − λ·rebound (+ the optional paraphrase/neighbourhood weights).

Feasibility (Optuna constraints, every value ≤ 0 means feasible) is measured against the model's
own references — ROME's textbook setting and the family's EasyEdit defaults on the same facts —
so the references are always feasible and the tuner can always return one of them:

- ``disabling_edits``: more disabling edits than the worse reference;
- ``specificity``: mean neighbourhood success more than ``objective.specificity_margin`` below
  the worse reference's;
- ``specificity_drop``: the absolute guard, only when ``objective.max_specificity_drop`` is set
  (more than that below the unedited model);
- ``non_edit``: efficacy not above the unedited model's (a setting that edits nothing is never
  the best)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

RESOLUTION = 4
"""Decimals of a setting's value: what a measurement over a few facts resolves. Rounding keeps
float noise below it (another thread count, another BLAS) from steering the sampler, so one
worker with the same config and seed runs the same trials."""
CONSTRAINT_NAMES = ("disabling_edits", "specificity", "specificity_drop", "non_edit")
"""Optuna's convention: a trial is feasible when every value is ≤ 0."""
WHY = {"disabling_edits": "disabling edits", "specificity": "specificity below the references",
       "specificity_drop": "specificity drop beyond the absolute guard", "non_edit": "no edit (efficacy not above "
       "the unedited model's)"}


def harmonic_mean(values: Sequence[float]) -> float:
    """The harmonic mean of non-negative numbers; 0 when any of them is 0 (as CounterFact's S)."""
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def fact_terms(m: dict[str, Any], rebound_penalty: float) -> tuple[float, float, float]:
    """(e, p, n) of one edit: efficacy, paraphrase and neighbourhood terms, each in [0, 1]."""
    stab = max(0.0, m["final_prob"] - rebound_penalty * m["rebound"])
    e = 0.5 * m["efficacy"] + 0.5 * min(1.0, stab)
    p = 1.0 if m.get("paraphrase") is None else 0.5 * m["paraphrase"] + 0.5 * m["paraphrase_prob"]
    n = 1.0 if m.get("specificity") is None else 0.5 * m["specificity"] + 0.5 * m["neighborhood_keep"]
    return e, p, n


def unedited_terms(m: dict[str, Any]) -> tuple[float, float, float]:
    """(e, p, n) of the unedited model on the same fact (its ``_pre`` measures)."""
    e = 0.5 * m["efficacy_pre"] + 0.5 * min(1.0, m["pre_prob"])
    p = 1.0 if m.get("paraphrase_pre") is None else 0.5 * m["paraphrase_pre"] + 0.5 * m["paraphrase_prob_pre"]
    n = 1.0 if m.get("specificity_pre") is None else 0.5 * m["specificity_pre"] + 0.5
    return e, p, n


def stability_value(m: dict[str, Any], obj: Any) -> float:
    """final_prob − λ·rebound [+ w_p·paraphrase_prob + w_n·(specificity − 1)]: the plain mission
    objective (``objective.kind: stability``) and the first objective of the multi-objective mode."""
    s = m["final_prob"] - obj.rebound_penalty * m["rebound"]
    if obj.paraphrase_weight and m.get("paraphrase_prob") is not None:
        s += obj.paraphrase_weight * m["paraphrase_prob"]
    if obj.neighborhood_weight and m.get("specificity") is not None:
        s += obj.neighborhood_weight * (m["specificity"] - 1.0)
    return s


@dataclass(frozen=True)
class Thresholds:
    """What the relative guards compare with: the references on the same facts."""

    max_disabling: int = 0
    """The most disabling edits a reference made."""
    min_specificity: float | None = None
    """The lowest mean neighbourhood success of a reference."""
    unedited_efficacy: float = 0.0
    """The unedited model's efficacy on these facts."""

    @classmethod
    def of(cls, references: Sequence[SettingScore], unedited: SettingScore) -> Thresholds:
        specs = [r.specificity for r in references if r.specificity is not None]
        return cls(max_disabling=max((r.disabling for r in references), default=0),
                   min_specificity=min(specs) if specs else None, unedited_efficacy=unedited.efficacy)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Thresholds:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


@dataclass(frozen=True)
class SettingScore:
    """One setting's measures averaged over facts, its value and its feasibility."""

    value: float
    efficacy: float
    paraphrase: float | None
    specificity: float | None
    S: float
    """CounterFact's score: harmonic mean of efficacy, paraphrase and specificity (success rates)."""
    final_prob: float
    rebound: float
    disabling: int
    n_facts: int
    constraints: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
    terms: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """(E, P, N) of the default objective."""
    specificity_pre: float | None = None

    @property
    def feasible(self) -> bool:
        return all(c <= 0 for c in self.constraints)

    @property
    def why(self) -> str:
        """Why infeasible, in words ('' when feasible)."""
        return "; ".join(WHY[name] for name, c in zip(CONSTRAINT_NAMES, self.constraints) if c > 0)

    def to_dict(self) -> dict[str, Any]:
        d = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}
        d["constraints"] = [round(c, 6) for c in self.constraints]
        d["terms"] = [round(t, 5) for t in self.terms]
        d["feasible"], d["why"] = self.feasible, self.why
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SettingScore:
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in fields}
        kw["constraints"], kw["terms"] = tuple(kw.get("constraints", ())), tuple(kw.get("terms", (0.0, 0.0, 0.0)))
        return cls(**kw)


def counterfact_s(efficacy: float, paraphrase: float | None, specificity: float | None) -> float:
    return harmonic_mean([x for x in (efficacy, paraphrase, specificity) if x is not None])


def constraints(metrics: Sequence[dict[str, Any]], obj: Any, refs: Thresholds | None) -> tuple[float, ...]:
    """The four constraint values (``CONSTRAINT_NAMES``) of a setting's per-fact metrics."""
    n = len(metrics)
    disabling = sum(bool(m.get("disabling_edit")) for m in metrics)
    spec = _mean([m.get("specificity") for m in metrics])
    efficacy = sum(m["efficacy"] for m in metrics) / n
    relative = 0.0
    c_disabling = float(disabling - (refs.max_disabling if refs else 0))
    if refs is not None and obj.specificity_margin is not None and refs.min_specificity is not None and spec is not None:
        relative = round(refs.min_specificity - obj.specificity_margin - spec, 6)
    absolute = 0.0
    pairs = [(m["specificity_pre"], m["specificity"]) for m in metrics
             if m.get("specificity_pre") is not None and m.get("specificity") is not None]
    if obj.max_specificity_drop is not None and pairs:
        drop = sum(pre - post for pre, post in pairs) / len(pairs)
        absolute = round(drop - obj.max_specificity_drop, 6)
    # efficacy must beat the unedited model's by at least one fact: +½ fact when it does not
    unedited = refs.unedited_efficacy if refs else sum(m.get("efficacy_pre", 0.0) for m in metrics) / n
    non_edit = round(unedited - efficacy + 0.5 / n, 6)
    return (c_disabling, relative, absolute, non_edit)


def score_metrics(metrics: Sequence[dict[str, Any]], obj: Any, refs: Thresholds | None = None) -> SettingScore:
    """A setting's ``SettingScore`` from its per-fact metrics (``Editor`` results' ``metrics``,
    ``disabling_edit`` already set with the study's thresholds)."""
    n = len(metrics)
    terms = [fact_terms(m, obj.rebound_penalty) for m in metrics]
    E, P, N = (sum(t[i] for t in terms) / n for i in range(3))
    if obj.kind == "edit":
        value = harmonic_mean([E, P, N])
    else:
        value = sum(stability_value(m, obj) for m in metrics) / n
    efficacy = sum(m["efficacy"] for m in metrics) / n
    paraphrase, spec = _mean([m.get("paraphrase") for m in metrics]), _mean([m.get("specificity") for m in metrics])
    return SettingScore(
        value=round(value, RESOLUTION), efficacy=efficacy, paraphrase=paraphrase, specificity=spec,
        S=counterfact_s(efficacy, paraphrase, spec), final_prob=sum(m["final_prob"] for m in metrics) / n,
        rebound=sum(m["rebound"] for m in metrics) / n, disabling=sum(bool(m.get("disabling_edit")) for m in metrics),
        n_facts=n, constraints=constraints(metrics, obj, refs), terms=(E, P, N),
        specificity_pre=_mean([m.get("specificity_pre") for m in metrics]))


def score_unedited(metrics: Sequence[dict[str, Any]], obj: Any) -> SettingScore:
    """The unedited model as a setting, from the ``_pre`` measures of any edits of the same facts."""
    n = len(metrics)
    terms = [unedited_terms(m) for m in metrics]
    E, P, N = (sum(t[i] for t in terms) / n for i in range(3))
    efficacy = sum(m["efficacy_pre"] for m in metrics) / n
    paraphrase = _mean([m.get("paraphrase_pre") for m in metrics])
    spec = _mean([m.get("specificity_pre") for m in metrics])
    value = harmonic_mean([E, P, N]) if obj.kind == "edit" else sum(min(1.0, m["pre_prob"]) for m in metrics) / n
    non_edit = 0.5 / n  # it never beats itself
    return SettingScore(value=value, efficacy=efficacy, paraphrase=paraphrase, specificity=spec,
                        S=counterfact_s(efficacy, paraphrase, spec),
                        final_prob=sum(m["pre_prob"] for m in metrics) / n, rebound=0.0, disabling=0, n_facts=n,
                        constraints=(0.0, 0.0, 0.0, non_edit), terms=(E, P, N), specificity_pre=spec)
