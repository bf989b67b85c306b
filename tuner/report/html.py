"""The self-contained report page: every figure, plotly.js embedded once, opens offline.

    tuner report --study default            # storage/reports/default/index.html
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.metrics.record import SHOWN
from tuner.paths import atomic_write_text
from tuner.report import figures
from tuner.report.records import complete, complete_feasible, rows
from tuner.report.surface import surface_figures
from tuner.study.objective import best_first


@dataclass
class Report:
    figures: dict[str, Any]  # id -> plotly Figure, in page order
    summary_html: str
    metric: str = "value"


def default_axes(cfg: Any) -> tuple[str, str]:
    searched = cfg.search.names
    x = "layer" if "layer" in searched else (searched[0] if searched else "layer")
    y = "v_lr" if "v_lr" in searched and x != "v_lr" else next((k for k in searched if k != x), "v_lr")
    return x, y


def build(study: Any, cfg: Any, *, x: str | None = None, y: str | None = None, metric: str = "value",
          top_k: int = 3) -> Report:
    rs = rows(study)
    dx, dy = default_axes(cfg)
    x, y = x or dx, y or dy
    lp = cfg.search.log_names
    surf2d, surf3d = surface_figures(rs, x, y, metric, lp)
    figs = {"loss-surface": surf2d}
    # the same surface over the other metrics, selectable in the page
    for other in ("value", "final_prob", "rebound", "final_loss"):
        if other != metric:
            figs[f"loss-surface-{other}"] = surface_figures(rs, x, y, other, lp)[0]
    figs |= {
        "loss-surface-3d": surf3d,
        "trajectories": figures.trajectories(rs, top_k),
        "rebound-map": figures.rebound_map(rs),
        "trade-off": figures.trade_off(study),
        "importance-objective": figures.importance(study, rs, "value"),
        "importance-rebound": figures.importance(study, rs, "rebound"),
        "history": figures.history(study) if complete(rs) else figures._empty("Optimisation history", "no completed trial yet"),
        "timeline": figures.worker_timeline(rs),
        "methods": figures.methods(rs),
    }
    trace = study.user_attrs.get("trace")
    if trace:
        figs["trace-vs-search"] = figures.trace_vs_search(trace["effects"], rs)
        figs["trace-summary"] = figures.trace_summary(trace["effects"], trace["traced"])
    return Report(figs, summary(study, rs), metric)


def summary(study: Any, rs: list) -> str:
    counts: dict[str, int] = {}
    for r in rs:
        counts[r.state] = counts.get(r.state, 0) + 1
    parts = [f"<p>Trials by state: {', '.join(f'{k.lower()} {v}' for k, v in sorted(counts.items())) or 'none'}.</p>"]
    methods = sorted({r.hparams.get("method", "rome") for r in rs if r.hparams})
    mode = rs[0].mode if rs else "independent"
    parts.append(f"<p>Edit method{'s' if len(methods) > 1 else ''}: {html.escape(', '.join(methods) or 'rome')}; "
                 f"edit mode: {html.escape(mode)} (tuner.edit.modes).</p>")
    done = complete(rs)
    if len(done) == 0:
        failed = counts.get("FAIL", 0)
        msg = "Only failed trials so far" if failed and not counts.get("PRUNED") else "No completed trial yet"
        parts.append(f"<p class='warn'>{msg}: the figures fill in as trials complete.</p>")
        return "\n".join(parts)
    if len(done) == 1:
        parts.append("<p class='warn'>Only one completed trial: surfaces and importances need more.</p>")
    infeasible = len(done) - len(complete_feasible(rs))
    if infeasible:
        parts.append(f"<p class='warn'>{infeasible} completed trial(s) are infeasible — more disabling edits "
                     "(update norm or generation-entropy collapse) than the references made, a specificity below "
                     "theirs, or no edit at all (the launch summary says which); they are never the best trial.</p>")
    if not complete_feasible(rs):
        return "\n".join(parts)
    best = best_first(complete_feasible(rs), lambda r: r.value, lambda r: r.number)[0]
    parts.append(f"<h3>Best trial #{best.number}: objective {best.value:.4f} ({html.escape(best.setting)})</h3>")
    parts.append("<table><tr><th>hyperparameter</th><th>value</th></tr>" + "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.5g}</td></tr>" if isinstance(v, float) else
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in best.params.items()) + "</table>")
    if best.per_fact:
        cols = [c for c in SHOWN if any(c in m for m in best.per_fact)]
        head = "".join(f"<th>{c}</th>" for c in cols)
        body = "".join("<tr>" + "".join(
            f"<td>{m.get(c):.4g}</td>" if isinstance(m.get(c), float) else f"<td>{m.get(c)}</td>" for c in cols) + "</tr>"
            for m in best.per_fact)
        parts.append(f"<h3>Per-fact metrics of the best trial</h3><table><tr>{head}</tr>{body}</table>")
        if "retention" in best.mean:
            parts.append(f"<p>Retention (sequential mode): {best.mean['retention']:.2f} of the facts edited "
                         "successfully were still edited on the final model.</p>")
    from tuner.study.verdict import rows_table, trade_off_line, tuning_rows

    rows = tuning_rows(study, None)
    if rows:
        parts.append(f"<h3 id='references'>References on the tuning facts</h3>"
                     f"<pre>{html.escape(rows_table(rows, 'ROME textbook, EasyEdit defaults, unedited model:'))}</pre>")
    line = trade_off_line(study)
    if line:
        parts.append(f"<p id='trade-off'>{html.escape(line)}</p>")
    record = study.user_attrs.get("holdout")
    if record:
        parts.append(holdout_table(record))
    return "\n".join(parts)


def holdout_table(record: dict) -> str:
    """``tuner validate``'s table: the top trials and the references on the held-out facts."""
    from tuner.study.validate import HEADER, cells, verdict

    head = "".join(f"<th>{html.escape(c)}</th>" for c in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells(r, record)) + "</tr>"
                   for r in record["rows"])
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in verdict(record))
    return (f"<h3 id='holdout'>Held-out validation on {len(record['facts'])} facts (never tuned on)</h3>"
            f"<table><tr>{head}</tr>{body}</table><ul id='verdict'>{lines}</ul>")


TITLES = {
    "loss-surface-3d": "Loss surface (3-D)",
    "trajectories": "Trajectories of the best, median, worst and top trials",
    "rebound-map": "Rebound map",
    "trade-off": "Efficacy–specificity trade-off",
    "importance-objective": "Importance for the objective",
    "importance-rebound": "Importance for rebound",
    "history": "Optimisation history",
    "timeline": "Trials per worker",
    "methods": "Methods per layer and window",
    "trace-vs-search": "Causal trace vs. search",
    "trace-summary": "Causal trace: average indirect effect",
}

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>rome-tuner report: {name}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; margin: .5em 0 1em; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
.warn {{ color: #a60; font-weight: bold; }} section {{ margin-bottom: 2.5em; }} select {{ font-size: 1em; }}
</style></head><body>
<h1>rome-tuner report: study “{name}”</h1>
<section id="summary"><h2>Summary</h2>{summary}</section>
{sections}
<script>
function showSurface(id) {{
  document.querySelectorAll('.surface-choice').forEach(function (d) {{ d.style.display = (d.id === id) ? 'block' : 'none'; }});
  var el = document.getElementById(id).querySelector('.plotly-graph-div');
  if (el && window.Plotly) {{ Plotly.Plots.resize(el); }}
}}
</script>
</body></html>
"""


def write(report: Report, study_name: str, out_dir: Path) -> Path:
    surfaces = [k for k in report.figures if k.startswith("loss-surface") and k != "loss-surface-3d"]
    sections = []
    for i, (fid, fig) in enumerate(report.figures.items()):
        div = fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=f"fig-{fid}",
                          default_width="100%", default_height=fig.layout.height or 520)
        if fid not in surfaces:
            title = html.escape(TITLES.get(fid, fid.replace("-", " ").capitalize()))
            sections.append(f"<section id='{fid}'><h2>{title}</h2>{div}</section>")
            continue
        if fid == surfaces[0]:
            options = "".join(f"<option value='choice-{s}'>{s.removeprefix('loss-surface-') if s != 'loss-surface' else report.metric}</option>"
                              for s in surfaces)
            sections.append("<section id='surface'><h2>Loss surface</h2><label>metric: "
                            f"<select onchange='showSurface(this.value)'>{options}</select></label>")
        hidden = "" if fid == surfaces[0] else " style='display:none'"
        sections.append(f"<div class='surface-choice' id='choice-{fid}'{hidden}>{div}</div>")
        if fid == surfaces[-1]:
            sections.append("</section>")
    page = PAGE.format(name=html.escape(study_name), summary=report.summary_html, sections="\n".join(sections))
    path = out_dir / "index.html"
    atomic_write_text(path, page)
    atomic_write_text(out_dir / "figures.json", json.dumps(list(report.figures)))
    return path


def write_report(study: Any, cfg: Any, out_dir: Path, *, x: str | None = None, y: str | None = None,
                 metric: str = "value", top_k: int = 3) -> Path:
    """Build the figures, write the page, and store the figures in the study for the dashboard."""
    from tuner.errors import ConfigError
    from tuner.hparams import KNOBS
    from tuner.report.dashboard import publish
    from tuner.study.setup import metric_names

    for axis in (x, y):
        if axis is not None and axis not in KNOBS:
            raise ConfigError(f"--x/--y: unknown hyperparameter {axis!r}; choose from {', '.join(cfg.search.names)}")
    report = build(study, cfg, x=x, y=y, metric=metric, top_k=top_k)
    path = write(report, study.study_name, out_dir)
    publish(study, report, metric_names(cfg))
    return path
