"""``tuner inspect``: the architecture facts of a study's model, printed and written as markdown.

    tuner inspect --config studies/default.yaml   # storage/reports/<study>/inspect.md"""

from __future__ import annotations

import argparse

from tuner.cli.options import add_config, add_device


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="architecture facts to verify before editing a model family",
                       description="Load the study's model and report its layers, module names, activation "
                                   "layout, padding, prefix tokens, the norm in front of the MLP, where the loss "
                                   "is read, remote code, and the middle layer band.")
    add_config(p)
    add_device(p)
    p.add_argument("--out", help="markdown file (default: storage/reports/<study>/inspect.md)")
    p.add_argument("--json", action="store_true", help="print the facts as JSON instead of markdown")
    p.set_defaults(run="tuner.cli.inspect:run")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from tuner.models.inspect import inspect_model, to_markdown
    from tuner.models.remote_compat import needs_remote_code
    from tuner.paths import atomic_write_text, storage_root
    from tuner.study.config import StudyConfig

    cfg = StudyConfig.load(args.config)
    loaded = cfg.load_model(device=args.device, progress=not args.json)
    ships = not cfg.model.is_default and Path(cfg.model.name).is_dir() and needs_remote_code(Path(cfg.model.name))
    facts = inspect_model(loaded, trust_remote_code=cfg.model.trust_remote_code, ships_code=ships)
    text = to_markdown(facts)
    out = Path(args.out) if args.out else storage_root() / "reports" / cfg.name / "inspect.md"
    atomic_write_text(out, text)
    print(json.dumps(facts, indent=2) if args.json else text + f"\nwrote {out}")
    return 0
