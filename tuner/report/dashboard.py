"""Figures and notes stored in the study, for optuna-dashboard.

    tuner dashboard --storage sqlite:///storage/tuner.db      # http://127.0.0.1:8080
"""

from __future__ import annotations

from typing import Any

PUBLISHED = ("loss-surface", "loss-surface-3d", "trajectories", "rebound-map", "importance-objective",
             "importance-rebound", "timeline", "trace-vs-search", "trace-summary")


def publish(study: Any, report: Any, names: list[str]) -> list[str]:
    """Save the ROME figures into the study (overwriting earlier versions) and name the objectives."""
    from optuna_dashboard import save_plotly_graph_object

    if list(study.metric_names or []) != names:
        study.set_metric_names(names)
    ids = []
    for fid in PUBLISHED:
        if fid in report.figures:
            ids.append(save_plotly_graph_object(study, report.figures[fid], graph_object_id=f"rome-{fid}"))
    return ids


def trial_note(per_fact: list[dict[str, Any]], hparams: dict[str, Any]) -> str:
    """Markdown for a finished trial: its hyperparameters and per-fact metrics."""
    cols = ["case_id", "final_prob", "peak_prob", "rebound", "efficacy", "paraphrase", "specificity", "seconds"]
    lines = ["### Per-fact metrics", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for m in per_fact:
        cells = [f"{m.get(c):.4g}" if isinstance(m.get(c), float) else str(m.get(c)) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    keys = ("layer", "v_lr", "v_weight_decay", "v_num_grad_steps", "clamp_norm_factor", "kl_factor", "lr_schedule",
            "mom2_adjustment")
    lines += ["", "### Hyperparameters", ""] + [f"- `{k}` = {hparams[k]}" for k in keys if k in hparams]
    return "\n".join(lines)


def serve(url: str, host: str, port: int) -> None:
    from optuna_dashboard import run_server

    from tuner.study.storage import make_storage

    run_server(make_storage(url, heartbeat=False), host=host, port=port)
