"""The ROME-specific figures (custom Plotly) and the ones Optuna already draws.

    tuner report --study default      # storage/reports/default/index.html"""

from __future__ import annotations

from typing import Any

from tuner.report.records import Row, complete, complete_feasible
from tuner.study.objective import best_first


def _empty(title: str, message: str) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.update_layout(title=title, xaxis=dict(visible=False), yaxis=dict(visible=False))
    fig.add_annotation(text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5, font=dict(size=16))
    return fig


def pick_trials(rows: list[Row], top_k: int = 3) -> list[tuple[str, Row]]:
    """best, median, worst (by objective) and the next top-k, without repeats."""
    done = best_first(complete_feasible(rows), lambda r: r.value, lambda r: r.number)
    if not done:
        return []
    chosen = [("best", done[0]), ("median", done[len(done) // 2]), ("worst", done[-1])]
    chosen += [(f"top {i + 1}", r) for i, r in enumerate(done[1 : 1 + top_k])]
    seen, out = set(), []
    for label, r in chosen:
        if r.number not in seen:
            seen.add(r.number)
            out.append((label, r))
    return out


def trajectories(rows: list[Row], top_k: int = 3) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    chosen = [(label, r) for label, r in pick_trials(rows, top_k) if r.trajectory]
    title = "Optimisation trajectories of v*: target probability and loss per step (mean over the trial's facts)"
    if not chosen:
        return _empty(title, "no completed trial with a trajectory yet")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("P(new target) during optimisation", "loss (NLL + KL + decay)"))
    palette = ["#1f77b4", "#7f7f7f", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    for i, (label, r) in enumerate(chosen):
        color = palette[i % len(palette)]
        prob, loss = r.mean_curve("prob"), r.mean_curve("loss")
        name = f"{label}: trial {r.number} (value {r.value:.3f}; {r.setting})"
        fig.add_trace(go.Scatter(y=prob, mode="lines", name=name, line=dict(color=color), legendgroup=name), 1, 1)
        fig.add_trace(go.Scatter(y=loss, mode="lines", name=name, line=dict(color=color), legendgroup=name,
                                 showlegend=False), 2, 1)
        if prob:
            peak = max(range(len(prob)), key=prob.__getitem__)
            fig.add_trace(go.Scatter(x=[peak], y=[prob[peak]], mode="markers", marker=dict(symbol="star", size=11, color=color),
                                     name=f"peak {prob[peak]:.3f}", legendgroup=name, showlegend=False,
                                     hovertext=f"peak {prob[peak]:.3f} at step {peak}; end {prob[-1]:.3f}; "
                                               f"rebound {prob[peak] - prob[-1]:.3f}"), 1, 1)
            if prob[peak] - prob[-1] > 0.02:
                fig.add_annotation(x=len(prob) - 1, y=prob[-1], ax=peak, ay=prob[peak], xref="x", yref="y",
                                   axref="x", ayref="y", showarrow=True, arrowhead=2, arrowcolor=color,
                                   text=f"rebound {prob[peak] - prob[-1]:.2f}", font=dict(color=color))
    fig.update_yaxes(title_text="P(new)", range=[0, 1], row=1, col=1)
    fig.update_yaxes(title_text="loss", type="log", row=2, col=1)
    fig.update_xaxes(title_text="optimisation step", row=2, col=1)
    fig.update_layout(title=title, height=700, legend=dict(orientation="h", y=-0.12))
    return fig


def rebound_map(rows: list[Row]) -> Any:
    import plotly.graph_objects as go

    pts = [r for r in complete(rows) if "rebound" in r.mean and "v_lr" in r.params]
    title = "Rebound (peak − end of P(new)) vs v_lr and steps, coloured by layer"
    if not pts:
        return _empty(title, "no completed trial yet")
    steps_key = "v_num_grad_steps"
    fig = go.Figure(go.Scatter(
        x=[r.params["v_lr"] for r in pts],
        y=[r.params.get(steps_key, 0) for r in pts],
        mode="markers",
        marker=dict(size=[6 + 40 * r.mean["rebound"] for r in pts], color=[r.params.get("layer", 0) for r in pts],
                    colorscale="Turbo", showscale=True, colorbar=dict(title=dict(text="layer")),
                    line=dict(color="black", width=0.5)),
        text=[f"trial {r.number}: rebound {r.mean['rebound']:.3f}; {r.setting}" for r in pts],
        hoverinfo="text", name="trials"))
    fig.update_layout(title=title + " (marker size ∝ rebound)", xaxis_title="v_lr (log scale)",
                      yaxis_title="v_num_grad_steps")
    fig.update_xaxes(type="log")
    return fig


def trade_off(study: Any) -> Any:
    """Efficacy vs neighbourhood specificity of every completed trial (means on the tuning
    facts), the Pareto front joined, its knee circled, and the references marked."""
    import plotly.graph_objects as go

    from tuner.study.references import REFERENCES
    from tuner.study.verdict import knee, pareto_front, scored_trials

    title = "Efficacy–specificity trade-off on the tuning facts (Pareto front, knee, references)"
    trials = scored_trials(study)
    if not trials:
        return _empty(title, "no scored trial yet")

    def xy(ts: list[Any]) -> tuple[list[float], list[float]]:
        return ([t.user_attrs["score"]["efficacy"] for t in ts],
                [t.user_attrs["score"].get("specificity") or 0.0 for t in ts])

    def text(t: Any) -> str:
        s = t.user_attrs["score"]
        return f"trial {t.number}: S {s['S']:.3f}, value {s['value']:.4f}" + ("" if s["feasible"] else f"; {s['why']}")

    fig = go.Figure()
    x, y = xy(trials)
    fig.add_trace(go.Scatter(x=x, y=y, mode="markers", name="trials", text=[text(t) for t in trials],
                             hoverinfo="text", marker=dict(color=["#1f77b4" if t.user_attrs["score"]["feasible"]
                                                                  else "#aaaaaa" for t in trials], size=7)))
    front = pareto_front(study)
    x, y = xy(front)
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name="Pareto front", text=[text(t) for t in front],
                             hoverinfo="text", line=dict(color="#d62728")))
    k = knee(front)
    if k is not None:
        x, y = xy([k])
        fig.add_trace(go.Scatter(x=x, y=y, mode="markers", name=f"knee (trial {k.number})", hoverinfo="name",
                                 marker=dict(size=18, symbol="circle-open", color="#d62728", line=dict(width=2))))
    for row in (study.user_attrs.get(REFERENCES) or {}).get("rows", []):
        fig.add_trace(go.Scatter(x=[row["efficacy"]], y=[row.get("specificity") or 0.0], mode="markers+text",
                                 name=row["label"], text=[row["label"]], textposition="top center",
                                 marker=dict(size=14, symbol="star")))
    fig.update_layout(title=title, xaxis_title="efficacy (share of facts edited)",
                      yaxis_title="neighbourhood specificity", xaxis=dict(range=[-0.05, 1.05]),
                      yaxis=dict(range=[-0.05, 1.05]))
    return fig


def methods(rows: list[Row]) -> Any:
    """The objective per method over the edited layer (the window's first layer for memit and
    hybrid): which method works where."""
    import plotly.graph_objects as go

    pts = [r for r in complete(rows) if r.hparams]
    title = "Objective by method and layer (memit/hybrid: the window's first layer; hover: the window)"
    if not pts:
        return _empty(title, "no completed trial yet")
    fig = go.Figure()
    offsets = {"rome": -0.2, "memit": 0.0, "hybrid": 0.2}
    colors = {"rome": "#1f77b4", "memit": "#d62728", "hybrid": "#2ca02c"}
    for method in ("rome", "memit", "hybrid"):
        sel = [r for r in pts if r.hparams.get("method", "rome") == method]
        if not sel:
            continue
        fig.add_trace(go.Scatter(
            x=[r.hparams["layer"] + offsets[method] for r in sel], y=[r.value for r in sel], mode="markers",
            name=method, marker=dict(color=colors[method], symbol=["circle" if r.feasible else "x" for r in sel]),
            text=[f"trial {r.number}: value {r.value:.4f}; {r.setting}" + ("" if r.feasible else "; infeasible")
                  for r in sel], hoverinfo="text"))
    fig.update_layout(title=title, xaxis_title="layer (window start)", yaxis_title="objective",
                      xaxis=dict(dtick=1))
    return fig


def worker_timeline(rows: list[Row]) -> Any:
    import plotly.graph_objects as go

    pts = [r for r in rows if r.start is not None and r.end is not None]
    title = "Trials per worker over time (parallel bars = workers running at once)"
    if not pts:
        return _empty(title, "no finished trial yet")
    colors = {"COMPLETE": "#2ca02c", "PRUNED": "#ff7f0e", "FAIL": "#d62728"}
    fig = go.Figure()
    for state, color in colors.items():
        sel = [r for r in pts if r.state == state]
        if not sel:
            continue
        fig.add_trace(go.Bar(
            base=[r.start.isoformat() for r in sel],
            x=[(r.end - r.start).total_seconds() * 1000 for r in sel],
            y=[r.worker for r in sel], orientation="h", name=state.lower(), marker_color=color,
            hovertext=[f"trial {r.number}: {r.setting}" for r in sel], hoverinfo="text+y", textposition="none"))
    fig.update_layout(title=title, barmode="overlay", xaxis=dict(type="date", title="wall-clock time"),
                      yaxis_title="worker (host:pid, device)")
    return fig


def importance(study: Any, rows: list[Row], target: str) -> Any:
    """Parameter importances from Optuna's evaluators: PED-ANOVA, or fANOVA with scikit-learn."""
    import optuna
    import plotly.graph_objects as go

    title = f"Hyperparameter importance for {'the objective' if target == 'value' else target}"
    done = complete(rows)
    if len(done) < 3:
        return _empty(title, f"{len(done)} completed trial(s): importance needs at least 3")
    try:
        import sklearn  # noqa: F401

        evaluator: Any = optuna.importance.FanovaImportanceEvaluator(seed=0)
        name = "fANOVA"
    except ImportError:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        name = "PED-ANOVA"
    tgt = None if target == "value" else (lambda t: t.user_attrs.get("mean", {}).get(target, 0.0))
    if len(study.directions) > 1 and tgt is None:
        tgt = lambda t: t.values[0]  # noqa: E731  (multi-objective: the first objective)
        title += " (first objective)"
    import warnings

    try:
        with warnings.catch_warnings():
            # PED-ANOVA ranks parameters by how they reach *low* target values: for rebound that is
            # exactly the question ("what keeps rebound low"); the objective passes no target.
            warnings.simplefilter("ignore", UserWarning)
            imp = optuna.importance.get_param_importances(study, evaluator=evaluator, target=tgt)
    except (RuntimeError, ValueError) as exc:
        return _empty(title, f"importance unavailable: {str(exc).splitlines()[0]}")
    names = list(imp)[::-1]
    fig = go.Figure(go.Bar(x=[imp[n] for n in names], y=names, orientation="h", marker_color="#1f77b4"))
    fig.update_layout(title=f"{title} ({name})", xaxis_title="importance (normalised)", yaxis_title="hyperparameter")
    return fig


def history(study: Any) -> Any:
    import optuna

    if len(study.directions) > 1:
        return optuna.visualization.plot_pareto_front(study)
    fig = optuna.visualization.plot_optimization_history(study, target_name="objective")
    fig.update_layout(title="Optimisation history", xaxis_title="trial", yaxis_title="objective")
    return fig


def trace_heatmaps(trace: Any) -> Any:
    """One fact: P(answer) with each site restored, layers × tokens, for state / MLP / attention."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    labels = [f"{t}*" if trace.subject_first <= i <= trace.subject_last else t for i, t in enumerate(trace.tokens)]
    labels = [f"{i}:{t}" for i, t in enumerate(labels)]
    titles = ("hidden state restored", "MLP window restored", "attention window restored")
    fig = make_subplots(rows=1, cols=3, subplot_titles=titles, horizontal_spacing=0.06)
    for col, kind in enumerate(("state", "mlp", "attn"), start=1):
        z = trace.scores[kind]
        fig.add_trace(go.Heatmap(z=z, x=labels, y=list(range(len(z))), coloraxis="coloraxis"), 1, col)
        fig.update_xaxes(title_text="token (* = subject)", tickangle=-45, row=1, col=col)
        fig.update_yaxes(title_text="layer", dtick=1, row=1, col=col)
    fig.update_layout(title=f"Causal trace of {trace.prompt!r} → {trace.answer!r} "
                            f"(clean {trace.clean_prob:.3f}, corrupted {trace.corrupt_prob:.3f})", height=520,
                      coloraxis=dict(colorscale="Purples", cmin=0, cmax=max(trace.clean_prob, 1e-6),
                                     colorbar=dict(title=dict(text="P(answer)"))))
    return fig


def trace_summary(effects: dict[str, list[float]], n_facts: int) -> Any:
    """Average indirect effect at the subject's last token: layers × {state, mlp, attn}."""
    import plotly.graph_objects as go

    kinds = ["state", "mlp", "attn"]
    z = [[effects[k][layer] for k in kinds] for layer in range(len(effects["state"]))]
    fig = go.Figure(go.Heatmap(z=z, x=["hidden state", "MLP", "attention"], y=list(range(len(z))),
                               colorscale="Purples", colorbar=dict(title=dict(text="indirect effect"))))
    fig.update_layout(title=f"Average indirect effect at the subject's last token ({n_facts} facts)",
                      xaxis_title="restored site", yaxis_title="layer", yaxis=dict(dtick=1))
    return fig


def trace_vs_search(effects: dict[str, list[float]], rows: list[Row]) -> Any:
    """Did localisation predict the best edit layer? MLP effect per layer next to the best
    objective the search reached at that layer."""
    import plotly.graph_objects as go

    n = len(effects["mlp"])
    best = []
    for layer in range(n):
        vals = [r.value for r in complete(rows) if r.params.get("layer") == layer]
        best.append(max(vals) if vals else None)
    fig = go.Figure()
    fig.add_trace(go.Bar(x=list(range(n)), y=effects["mlp"], name="MLP indirect effect (trace)", marker_color="#33a02c"))
    fig.add_trace(go.Scatter(x=list(range(n)), y=best, name="best objective at this layer (search)", mode="lines+markers",
                             yaxis="y2", line=dict(color="#1f77b4")))
    fig.update_layout(title="Causal trace vs. search: does localisation predict the best edit layer?",
                      xaxis=dict(title="layer", dtick=1), yaxis=dict(title="indirect effect"),
                      yaxis2=dict(title="best objective", overlaying="y", side="right"),
                      legend=dict(orientation="h", y=-0.2))
    return fig
