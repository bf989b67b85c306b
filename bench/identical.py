"""Behaviour snapshot for refactors: what ``tuner edit --json`` prints for a few facts and
methods, and the trials of a seeded 20-trial default study (parameters, values, user
attributes without timings), as one JSON file; ``--compare`` shows whether two snapshots are
bit-identical.

    python bench/identical.py --out /tmp/before.json          # on the old commit
    python bench/identical.py --out /tmp/after.json           # on the new one
    python bench/identical.py --compare /tmp/before.json /tmp/after.json

Runs one worker at one thread (the default study's model is trained on first use)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EDITS = [("rome", 0), ("rome", 3), ("memit", 1), ("hybrid", 2)]
TIMING = ("seconds", "timings", "time", "duration", "host", "pid", "worker")
"""Keys left out of the comparison, at any depth: wall-clock measurements and where a trial ran."""


def tuner(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "tuner", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"tuner {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def untimed(attrs: dict) -> dict:
    return {k: v for k, v in sorted(attrs.items()) if not any(t in k for t in TIMING)}


def plans() -> dict:
    """sha256 of v*, k*, u and ΔW of the default study's first 8 facts planned in one batch
    (through the Python API, one thread), per layer."""
    import hashlib

    import torch

    sys.path.insert(0, str(ROOT))
    from tuner.study.config import StudyConfig

    torch.set_num_threads(1)
    cfg = StudyConfig.load(str(ROOT / "studies/default.yaml"))
    editor = cfg.load_model(device="cpu", progress=False).editor(progress=False)
    facts = cfg.select_facts()

    def digest(x: torch.Tensor) -> str:
        return hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]

    out = {}
    for layer in (0, 2):
        for plan, fact in zip(editor.plan_many(facts, cfg.hparams.replace(layer=layer)), facts):
            out[f"layer {layer} fact {fact.case_id}"] = {
                "v_star": digest(plan.v_star), "u": digest(plan.u), "delta_w": digest(plan.delta_w),
                "delta_w_norm": float(plan.delta_w.norm())}
    return out


def snapshot(trials: int) -> dict:
    import optuna

    edits = {f"{m}:{i}": json.loads(tuner("edit", "--method", m, "--fact", str(i), "--json"))
             for m, i in EDITS}
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/snap.db"
        out = tuner("launch", "--trials", str(trials), "--study", "snap", "--storage", url,
                    "--workers", "1", "--threads", "1", "--no-progress")
        study = optuna.load_study(study_name="snap", storage=url)
        rows = [{"number": t.number, "state": t.state.name, "params": t.params, "values": t.values,
                 "user_attrs": untimed(t.user_attrs)}
                for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)]
    best = [line for line in out.splitlines() if line.startswith("best trial")]
    return {"edits": edits, "plans": plans(), "trials": rows, "best": best}


def diff(a, b, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        a, b = untimed(a), untimed(b)
        out = [f"{path}.{k}: only in {'first' if k in a else 'second'}" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            out += diff(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("FIRST", "SECOND"))
    args = ap.parse_args()
    if args.compare:
        a, b = (json.loads(p.read_text()) for p in args.compare)
        found = diff(a, b)
        print(f"{len(a['edits'])} edits (trajectory, metrics), {len(a.get('plans', ()))} plans (v*, u, ΔW), "
              f"{len(a['trials'])} trials (parameters, values, attributes), timings left out: "
              + ("bit-identical" if not found else f"{len(found)} differences"))
        for line in found[:40]:
            print(" ", line)
        sys.exit(1 if found else 0)
    if not args.out:
        ap.error("--out or --compare")
    snap = snapshot(args.trials)
    args.out.write_text(json.dumps(snap, indent=1, sort_keys=True))
    print(f"wrote {args.out}: {len(snap['edits'])} edits, {len(snap['trials'])} trials; {snap['best']}")


if __name__ == "__main__":
    main()
