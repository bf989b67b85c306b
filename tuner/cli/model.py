"""``tuner model build``."""

from __future__ import annotations

import argparse
import json


def build(args: argparse.Namespace) -> int:
    from tuner.config import StudyConfig
    from tuner.models.build import BuildSpec
    from tuner.models.build import build as build_model

    cfg = StudyConfig.load(args.config)
    spec = BuildSpec(arch=args.arch or cfg.model.arch, seed=args.seed, kb=str(cfg.resolve(cfg.model.kb)),
                     edits=str(cfg.resolve(cfg.facts.path)))
    path = build_model(spec, force=args.force)
    meta = json.loads((path / "meta.json").read_text())
    ed = meta["editability"]
    print(f"model:        {path}")
    print(f"architecture: {spec.arch}, {spec.n_layers} layers × {spec.d_model} wide, {meta['n_params']:,} parameters")
    print(f"fingerprint:  {meta['fingerprint']}")
    print(f"training:     {meta['epochs']} epochs, {meta['train_seconds']} s, fact accuracy {meta['accuracy']:.1%}")
    layers = ", ".join(f"L{k}: {v['efficacy']:.0%}" for k, v in ed["per_layer"].items())
    print(f"editability:  {ed['efficacy']:.0%} of {ed['n_edits']} edits at layer {ed['best_layer']} ({layers})")
    return 0
