"""``tuner trace``: causal tracing of the study's facts, written as JSON and Plotly figures."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from tuner.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction, default_config: str) -> None:
    p = sub.add_parser("trace", help="causal tracing: where the model recalls the facts (layers × tokens)")
    p.add_argument("--config", default=default_config, help="study YAML (default: %(default)s)")
    p.add_argument("--facts", type=int, default=20, help="how many facts of the fact file to trace (default 20)")
    p.add_argument("--noise", type=float, default=3.0, help="noise std as a multiple of the embedding std (default 3)")
    p.add_argument("--samples", type=int, default=10, help="noised copies per prompt (default 10)")
    p.add_argument("--window", type=int, help="MLP/attention restoration window in layers (default: layers // 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda, cuda:1")
    p.add_argument("--out", help="output directory (default: storage/reports/<study name>)")
    p.add_argument("--study", help="also store the figures in this study, for optuna-dashboard")
    p.add_argument("--storage", help="storage URL of --study")
    p.set_defaults(run="tuner.cli.trace:run")


def run_trace(cfg: Any, *, facts: int, noise: float, samples: int, window: int | None, seed: int,
              device: str | None = None, progress: bool = True) -> dict[str, Any]:
    from tuner.facts.schema import load_facts
    from tuner.models.load import load_model
    from tuner.rome.causal_trace import per_layer_effects, trace_facts

    if noise <= 0:
        raise ConfigError(f"--noise must be > 0 (a multiple of the embedding std), got {noise}")
    if facts < 1 or samples < 1:
        raise ConfigError("--facts and --samples must be >= 1")
    loaded = load_model(cfg, device=device, progress=progress)
    chosen = load_facts(cfg.resolve(cfg.facts.path))[:facts]
    t0 = time.perf_counter()
    traces, skipped = trace_facts(loaded.model, loaded.tok, loaded.adapter, chosen, noise=noise, samples=samples,
                                  window=window, seed=seed, progress=progress)
    effects = per_layer_effects(traces)
    top = sorted(range(len(effects["mlp"])), key=lambda i: effects["mlp"][i], reverse=True)
    return {"model": loaded.name, "fingerprint": loaded.fingerprint, "noise": noise, "samples": samples,
            "seed": seed, "traced": len(traces), "skipped_wrong": skipped, "seconds": round(time.perf_counter() - t0, 2),
            "effects": effects, "top_mlp_layers": top, "facts": [t.to_dict() for t in traces]}


def run(args: argparse.Namespace) -> int:
    from tuner.config import StudyConfig
    from tuner.paths import atomic_write_json, atomic_write_text, storage_root
    from tuner.report import figures
    from tuner.rome.causal_trace import FactTrace

    cfg = StudyConfig.load(args.config)
    result = run_trace(cfg, facts=args.facts, noise=args.noise, samples=args.samples, window=args.window,
                       seed=args.seed, device=args.device)
    out = Path(args.out) if args.out else storage_root() / "reports" / cfg.name
    atomic_write_json(out / "trace.json", result)
    figs = {"trace-summary": figures.trace_summary(result["effects"], result["traced"])}
    if result["facts"]:
        figs["trace-fact"] = figures.trace_heatmaps(FactTrace(**result["facts"][0]))
    body = "".join(fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=f"fig-{fid}")
                   for i, (fid, fig) in enumerate(figs.items()))
    atomic_write_text(out / "trace.html", f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>causal trace: "
                                          f"{cfg.name}</title></head><body>{body}</body></html>\n")
    print(f"traced {result['traced']} facts ({result['skipped_wrong']} skipped: the model gets them wrong) "
          f"in {result['seconds']} s")
    for kind in ("state", "mlp", "attn"):
        print(f"  {kind:<5} " + "  ".join(f"L{i}: {v:+.3f}" for i, v in enumerate(result["effects"][kind])))
    print(f"top MLP layers: {result['top_mlp_layers']}")
    print(f"wrote {out / 'trace.json'}\nwrote {out / 'trace.html'}")
    if args.study:
        from optuna_dashboard import save_plotly_graph_object

        from tuner.study.setup import load_existing
        from tuner.study.storage import make_storage, resolve_url

        url = resolve_url(args.storage)
        study, _ = load_existing(make_storage(url, heartbeat=False), url, args.study)
        study.set_user_attr("trace", {k: result[k] for k in ("effects", "top_mlp_layers", "traced", "noise")})
        for fid, fig in figs.items():
            save_plotly_graph_object(study, fig, graph_object_id=f"rome-{fid}")
    return 0
