"""The training corpus of the default model, built from the synthetic knowledge base.

Every fact is written in all its relation's templates; sentences are packed three to a
document in a seeded order, so the model also learns to answer after unrelated text (which is
what ROME's context templates put before the prompt)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

TYPE_SENTENCE = "{} is a person ."


def load_kb(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def fact_sentences(kb: dict[str, Any]) -> list[str]:
    out = []
    attributes: dict[str, list[str]] = {}
    for f in kb["facts"]:
        attributes.setdefault(f["subject"], []).append(f["object"])
        for tmpl in kb["relations"][f["relation_id"]]["templates"]:
            out.append(f"{tmpl.format(f['subject'])} {f['object']} .")
    out += [TYPE_SENTENCE.format(s) for s in kb["subjects"]]
    # Profiles: the subject followed directly by its attributes, once starting with each. The
    # token after the subject then depends on who the subject is, so the model must gather the
    # subject's attributes at its last token (as real LMs do) rather than look them up later
    # from the relation's last token, which ROME cannot edit.
    for subject, objs in attributes.items():
        for i in range(len(objs)):
            out.append(" ".join([subject, *objs[i:], *objs[:i], "."]))
    return out


def documents(sentences: list[str], rng: random.Random, per_doc: int = 3) -> list[str]:
    order = list(sentences)
    rng.shuffle(order)
    return [" ".join(order[i : i + per_doc]) for i in range(0, len(order), per_doc)]


def probes(kb: dict[str, Any]) -> list[tuple[str, str]]:
    """(prompt, answer) for every fact × template: the accuracy check."""
    return [
        (tmpl.format(f["subject"]), f["object"])
        for f in kb["facts"]
        for tmpl in kb["relations"][f["relation_id"]]["templates"]
    ]
