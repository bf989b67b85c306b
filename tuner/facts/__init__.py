"""Fact records (CounterFact format), the synthetic fact set the default model learns, and the
seeded subset a study edits."""

from tuner.facts.schema import Fact, load_facts
from tuner.facts.selection import FactSpec, select_facts

__all__ = ["Fact", "FactSpec", "load_facts", "select_facts"]
