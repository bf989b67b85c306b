"""Figures stored in the study for optuna-dashboard, and the dashboard server (the per-trial
notes are written by the trials themselves: ``tuner.study.notes``).

    tuner dashboard --storage sqlite:///storage/tuner.db      # http://127.0.0.1:8080
"""

from __future__ import annotations

from typing import Any

PUBLISHED = ("loss-surface", "loss-surface-3d", "trajectories", "rebound-map", "importance-objective",
             "importance-rebound", "timeline", "methods", "trace-vs-search", "trace-summary")


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


def serve(url: str, host: str, port: int) -> None:
    from optuna_dashboard import run_server

    from tuner.study.storage import make_storage

    run_server(make_storage(url, heartbeat=False, create=False), host=host, port=port)
