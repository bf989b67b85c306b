"""ROME's step semantics on the embedded default model: how often the textbook settings stop
early, and what the collapse metrics say about good and destroyed edits.

    python bench/semantics.py [--facts 20]

Runs on the CPU with 1 thread; prints one table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--facts", type=int, default=20)
    args = ap.parse_args()
    import torch

    from tuner.facts.schema import load_facts
    from tuner.hparams import preset
    from tuner.study.config import StudyConfig

    torch.set_num_threads(1)
    cfg = StudyConfig.load("studies/default.yaml")
    editor = cfg.load_model(device="cpu", progress=False).editor(progress=False)
    facts = load_facts(cfg.resolve(cfg.facts.path))[: args.facts]
    textbook = preset("textbook", cfg.hparams, n_layers=editor.n_layers)
    settings = {
        "textbook (ROME semantics)": textbook,
        "textbook, no early stop": textbook.replace(early_stop_loss=None),
        "default study hparams": cfg.hparams,
        "default, v_select best": cfg.hparams.replace(v_select="best"),
        "default, key_mode r-rome": cfg.hparams.replace(key_mode="r-rome"),
        "destroyed (v_lr 5, clamp 1000, no decay/KL)": cfg.hparams.replace(
            v_lr=5.0, clamp_norm_factor=1000.0, v_weight_decay=0.0, kl_factor=0.0),
    }
    cols = ("early_stopped", "n_steps", "final_prob", "efficacy", "rebound", "update_norm", "gen_entropy_drop",
            "disabling_edit")
    print(f"default model, {len(facts)} facts, layer {cfg.hparams.layer} (textbook: layer {textbook.layer})")
    print(f"| setting | {' | '.join(cols)} |")
    print("|---" * (len(cols) + 1) + "|")
    for name, hp in settings.items():
        metrics = [editor.edit(f, hp).metrics for f in facts]
        means = [sum(float(m[c]) for m in metrics) / len(metrics) for c in cols]
        print(f"| {name} | " + " | ".join(f"{v:.3g}" for v in means) + " |")


if __name__ == "__main__":
    main()
