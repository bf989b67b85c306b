"""Fact records (CounterFact format) and the synthetic fact set the default model learns."""

from tuner.facts.schema import Fact, load_facts

__all__ = ["Fact", "load_facts"]
