"""Small models the default study was never tuned on, where ROME's edits cost their neighbours:
2 layers, width 64, trained on 200 facts of their own (50 made-up people × 4 relations), edited
at layer 0 or 1. One runs the ChatGLM3-interface code (sequence-first, left-padded,
``trust_remote_code``), one is a plain ``LlamaForCausalLM``. Used by ``tests/study/test_objective.py``
and ``bench/objective.py``.

    from tests.testbed import build_testbed
    study_yaml = build_testbed(Path("/tmp/bed"), "chatglm")   # trains once (~20 s), then cached

Each bed is a directory: the checkpoint, ``corpus.txt`` (statistics), ``kb.json``, ``edits.json``
(40 CounterFact records) and ``study.yaml`` — the default study's search and objective over this
model: 12 tuning facts, 25 held-out facts, layers 0–1, steps 5–100."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

ARCHES = ("chatglm", "llama")
KB_SEED, EDITS_SEED, N_SUBJECTS, N_EDITS = 11, 12, 50, 40
LAST_NAMES = 2
"""Few family names: subjects sharing one have near keys at the subject's last token, so an
edit there reaches their facts too (the neighbourhood a real model's edits disturb)."""
WIDTH = dict(n_layers=2, d_model=64, d_ff=256, n_heads=4)
BUILD_VERSION = 1


def _write_facts(out: Path) -> dict[str, Any]:
    import random

    from tuner.facts.synthetic import RELATIONS, make_edits, make_subjects

    rng = random.Random(KB_SEED)
    firsts = [s.split()[0] for s in make_subjects(200, rng, pool=40)]
    firsts = list(dict.fromkeys(firsts))
    lasts = [s.split()[-1] for s in make_subjects(LAST_NAMES * 4, rng, pool=LAST_NAMES + 4)]
    lasts = list(dict.fromkeys(lasts))[:LAST_NAMES]
    subjects = list(dict.fromkeys(f"{f} {last}" for f in firsts for last in lasts))
    rng.shuffle(subjects)
    subjects = subjects[:N_SUBJECTS]
    facts = [{"subject": s, "relation_id": rid, "object": rng.choice(rel["objects"])}
             for s in subjects for rid, rel in RELATIONS.items()]
    kb = {"seed": KB_SEED, "relations": RELATIONS, "subjects": subjects, "facts": facts}
    (out / "kb.json").write_text(json.dumps(kb, indent=1) + "\n", encoding="utf-8")
    (out / "edits.json").write_text(json.dumps(make_edits(kb, n_edits=N_EDITS, seed=EDITS_SEED), indent=1) + "\n",
                                    encoding="utf-8")
    return kb


def _train(out: Path, arch: str, kb: dict[str, Any]) -> None:
    from tuner.models.build import BuildSpec, train

    spec = BuildSpec(arch="llama", seed=0, epochs=40, **WIDTH)
    model_dir = out / "model"
    if arch == "chatglm":
        from tests.chatglm.build import build_tiny_chatglm

        size = dict(num_layers=WIDTH["n_layers"], hidden_size=WIDTH["d_model"], ffn_hidden_size=WIDTH["d_ff"],
                    kv_channels=WIDTH["d_model"] // WIDTH["n_heads"], num_attention_heads=WIDTH["n_heads"])
        build_tiny_chatglm(model_dir, kb, size=size, spec=spec)
        return
    model, tok, docs, _ = train(spec, kb, progress=False)
    model.save_pretrained(model_dir, safe_serialization=True)
    tok.save_pretrained(model_dir)
    (model_dir / "corpus.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")


def study_dict(bed: Path, arch: str) -> dict[str, Any]:
    """The default study's searched knobs and objective over this bed's model and facts."""
    from tests.workspace import ROOT

    study = yaml.safe_load((ROOT / "studies/default.yaml").read_text(encoding="utf-8"))
    study.update(name=f"bed-{arch}", description=f"test bed: 2-layer width-64 {arch} on its own facts")
    study["model"] = {"name": str(bed / "model"), "stats_corpus": str(bed / "model" / "corpus.txt"),
                      "dtype": "float32", "device": "cpu", "trust_remote_code": arch == "chatglm"}
    study["facts"] = {"path": str(bed / "edits.json"), "per_trial": 12, "seed": 0, "holdout": 25}
    study["hparams"]["layer"] = 0
    study["search"]["layer"] = {"low": 0, "high": 1}
    study["search"]["v_num_grad_steps"] = {"low": 5, "high": 100}
    study["trials"] = 60
    return study


def build_testbed(root: Path, arch: str) -> Path:
    """Build (or reuse) the ``arch`` bed under ``root``; returns its ``study.yaml``."""
    from filelock import FileLock

    if arch not in ARCHES:
        raise ValueError(f"arch must be one of {ARCHES}, got {arch!r}")
    bed = root.resolve() / f"{arch}-v{BUILD_VERSION}"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(bed) + ".lock"):
        if not (bed / "study.yaml").is_file():
            bed.mkdir(exist_ok=True)
            kb = _write_facts(bed)
            _train(bed, arch, kb)
            (bed / "study.yaml").write_text(yaml.safe_dump(study_dict(bed, arch), sort_keys=False), encoding="utf-8")
    return bed / "study.yaml"
