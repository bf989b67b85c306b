"""CounterFact-compatible fact records and a loader that rejects bad ones with the record's
index and the reason.

    {"case_id": 0,
     "requested_rewrite": {"prompt": "{} is a citizen of", "subject": "Varn Kelodi",
                           "relation_id": "P27", "target_new": {"str": "Japan"},
                           "target_true": {"str": "France"}},
     "paraphrase_prompts": [...], "neighborhood_prompts": [...]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.errors import FactError


@dataclass(frozen=True)
class Fact:
    case_id: int
    prompt: str  # contains "{}" where the subject goes
    subject: str
    target_new: str
    target_true: str
    relation_id: str = ""
    paraphrase_prompts: tuple[str, ...] = ()  # subject already filled in
    neighborhood_prompts: tuple[str, ...] = ()  # other subjects whose true answer is target_true
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def rewrite_prompt(self) -> str:
        return self.prompt.format(self.subject)

    def to_record(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "requested_rewrite": {
                "prompt": self.prompt,
                "subject": self.subject,
                "relation_id": self.relation_id,
                "target_new": {"str": self.target_new},
                "target_true": {"str": self.target_true},
            },
            "paraphrase_prompts": list(self.paraphrase_prompts),
            "neighborhood_prompts": list(self.neighborhood_prompts),
            **self.extra,
        }


def _text(obj: Any) -> str:
    if isinstance(obj, dict):
        obj = obj.get("str")
    return obj if isinstance(obj, str) else ""


def parse_record(rec: Any, index: int) -> Fact:
    where = f"fact record {index}"
    if not isinstance(rec, dict):
        raise FactError(f"{where}: expected an object, got {type(rec).__name__}")
    rw = rec.get("requested_rewrite")
    if isinstance(rw, list) and len(rw) == 1:  # some CounterFact dumps wrap it in a list
        rw = rw[0]
    if not isinstance(rw, dict):
        raise FactError(f"{where}: missing 'requested_rewrite'")
    prompt, subject = rw.get("prompt"), rw.get("subject")
    if not isinstance(subject, str) or not subject.strip():
        raise FactError(f"{where}: subject missing or empty")
    if not isinstance(prompt, str) or not prompt.strip():
        raise FactError(f"{where}: prompt missing or empty")
    if "{}" not in prompt and subject in prompt:
        prompt = prompt.replace(subject, "{}", 1)  # a prompt given with the subject filled in
    if prompt.count("{}") != 1:
        if "{}" not in prompt:
            raise FactError(f"{where}: subject {subject!r} not in prompt {prompt!r} (and no '{{}}' placeholder)")
        raise FactError(f"{where}: prompt must contain exactly one '{{}}' for the subject, got {prompt!r}")
    new, true = _text(rw.get("target_new")), _text(rw.get("target_true"))
    if not new.strip():
        raise FactError(f"{where}: target_new is empty")
    if not true.strip():
        raise FactError(f"{where}: target_true is empty")
    if new.strip() == true.strip():
        raise FactError(f"{where}: target_new equals target_true ({new!r})")
    lists = {}
    for key in ("paraphrase_prompts", "neighborhood_prompts"):
        value = rec.get(key, [])
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            raise FactError(f"{where}: {key} must be a list of strings")
        lists[key] = tuple(value)
    extra = {k: v for k, v in rec.items() if k not in ("case_id", "requested_rewrite", *lists)}
    return Fact(
        case_id=int(rec.get("case_id", index)),
        prompt=prompt,
        subject=subject,
        target_new=new.strip(),
        target_true=true.strip(),
        relation_id=str(rw.get("relation_id", "")),
        extra=extra,
        **lists,
    )


def load_facts(path: str | Path) -> list[Fact]:
    path = Path(path)
    if not path.is_file():
        raise FactError(f"fact file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FactError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if isinstance(data, dict) and "facts" in data:
        data = data["facts"]
    if not isinstance(data, list):
        raise FactError(f"{path}: expected a list of fact records")
    if not data:
        raise FactError(f"{path}: the fact file is empty")
    return [parse_record(rec, i) for i, rec in enumerate(data)]
