"""Trials one by one vs in batches (``tuner worker --batch-trials``), side by side in one run.

    python bench/batch_trials.py                       # default study, 12 settings, B = 1, 3, 6
    python bench/batch_trials.py --batches 1,4 --settings 8 --threads 2
    python bench/batch_trials.py --config studies/llama-2-7b.yaml --device cuda:0 --batches 1,2,4,8

The settings are drawn from the study's search space by Optuna's seeded random sampler (all
at the layer given by --layer, so a batch is one group, as a GP search concentrates on one
layer); every setting is edited on the study's tuning facts and scored exactly as a trial is
(``Objective``), once alone and once per batch size. Prints the seconds per trial, the ratio
to one-by-one, and the largest difference of a trial's value between the two paths (the
results must agree: ``tests/study/test_batch_trials.py``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def settings(cfg, space, n: int, layer: int, seed: int) -> list[dict]:
    import optuna

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        hp = space.suggest(trial, cfg.hparams)
        params = dict(trial.params)
        params["layer"] = layer
        out.append(params)
        study.tell(trial, 0.0)
        del hp
    return out


def run(objective, params: list[dict], batch: int) -> tuple[float, list[float]]:
    import optuna

    study = optuna.create_study(direction="maximize")
    for p in params:
        study.enqueue_trial(p)
    values: list[float] = []
    t0 = time.perf_counter()
    for i in range(0, len(params), batch):
        trials = [study.ask() for _ in params[i:i + batch]]
        if batch == 1:
            values.append(objective(trials[0]))
        else:
            hps = [objective.start(t) for t in trials]
            gets = objective.batch(trials, hps)
            values += [objective.finish(t, hp, get) for t, hp, get in zip(trials, hps, gets)]
    return (time.perf_counter() - t0) / len(params), values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="studies/default.yaml")
    ap.add_argument("--settings", type=int, default=12)
    ap.add_argument("--batches", default="1,3,6", help="batch sizes; 1 is the one-by-one baseline")
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda:0 on a GPU machine")
    args = ap.parse_args()

    import optuna
    import torch

    from tuner.study.config import StudyConfig
    from tuner.study.objective import Objective
    from tuner.study.setup import bound_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(args.threads)
    cfg = StudyConfig.load(args.config)
    loaded = cfg.load_model(device=args.device, progress=False)
    editor = loaded.editor(progress=False, disabling=cfg.disabling_rule())
    space = bound_space(cfg)
    facts = cfg.select_facts()
    objective = Objective(cfg, editor, facts, space, fingerprint=loaded.fingerprint, device=loaded.device)
    params = settings(cfg, space, args.settings, args.layer, args.seed)
    sizes = [int(b) for b in args.batches.split(",")]
    if 1 not in sizes:
        sizes.insert(0, 1)
    run(objective, params[:1], 1)  # warm the caches (context templates, statistics, pre-edit scores)
    print(f"{cfg.name}: {len(params)} settings at layer {args.layer}, {len(facts)} facts per trial, "
          f"{args.threads} torch thread(s), {torch.__version__}")
    print(f"{'batch':>5}  {'s/trial':>8}  {'vs one by one':>13}  {'max |Δ value|':>13}")
    base, base_values = None, None
    for b in sizes:
        seconds, values = run(objective, params, b)
        if b == 1:
            base, base_values = seconds, values
        diff = max(abs(x - y) for x, y in zip(values, base_values))
        print(f"{b:>5}  {seconds:>8.3f}  {base / seconds:>12.2f}×  {diff:>13.2e}")


if __name__ == "__main__":
    main()
