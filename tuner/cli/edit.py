"""``tuner edit``: one edit (ROME, or MEMIT / the hybrid with ``--method``), its trajectory and
metrics — the tool for debugging one case.

    tuner edit --fact 3 --layer 0 --steps 12 --json
    tuner edit --fact 3 --method memit --layer 0 --window-size 2

Its hyperparameter flags are generated from the knob declarations (``tuner.hparams.KNOBS``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tuner.cli.options import add_config, add_device
from tuner.errors import ConfigError


def _knob_flags(p: argparse.ArgumentParser) -> None:
    from tuner.hparams import KNOBS

    g = p.add_argument_group("hyperparameters (default: the study's hparams)")
    for name, k in KNOBS.items():
        flag = k.cli_flag
        if flag is None:
            continue
        kwargs: dict[str, Any] = {"dest": name, "default": UNSET, "help": f"{name}: {k.help}".replace("%", "%%")}
        if k.choices == (False, True):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif k.kind == "categorical":
            kwargs["choices"] = list(k.choices)
        elif k.kind == "int":
            kwargs["type"] = int
        else:
            kwargs["type"] = float
        if k.optional and k.kind != "categorical":
            kwargs["type"] = _optional(kwargs["type"])
        g.add_argument(flag, **kwargs)


def _optional(convert: Any) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null") else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


class _Unset:
    """argparse default that tells an omitted flag from an explicit ``none``."""


UNSET = _Unset()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("edit", help="run one edit (ROME, MEMIT, hybrid) and print its trajectory and metrics",
                       description="Run one edit on one fact (--method rome|memit|hybrid); the model is restored "
                                   "afterwards.")
    add_config(p)
    p.add_argument("--fact", type=int, default=0, help="index of the fact in the study's fact file (default: 0)")
    _knob_flags(p)
    add_device(p)
    p.add_argument("--json", action="store_true", help="print the whole result as one JSON object")
    p.set_defaults(run="tuner.cli.edit:run")


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
    from tuner.facts.schema import load_facts
    from tuner.hparams import KNOBS
    from tuner.metrics.scoring import score_metrics
    from tuner.study.config import StudyConfig
    from tuner.study.references import edit_metrics

    cfg = StudyConfig.load(args.config)
    facts = load_facts(cfg.resolve(cfg.facts.path))
    if not 0 <= args.fact < len(facts):
        raise ConfigError(f"--fact {args.fact} is out of range: the fact file has {len(facts)} facts (0-{len(facts) - 1})")
    fact = facts[args.fact]
    changes = {name: getattr(args, name) for name in KNOBS if getattr(args, name, UNSET) is not UNSET}
    hp = cfg.hparams.replace(**changes)
    loaded = cfg.load_model(device=args.device, progress=not args.json)
    editor = loaded.editor(progress=not args.json, disabling=cfg.disabling_rule())
    # the study's scoring path: disabling judged with its thresholds, its objective and S
    result = edit_metrics(editor, cfg, [fact], hp)[0]  # checks the layer (and MEMIT's window) first
    score = score_metrics([result.metrics], cfg.objective)
    out = {
        "model": loaded.name, "fingerprint": loaded.fingerprint, "fact": fact.to_record(),
        **result.to_dict(), "score": score.to_dict(),
    }
    if args.json:
        json.dump(out, sys.stdout)
        print()
        return 0
    m = result.metrics
    stop = f", early stop at loss < {hp.early_stop_loss:g}" if hp.early_stop_loss is not None else ""
    print(f"fact {args.fact}: {fact.rewrite_prompt!r}  {fact.target_true!r} -> {fact.target_new!r}")
    where = (f"layer {hp.layer}" if hp.method == "rome" else
             f"{hp.method}, layers {hp.layer}-{hp.layer + hp.window_size - 1} (v* at the last)")
    print(f"model {loaded.name} ({loaded.fingerprint}), {where}, v_lr {hp.v_lr:g}, "
          f"v_weight_decay {hp.v_weight_decay:g}, steps {hp.v_num_grad_steps}{stop}, schedule {hp.lr_schedule}")
    print(trajectory_table(result.trajectory))
    print(f"P(new) before {m['pre_prob']:.4f} -> after {m['final_prob']:.4f}   P(true) after {m['true_prob']:.4f}")
    print(f"efficacy {m['efficacy']:.0f}  paraphrase {m['paraphrase'] if m['paraphrase'] is not None else 'n/a'}  "
          f"specificity {m['specificity'] if m['specificity'] is not None else 'n/a'}")
    print(f"peak {m['peak_prob']:.4f} at step {m['peak_step']}  end {m['opt_final_prob']:.4f}  "
          f"rebound {m['rebound']:.4f}  oscillation {m['oscillation']:.4f}"
          + ("  (stopped early)" if m["early_stopped"] else ""))
    print(f"value {score.value:.4f} (the study's objective, objective.kind {cfg.objective.kind})  S {score.S:.4f}"
          + ("  disabling edit" if m["disabling_edit"] else ""))
    print("time " + "  ".join(f"{k} {v:.3f}s" for k, v in result.timings.items()))
    return 0
