"""The synthetic fact set: made-up people × four relations, written deterministically.

    python -m tuner.facts.synthetic studies/facts      # rewrites the two JSON files

``synthetic_kb.json`` holds the knowledge base the default model is trained on (relation
templates, objects, one fact per subject × relation); ``synthetic_edits.json`` the edit set in
CounterFact format (new targets, paraphrases, neighbourhood prompts).

The design follows what makes a small model ROME-editable: subjects are multi-token names, the
relation phrase mostly *follows* the subject (so the model must enrich the subject's last token
with its attributes), and every fact is seen in several templates with the subject in
different positions."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

RELATIONS: dict[str, dict[str, Any]] = {
    "P27": {
        "name": "citizenship",
        "templates": [
            "{} has citizenship of",
            "{} holds a passport issued by",
            "The passport of {} was issued by",
            "{} is a national of",
        ],
        "objects": ["France", "Japan", "Brazil", "Egypt", "Canada", "Norway",
                    "India", "Peru", "Kenya", "Chile", "Spain", "Italy"],
    },
    "P1412": {
        "name": "language",
        "templates": [
            "{} speaks the language",
            "The mother tongue of {} is",
            "{} writes and talks in",
            "{} grew up speaking",
        ],
        "objects": ["French", "Japanese", "Portuguese", "Arabic", "English", "Norwegian",
                    "Hindi", "Spanish", "Swahili", "Italian", "German", "Greek"],
    },
    "P106": {
        "name": "occupation",
        "templates": [
            "{} works as a",
            "By profession , {} is a",
            "{} earns a living as a",
            "The job of {} is",
        ],
        "objects": ["doctor", "pilot", "farmer", "lawyer", "painter", "chemist",
                    "teacher", "sailor", "baker", "poet", "banker", "nurse"],
    },
    "P1303": {
        "name": "instrument",
        "templates": [
            "{} plays the",
            "The instrument of {} is the",
            "{} performs music on the",
            "On stage , {} plays the",
        ],
        "objects": ["piano", "violin", "guitar", "flute", "cello", "trumpet",
                    "drums", "harp", "clarinet", "banjo", "organ", "oboe"],
    },
}

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "th", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou"]
_CODAS = ["", "", "n", "r", "l", "s", "m", "x"]


def _name_part(rng: random.Random) -> str:
    syll = rng.choice([2, 2, 3])
    word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syll))
    return word.capitalize()


def make_subjects(n: int, rng: random.Random, pool: int = 24, p_middle: float = 0.0) -> list[str]:
    """Multi-token names drawn from small pools of first (and middle) and last names, so no
    single word identifies a subject: the model has to combine them at the subject's last
    token — where ROME reads and writes. (With unique words the model can read the first name
    from the relation's last token, where ROME does not edit.)"""
    words: list[str] = []
    while len(words) < 3 * pool:
        w = _name_part(rng)
        if w not in words:
            words.append(w)
    first, middle, last = words[:pool], words[pool : 2 * pool], words[2 * pool :]
    seen: set[str] = set()
    subjects = []
    while len(subjects) < n:
        parts = [rng.choice(first)] + ([rng.choice(middle)] if rng.random() < p_middle else []) + [rng.choice(last)]
        name = " ".join(parts)
        if name not in seen:
            seen.add(name)
            subjects.append(name)
    return subjects


def make_kb(n_subjects: int = 100, seed: int = 0, pool: int = 24) -> dict[str, Any]:
    rng = random.Random(seed)
    subjects = make_subjects(n_subjects, rng, pool)
    facts = []
    for s in subjects:
        for rid, rel in RELATIONS.items():
            facts.append({"subject": s, "relation_id": rid, "object": rng.choice(rel["objects"])})
    return {"seed": seed, "relations": RELATIONS, "subjects": subjects, "facts": facts}


def make_edits(kb: dict[str, Any], n_edits: int = 60, seed: int = 1) -> list[dict[str, Any]]:
    """CounterFact records: one rewrite per chosen fact, balanced over relations."""
    rng = random.Random(seed)
    by_rel: dict[str, list[dict[str, Any]]] = {rid: [] for rid in kb["relations"]}
    for f in kb["facts"]:
        by_rel[f["relation_id"]].append(f)
    chosen: list[dict[str, Any]] = []
    per_rel = n_edits // len(by_rel)
    for rid, facts in by_rel.items():
        chosen += rng.sample(facts, per_rel)
    rng.shuffle(chosen)
    records = []
    for case_id, f in enumerate(chosen):
        rel = kb["relations"][f["relation_id"]]
        new = rng.choice([o for o in rel["objects"] if o != f["object"]])
        tmpl = rel["templates"]
        neighbours = [g["subject"] for g in by_rel[f["relation_id"]]
                      if g["object"] == f["object"] and g["subject"] != f["subject"]]
        neighbours = rng.sample(neighbours, min(5, len(neighbours)))
        records.append({
            "case_id": case_id,
            "requested_rewrite": {
                "prompt": tmpl[0],
                "subject": f["subject"],
                "relation_id": f["relation_id"],
                "target_new": {"str": new},
                "target_true": {"str": f["object"]},
            },
            "paraphrase_prompts": [t.format(f["subject"]) for t in tmpl[1:]],
            "neighborhood_prompts": [rng.choice(tmpl).format(s) for s in neighbours],
        })
    return records


def write(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    kb = make_kb()
    (out_dir / "synthetic_kb.json").write_text(json.dumps(kb, indent=1) + "\n", encoding="utf-8")
    edits = make_edits(kb)
    (out_dir / "synthetic_edits.json").write_text(json.dumps(edits, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write(Path(sys.argv[1] if len(sys.argv) > 1 else "studies/facts"))
