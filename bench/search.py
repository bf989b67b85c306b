"""How fast does each sampler and pruner find a good setting on the default study?

    python bench/search.py                     # 5 seeds x 3 samplers x 2 pruners: ~1.5 hours on 2 cores
    python bench/search.py --trials 40 --seeds 3   # the README table
    python bench/search.py --toy               # CI size: 2 samplers x 1 seed x 6 trials
    python bench/search.py --table a.json b.json  # re-print saved runs (one table, one target)

For every sampler (TPE, GP, random) and pruner (median, none; also percentile, Wilcoxon and
Hyperband with ``--pruners``) over several study seeds, the default study runs as ``tuner launch``
does (one worker, one thread, fresh storage; --jobs studies side by side). Per run: the trials
and the wall time until the best value first reaches 95 % of the best value ANY run found, the
best value, the held-out S (CounterFact score) of the exported setting (``tuner validate`` at the end of the
launch: the default study has 16 held-out facts) and the share of pruned trials. One table of
medians over seeds; a run that never reaches the target counts as "> trials" (``--random-trials``
gives random search a longer budget, so "trials random search needs" is a number, or a bound).
Wall times of runs side by side share the cores: compare them within one table only."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, default_study, shared_home  # noqa: E402


def grid(toy: bool, seeds: int, samplers: list[str], pruners: list[str]) -> list[tuple[str, str, int]]:
    if toy:
        return [("tpe", "median", 0), ("random", "none", 0)]
    return [(s, p, seed) for s in samplers for p in pruners for seed in range(seeds)]


def run_one(sampler: str, pruner: str, seed: int, trials: int, home: Path) -> dict:
    """One study, launched as a user would; its trial history read back from the storage."""
    import optuna

    tag = f"{sampler}-{pruner}-{seed}"
    cfg = default_study(home / f"{tag}.yaml", name=tag, sampler=sampler, pruner=pruner, seed=seed)
    url = f"sqlite:///{home / f'{tag}.db'}"
    env = {**os.environ, "TUNER_HOME": str(home), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tuner", "launch", "--config", str(cfg), "--trials", str(trials),
                           "--workers", "1", "--threads", "1", "--storage", url, "--no-progress"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{tag}: launch failed:\n{proc.stderr[-2000:]}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=tag, storage=url)
    trials_ = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    start = min(t.datetime_start for t in trials_ if t.datetime_start)
    history = []  # (trial number, seconds since the first trial started, value or None)
    for t in trials_:
        feasible = all(c <= 0 for c in t.user_attrs.get("constraints", [0]))
        value = t.value if t.state.name == "COMPLETE" and feasible else None
        done = (t.datetime_complete - start).total_seconds() if t.datetime_complete else None
        history.append((t.number, done, value))
    record = study.user_attrs.get("holdout") or {}
    rows = record.get("rows", [])
    winner = next((r for r in rows if r["label"] == record.get("winner")), None)  # the exported setting's row
    refs = {r["label"]: r["S"] for r in rows if r["trial"] is None and r.get("S") is not None}
    return {"sampler": sampler, "pruner": pruner, "seed": seed, "trials": trials, "wall": wall, "history": history,
            "pruned": sum(t.state.name == "PRUNED" for t in trials_) / len(trials_),
            "holdout": winner["S"] if winner else None, "references": refs}


def reach(run: dict, target: float) -> tuple[int | None, float | None]:
    """(trials, seconds) until the best value first reaches ``target``."""
    for i, (_, seconds, value) in enumerate(run["history"]):
        if value is not None and value >= target:
            return i + 1, seconds
    return None, None


def table(runs: list[dict]) -> str:
    best = max(v for r in runs for _, _, v in r["history"] if v is not None)
    target = 0.95 * best
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["sampler"], r["pruner"]), []).append(r)
    randoms = [max((v for _, _, v in r["history"] if v is not None), default=float("nan"))
               for r in runs if r["sampler"] == "random"]
    bar = statistics.median(randoms) if randoms else None  # what random search finds in the whole budget
    head = (f"{'sampler':<8}{'pruner':<12}{'runs':>5}{'reached':>9}{'trials to 95%':>15}{'min to 95%':>12}"
            f"{'to random':>11}{'best':>8}{'held-out':>10}{'pruned':>8}{'wall min':>10}")
    lines = [f"target: 95% of the best value any run found ({best:.4f}) = {target:.4f}; \"to random\": trials until "
             f"random search's median best ({bar if bar is None else round(bar, 4)}); medians over seeds", head]
    for (sampler, pruner), rs in groups.items():
        hits = [reach(r, target) for r in rs]
        n_trials = [h[0] if h[0] is not None else r["trials"] + 1 for h, r in zip(hits, rs)]  # "> trials"
        med_trials = statistics.median(n_trials)
        over = med_trials > rs[0]["trials"]
        secs = [h[1] for h in hits if h[1] is not None]
        bests = [max((v for _, _, v in r["history"] if v is not None), default=float("nan")) for r in rs]
        held = [r["holdout"] for r in rs if r["holdout"] is not None]
        shown = f"> {rs[0]['trials']}" if over else f"{med_trials:g}"
        to_random = "-"
        if bar is not None:
            n_bar = [reach(r, bar)[0] or r["trials"] + 1 for r in rs]
            med_bar = statistics.median(n_bar)
            to_random = f"> {rs[0]['trials']}" if med_bar > rs[0]["trials"] else f"{med_bar:g}"
        lines.append(
            f"{sampler:<8}{pruner:<12}{len(rs):>5}{sum(h[0] is not None for h in hits):>9}{shown:>15}"
            f"{(f'{statistics.median(secs) / 60:.2f}' if secs and not over else '-'):>12}{to_random:>11}"
            f"{statistics.median(bests):>8.4f}{(f'{statistics.median(held):.4f}' if held else '-'):>10}"
            f"{statistics.median(r['pruned'] for r in rs):>8.0%}{statistics.median(r['wall'] for r in rs) / 60:>10.2f}")
    refs = [r["references"] for r in runs if r["references"]]
    if refs:
        labels = dict.fromkeys(k for x in refs for k, v in x.items() if v is not None)  # first-seen order
        parts = [f"{k} {statistics.median(x[k] for x in refs if x.get(k) is not None):.4f}" for k in labels]
        lines.append("held-out references (same 16 facts): " + ", ".join(parts))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=80, help="trials per study (default 80)")
    ap.add_argument("--random-trials", type=int, help="trials per random-search study (default: --trials)")
    ap.add_argument("--seeds", type=int, default=5, help="study seeds per sampler and pruner (default 5)")
    ap.add_argument("--samplers", default="tpe,gp,random", help="comma-separated (default tpe,gp,random)")
    ap.add_argument("--pruners", default="median,none",
                    help="comma-separated: median, percentile, wilcoxon, hyperband, none (default median,none)")
    ap.add_argument("--jobs", type=int, default=2, help="studies run side by side (default 2: one per core)")
    ap.add_argument("--toy", action="store_true", help="CI size: 2 runs of 6 trials")
    ap.add_argument("--out", type=Path, help="also save every run's history as JSON here")
    ap.add_argument("--table", type=Path, nargs="+", help="print one table of saved runs and exit")
    args = ap.parse_args()
    if args.table:
        print(table([run for path in args.table for run in json.loads(path.read_text())]))
        return
    trials = 6 if args.toy else args.trials
    runs_todo = grid(args.toy, args.seeds, args.samplers.split(","), args.pruners.split(","))
    subprocess.run([sys.executable, "-m", "tuner", "model", "build"], cwd=ROOT, check=True, capture_output=True)
    with tempfile.TemporaryDirectory() as d:
        home = shared_home(Path(d))
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(run_one, s, p, seed, trials if s != "random" or args.toy else
                                   args.random_trials or trials, home) for s, p, seed in runs_todo]
            runs = []
            for f, (s, p, seed) in zip(futures, runs_todo):
                runs.append(f.result())
                print(f"done {s}-{p}-{seed} ({len(runs)}/{len(runs_todo)})", file=sys.stderr, flush=True)
    if args.out:
        args.out.write_text(json.dumps(runs))
    print(table(runs))


if __name__ == "__main__":
    main()
