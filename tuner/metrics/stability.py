"""How stable a v* optimisation was, from its per-step trajectory: peak, rebound (peak − the
selected iterate) and loss oscillation — the measures the default objective penalises."""

from __future__ import annotations

from tuner.metrics.record import EditMetrics


def stability_metrics(trajectory: dict[str, list[float]], selected_step: int) -> EditMetrics:
    """From the v* trajectory (``prob`` = P(new | bare prompt) per forward pass): the peak, the
    probability of the iterate the edit uses (``opt_final_prob``), rebound = peak − that, and loss
    oscillation (total upward variation of the loss over the initial loss; 0 for a monotone descent)."""
    probs = trajectory["prob"]
    peak = max(probs)
    end = probs[selected_step]
    loss = trajectory["loss"]
    ups = sum(max(0.0, b - a) for a, b in zip(loss, loss[1:]))
    return {
        "peak_prob": peak,
        "peak_step": probs.index(peak),
        "opt_final_prob": end,
        "selected_step": selected_step,
        "n_steps": len(loss),
        "rebound": peak - end,
        "oscillation": ups / loss[0] if loss and loss[0] > 0 else 0.0,
        "final_loss": loss[selected_step] if loss else float("nan"),
    }
