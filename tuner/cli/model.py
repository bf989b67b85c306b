"""``tuner model build``: train (or reuse) the embedded default model and check it is editable."""

from __future__ import annotations

import argparse
import json

from tuner.cli.options import add_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="the embedded default model")
    msub = p.add_subparsers(dest="model_cmd", required=True)
    b = msub.add_parser("build", help="train (or reuse) the embedded default model and check it is editable")
    add_config(b, "study YAML whose model.kb/facts to use")
    b.add_argument("--arch", choices=["llama", "gpt2", "glm"], help="architecture (default: the study's)")
    b.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    b.add_argument("--force", action="store_true", help="retrain even if cached")
    b.set_defaults(run="tuner.cli.model:build")


def build(args: argparse.Namespace) -> int:
    import dataclasses

    from tuner.models.build import BuildSpec
    from tuner.study.config import StudyConfig

    cfg = StudyConfig.load(args.config)
    if args.arch:
        cfg = cfg.replace(model=dataclasses.replace(cfg.model, arch=args.arch))
    path = cfg.build_default_model(seed=args.seed, force=args.force)
    meta = json.loads((path / "meta.json").read_text())
    spec = BuildSpec(**{k: v for k, v in meta["spec"].items() if k in {f.name for f in dataclasses.fields(BuildSpec)}})
    ed = meta["editability"]
    print(f"model:        {path}")
    print(f"architecture: {spec.arch}, {spec.n_layers} layers × {spec.d_model} wide, {meta['n_params']:,} parameters")
    print(f"fingerprint:  {meta['fingerprint']}")
    print(f"training:     {meta['epochs']} epochs, {meta['train_seconds']} s, fact accuracy {meta['accuracy']:.1%}")
    layers = ", ".join(f"L{k}: {v['efficacy']:.0%}" for k, v in ed["per_layer"].items())
    print(f"editability:  {ed['efficacy']:.0%} of {ed['n_edits']} edits at layer {ed['best_layer']} ({layers})")
    return 0
