"""``tuner edit``: one ROME edit, its trajectory and metrics — the tool for debugging one case."""

from __future__ import annotations

import argparse
import json
import sys

from tuner.errors import ConfigError

OVERRIDES = ("layer", "v_lr", "v_weight_decay", "v_num_grad_steps", "clamp_norm_factor", "kl_factor",
             "lr_schedule", "mom2_adjustment", "seed")


def trajectory_table(traj: dict[str, list[float]], rows: int = 20) -> str:
    n = len(traj["loss"])
    stride = max(1, -(-n // rows))
    steps = sorted(set(range(0, n, stride)) | {n - 1})
    lines = [f"{'step':>5} {'loss':>9} {'nll':>9} {'kl':>8} {'decay':>8} {'P(new)':>8} {'|delta|':>8}"]
    for i in steps:
        lines.append(f"{i:>5} {traj['loss'][i]:>9.4f} {traj['nll'][i]:>9.4f} {traj['kl'][i]:>8.4f} "
                     f"{traj['weight_decay'][i]:>8.4f} {traj['prob'][i]:>8.4f} {traj['delta_norm'][i]:>8.3f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from tuner.config import StudyConfig
    from tuner.facts.schema import load_facts
    from tuner.models.load import load_model

    cfg = StudyConfig.load(args.config)
    facts = load_facts(cfg.resolve(cfg.facts.path))
    if not 0 <= args.fact < len(facts):
        raise ConfigError(f"--fact {args.fact} is out of range: the fact file has {len(facts)} facts (0-{len(facts) - 1})")
    fact = facts[args.fact]
    hp = cfg.base_hparams.replace(**{k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None})
    loaded = load_model(cfg, device=args.device, progress=not args.json)
    editor = loaded.editor(progress=not args.json)
    editor.check_layer(hp.layer)
    result = editor.edit(fact, hp)
    out = {
        "model": loaded.name, "fingerprint": loaded.fingerprint, "fact": fact.to_record(),
        **result.to_dict(),
    }
    if args.json:
        json.dump(out, sys.stdout)
        print()
        return 0
    m = result.metrics
    print(f"fact {args.fact}: {fact.rewrite_prompt!r}  {fact.target_true!r} -> {fact.target_new!r}")
    print(f"model {loaded.name} ({loaded.fingerprint}), layer {hp.layer}, v_lr {hp.v_lr:g}, "
          f"v_weight_decay {hp.v_weight_decay:g}, steps {hp.v_num_grad_steps}, schedule {hp.lr_schedule}")
    print(trajectory_table(result.trajectory))
    print(f"P(new) before {m['pre_prob']:.4f} -> after {m['final_prob']:.4f}   P(true) after {m['true_prob']:.4f}")
    print(f"efficacy {m['efficacy']:.0f}  paraphrase {m['paraphrase'] if m['paraphrase'] is not None else 'n/a'}  "
          f"specificity {m['specificity'] if m['specificity'] is not None else 'n/a'}")
    print(f"peak {m['peak_prob']:.4f} at step {m['peak_step']}  end {m['opt_final_prob']:.4f}  "
          f"rebound {m['rebound']:.4f}  oscillation {m['oscillation']:.4f}")
    print("time " + "  ".join(f"{k} {v:.3f}s" for k, v in result.timings.items()))
    return 0
