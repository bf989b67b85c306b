"""Which facts a study edits: a fixed, seeded subset of a fact file, the same for every trial
and every worker; and the held-out facts its best settings are validated on, disjoint from them.

    tuner validate --study default      # the top trials on the held-out facts"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tuner.errors import ConfigError
from tuner.facts.schema import Fact, load_facts


@dataclass(frozen=True)
class FactSpec:
    path: str = "facts/synthetic_edits.json"
    per_trial: int = 8
    """How many facts each trial edits: a fixed, seeded subset, the same for every trial."""
    seed: int = 0
    holdout: int = 0
    """Facts never tuned on (seeded, disjoint from the tuning facts): the top trials, ROME's
    textbook setting and EasyEdit's defaults are compared on them (``tuner validate``)."""

    mode: Literal["independent", "batch", "sequential"] = "independent"
    """How a trial's facts are written (``tuner.edit.modes``): each alone on the original model,
    all at once, or one after another with every fact scored again at the end."""

    def __post_init__(self) -> None:
        if self.per_trial < 1:
            raise ConfigError(f"facts.per_trial must be >= 1, got {self.per_trial}")
        if self.holdout < 0:
            raise ConfigError(f"facts.holdout must be >= 0, got {self.holdout}")


def select_facts(spec: FactSpec, path: Path) -> list[Fact]:
    """``spec.per_trial`` facts of the file at ``path`` (``spec.path`` resolved), drawn with ``spec.seed``."""
    facts = load_facts(path)
    return [facts[i] for i in _tuning(spec, len(facts))]


def _tuning(spec: FactSpec, n: int) -> list[int]:
    if spec.per_trial > n:
        raise ConfigError(f"facts.per_trial {spec.per_trial} exceeds the {n} facts in {spec.path}")
    if spec.per_trial + spec.holdout > n:
        raise ConfigError(f"facts.per_trial {spec.per_trial} + facts.holdout {spec.holdout} exceed the {n} facts "
                          f"in {spec.path}")
    return random.Random(spec.seed).sample(range(n), spec.per_trial)


def select_holdout(spec: FactSpec, path: Path) -> list[Fact]:
    """``spec.holdout`` facts none of the tuning facts, drawn from the rest with their own seeded
    generator (so adding a hold-out set leaves the tuning facts as they were)."""
    facts = load_facts(path)
    tuning = set(_tuning(spec, len(facts)))
    rest = [i for i in range(len(facts)) if i not in tuning]
    idx = random.Random(f"holdout-{spec.seed}").sample(rest, spec.holdout)
    return [facts[i] for i in idx]
