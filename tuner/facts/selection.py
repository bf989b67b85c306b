"""Which facts a study edits: a fixed, seeded subset of a fact file, the same for every trial
and every worker."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from tuner.errors import ConfigError
from tuner.facts.schema import Fact, load_facts


@dataclass(frozen=True)
class FactSpec:
    path: str = "facts/synthetic_edits.json"
    per_trial: int = 8
    """How many facts each trial edits: a fixed, seeded subset, the same for every trial."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.per_trial < 1:
            raise ConfigError(f"facts.per_trial must be >= 1, got {self.per_trial}")


def select_facts(spec: FactSpec, path: Path) -> list[Fact]:
    """``spec.per_trial`` facts of the file at ``path`` (``spec.path`` resolved), drawn with ``spec.seed``."""
    facts = load_facts(path)
    if spec.per_trial > len(facts):
        raise ConfigError(f"facts.per_trial {spec.per_trial} exceeds the {len(facts)} facts in {spec.path}")
    idx = random.Random(spec.seed).sample(range(len(facts)), spec.per_trial)
    return [facts[i] for i in idx]
