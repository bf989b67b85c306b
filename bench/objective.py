"""Is the exported setting the user's winner? Short studies on models the defaults were never
tuned on, judged on held-out facts against ROME's textbook setting, EasyEdit's defaults and the
unedited model.

    python bench/objective.py                           # 3 models x 3 seeds x 60 trials: ~1 h on 2 cores
    python bench/objective.py --models chatglm --seeds 1 --trials 20      # smaller
    python bench/objective.py --checkout /tmp/old-main --out old.json     # the same runs with another checkout
    python bench/objective.py --table new.json old.json                    # re-print saved runs

Models: the two test beds of ``tests/testbed.py`` (2 layers, width 64, 200 facts of their own,
the ChatGLM3-interface code and a plain Llama; 12 tuning facts, 25 held-out) and the embedded
default model (its study as shipped). Each study runs as ``tuner launch`` does (one worker, one
thread, fresh storage), with the given checkout's ``tuner``. Its exported ``study.yaml`` and the
references are then edited on the held-out facts *by this checkout's scoring path*
(``tuner.study.validate.run_validation``'s measures), so runs of different checkouts are judged
the same way. Per run: the exported setting's held-out S (CounterFact's harmonic mean of
efficacy, paraphrase and specificity), its efficacy, paraphrase and specificity, the references'
S, the unedited model's efficacy, and whether the export is a real edit at least as good as the
best reference (S ≥ best reference S − 0.02, efficacy above the unedited model's)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, default_study, shared_home  # noqa: E402

MODELS = ("chatglm", "llama", "default")
TOLERANCE = 0.02


def study_yaml(model: str, seed: int, beds: Path, out: Path) -> Path:
    """The study file of one run: the bed's (or the default) study with this seed."""
    if model == "default":
        return default_study(out, name=f"default-{seed}", seed=seed)
    from tests.testbed import build_testbed

    data = yaml.safe_load(build_testbed(beds, model).read_text())
    data.update(name=f"{model}-{seed}", seed=seed)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def launch(cfg: Path, name: str, trials: int, home: Path, checkout: Path) -> float:
    url = f"sqlite:///{home / f'{name}.db'}"
    env = {**os.environ, "TUNER_HOME": str(home), "OMP_NUM_THREADS": "1", "TUNER_TRUST_REMOTE_CODE": "1",
           "PYTHONPATH": str(checkout)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tuner", "launch", "--config", str(cfg), "--trials", str(trials),
                           "--workers", "1", "--threads", "1", "--storage", url, "--no-progress"],
                          cwd=checkout, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: launch failed:\n{proc.stderr[-2000:]}")
    (home / f"{name}.log").write_text(proc.stdout + proc.stderr)
    return time.perf_counter() - t0


def judge(cfg_path: Path, exported: Path) -> dict:
    """The exported setting and the references on the held-out facts, scored by this checkout."""
    import torch

    from tuner.metrics.scoring import Thresholds, score_metrics, score_unedited
    from tuner.study.config import StudyConfig
    from tuner.study.references import UNEDITED, edit_metrics, reference_settings

    torch.set_num_threads(1)
    cfg = StudyConfig.load(cfg_path)
    hp = StudyConfig.load(exported).hparams
    facts = cfg.select_holdout()
    loaded = cfg.load_model(device="cpu", progress=False)
    editor = loaded.editor(progress=False, disabling=cfg.disabling_rule())
    settings = [("exported", hp), *reference_settings(cfg.hparams, loaded.adapter.family, editor.n_layers)]
    measured = {label: [r.metrics for r in edit_metrics(editor, cfg, facts, h)] for label, h in settings}
    unedited = score_unedited(measured["exported"], cfg.objective)
    refs = Thresholds.of([score_metrics(m, cfg.objective) for k, m in measured.items() if k != "exported"], unedited)
    rows = {k: score_metrics(m, cfg.objective, refs).to_dict() for k, m in measured.items()}
    rows[UNEDITED] = unedited.to_dict()
    return {"rows": rows, "exported_hparams": hp.to_dict()}


def run(model: str, seed: int, trials: int, home: Path, beds: Path, checkout: Path) -> dict:
    name = f"{model}-{seed}"
    cfg = study_yaml(model, seed, beds, home / f"{name}.yaml")
    wall = launch(cfg, name, trials, home, checkout)
    out = judge(cfg, home / "best" / name / "study.yaml")
    log = (home / f"{name}.log").read_text()
    out.update(model=model, seed=seed, trials=trials, wall=round(wall, 1), checkout=str(checkout),
               reference_won="a reference beats every tuned setting" in log)
    return out


def verdict(r: dict) -> tuple[float, float, bool]:
    rows = r["rows"]
    best_ref = max(v["S"] for k, v in rows.items() if k not in ("exported", "unedited"))
    ok = rows["exported"]["S"] >= best_ref - TOLERANCE and rows["exported"]["efficacy"] > rows["unedited"]["efficacy"]
    return rows["exported"]["S"], best_ref, ok


def table(runs: list[dict]) -> str:
    head = ("model", "seed", "checkout", "export S", "efficacy", "paraphrase", "specificity", "textbook S",
            "easyedit S", "unedited eff", "ok", "minutes")
    body = [list(head)]
    for r in sorted(runs, key=lambda r: (r["checkout"], r["model"], r["seed"])):
        rows = r["rows"]
        ee = next(k for k in rows if k.startswith("easyedit-"))
        e = rows["exported"]
        _, _, ok = verdict(r)

        def f(x: float | None) -> str:
            return "-" if x is None else f"{x:.3f}"

        body.append([r["model"], str(r["seed"]), Path(r["checkout"]).name, f(e["S"]), f(e["efficacy"]),
                     f(e["paraphrase"]), f(e["specificity"]), f(rows["textbook"]["S"]), f(rows[ee]["S"]),
                     f(rows["unedited"]["efficacy"]), "yes" if ok else "NO", f"{r['wall'] / 60:.1f}"])
    medians = []
    for key in sorted({(r["checkout"], r["model"]) for r in runs}):
        sel = [r for r in runs if (r["checkout"], r["model"]) == key]
        s = statistics.median(verdict(r)[0] for r in sel)
        ref = statistics.median(verdict(r)[1] for r in sel)
        medians.append(f"{key[1]} ({Path(key[0]).name}): median export S {s:.3f} vs median best reference S "
                       f"{ref:.3f} over {len(sel)} seed(s): {'meets' if s >= ref - TOLERANCE else 'MISSES'} the "
                       f"target (≥ best reference − {TOLERANCE})")
    widths = [max(len(row[i]) for row in body) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i > 2 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in body]
    return "\n".join(lines + medians)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--checkout", type=Path, default=ROOT, help="the rome-tuner checkout whose tuner runs the studies")
    ap.add_argument("--out", type=Path, help="save the runs as JSON")
    ap.add_argument("--table", nargs="+", type=Path, help="print saved runs and exit")
    args = ap.parse_args()
    if args.table:
        print(table([r for path in args.table for r in json.loads(path.read_text())]))
        return
    beds = ROOT / "storage" / "testbeds"
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-objective-") as tmp:
        home = shared_home(Path(tmp) / "home")
        for model in args.models:
            for seed in range(args.seeds):
                runs.append(run(model, seed, args.trials, home, beds, args.checkout.resolve()))
                print(f"{model} seed {seed}: export S {runs[-1]['rows']['exported']['S']:.3f} "
                      f"({runs[-1]['wall'] / 60:.1f} min)", file=sys.stderr, flush=True)
                if args.out:
                    args.out.write_text(json.dumps(runs, indent=1))
    print(table(runs))


if __name__ == "__main__":
    main()
