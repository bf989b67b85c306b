"""The loss surface: a metric over two hyperparameters, interpolated from the trials.

Scattered trials are interpolated on a grid by inverse-distance weighting in the (normalised,
log where the parameter is log-scaled) parameter plane — enough to show where edits succeed;
every trial is drawn on top, pruned and failed ones with their own markers."""

from __future__ import annotations

from typing import Any

import numpy as np

from tuner.report.records import Row

INT_AXES = {"layer"}
STATE_MARKERS = {"COMPLETE": ("circle", "trial"), "PRUNED": ("x", "pruned"), "FAIL": ("diamond-open", "failed")}
LABELS = {"value": "objective (final_prob − λ·rebound)", "final_prob": "final P(new)", "rebound": "rebound (peak − end)",
          "final_loss": "final loss"}


def _axis(values: list[Any], log: bool) -> tuple[np.ndarray, list[str] | None]:
    if values and isinstance(values[0], str):
        cats = sorted(set(values))
        return np.array([cats.index(v) for v in values], dtype=float), cats
    arr = np.array(values, dtype=float)
    return (np.log10(arr) if log else arr), None


def idw_grid(x: np.ndarray, y: np.ndarray, z: np.ndarray, n: int = 40, power: float = 2.0, k: int = 8):
    """Inverse-distance weighting over the k nearest trials of each grid point (local, so a
    region without trials does not take the global mean). Returns (grid_x, grid_y, Z (ny, nx))."""
    gx = np.linspace(x.min(), x.max(), n) if x.max() > x.min() else np.array([x.min()])
    gy = np.linspace(y.min(), y.max(), n) if y.max() > y.min() else np.array([y.min()])
    sx = (x.max() - x.min()) or 1.0
    sy = (y.max() - y.min()) or 1.0
    X, Y = np.meshgrid(gx, gy)  # (n, n)
    d2 = ((X[..., None] - x) / sx) ** 2 + ((Y[..., None] - y) / sy) ** 2  # (n, n, N)
    k = min(k, len(z))
    near = np.argpartition(d2, k - 1, axis=-1)[..., :k]  # (n, n, k)
    d2k = np.take_along_axis(d2, near, axis=-1)
    w = 1.0 / np.maximum(d2k, 1e-12) ** (power / 2)
    Z = (w * z[near]).sum(-1) / w.sum(-1)
    return gx, gy, Z


def surface_figures(rows: list[Row], x: str, y: str, metric: str, log_params: set[str]) -> tuple[Any, Any]:
    import plotly.graph_objects as go

    have = [r for r in rows if x in r.params and y in r.params]
    done = [r for r in have if r.state == "COMPLETE" and r.metric(metric) is not None]
    title = f"{LABELS.get(metric, metric)} over {x} × {y}"
    fig2d, fig3d = go.Figure(), go.Figure()
    if len(done) >= 3:
        xv, xcats = _axis([r.params[x] for r in done], x in log_params)
        yv, ycats = _axis([r.params[y] for r in done], y in log_params)
        zv = np.array([r.metric(metric) for r in done], dtype=float)
        gx, gy, Z = idw_grid(xv, yv, zv)
        tx = (10 ** gx) if (x in log_params and xcats is None) else gx
        ty = (10 ** gy) if (y in log_params and ycats is None) else gy
        fig2d.add_trace(go.Contour(x=tx, y=ty, z=Z, colorscale="Viridis", contours_coloring="heatmap",
                                   colorbar=dict(title=dict(text=metric)), name="interpolated", opacity=0.9))
        fig3d.add_trace(go.Surface(x=gx, y=gy, z=Z, colorscale="Viridis", opacity=0.85, showscale=True,
                                   colorbar=dict(title=dict(text=metric))))
        fig3d.add_trace(go.Scatter3d(x=xv, y=yv, z=zv, mode="markers", name="trials",
                                     marker=dict(size=3, color="white", line=dict(color="black", width=1))))
        fig3d.update_layout(scene=dict(xaxis_title=f"log10 {x}" if x in log_params else x,
                                       yaxis_title=f"log10 {y}" if y in log_params else y, zaxis_title=metric))
    for state, (symbol, label) in STATE_MARKERS.items():
        pts = [r for r in have if r.state == state]
        if not pts:
            continue
        fig2d.add_trace(go.Scatter(
            x=[r.params[x] for r in pts], y=[r.params[y] for r in pts], mode="markers", name=label,
            marker=dict(symbol=symbol, size=8, color="white" if state == "COMPLETE" else "red",
                        line=dict(color="black", width=1)),
            text=[f"trial {r.number}: {metric}={r.metric(metric)}; {r.setting}" for r in pts], hoverinfo="text"))
    fig2d.update_layout(title=title, xaxis_title=x, yaxis_title=y, legend=dict(orientation="h", y=-0.18))
    for name, update in ((x, fig2d.update_xaxes), (y, fig2d.update_yaxes)):
        if name in log_params:
            update(type="log")
        elif name in INT_AXES:
            update(dtick=1)
    fig3d.update_layout(title=f"{title} (3-D)")
    if len(done) < 3:
        for fig in (fig2d, fig3d):
            fig.add_annotation(text=f"{len(done)} completed trial(s) with {x} and {y}: too few to interpolate",
                               showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    return fig2d, fig3d
