"""``tuner trace``: causal tracing of the study's facts, written as JSON and Plotly figures."""

from __future__ import annotations

import argparse
from pathlib import Path

from tuner.cli.options import add_config, add_device


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="causal tracing: where the model recalls the facts (layers × tokens)")
    add_config(p)
    p.add_argument("--facts", type=int, default=20, help="how many facts of the fact file to trace (default 20)")
    p.add_argument("--noise", type=float, default=3.0, help="noise std as a multiple of the embedding std (default 3)")
    p.add_argument("--samples", type=int, default=10, help="noised copies per prompt (default 10)")
    p.add_argument("--window", type=int, help="MLP/attention restoration window in layers (default: layers // 4)")
    p.add_argument("--seed", type=int, default=0)
    add_device(p)
    p.add_argument("--out", help="output directory (default: storage/reports/<study name>)")
    p.add_argument("--study", help="also store the figures in this study, for optuna-dashboard")
    p.add_argument("--storage", help="storage URL of --study")
    p.set_defaults(run="tuner.cli.trace:run")


def run(args: argparse.Namespace) -> int:
    from tuner.analysis.causal_trace import FactTrace
    from tuner.paths import atomic_write_json, atomic_write_text, storage_root
    from tuner.report import figures
    from tuner.study.config import StudyConfig
    from tuner.study.trace import run_trace

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
        study, _ = load_existing(make_storage(url, heartbeat=False, create=False), url, args.study)
        study.set_user_attr("trace", {k: result[k] for k in ("effects", "top_mlp_layers", "traced", "noise")})
        for fid, fig in figs.items():
            save_plotly_graph_object(study, fig, graph_object_id=f"rome-{fid}")
    return 0
