"""The record of one edit's measures: every key an edit's ``metrics`` carries, declared once with
what it means. ``tuner edit --json`` prints it, a trial stores its ``STORED`` keys per fact, the
scoring reads it (``tuner.metrics.scoring``), the dashboard note and the report show ``SHOWN``."""

from __future__ import annotations

from typing import Literal, TypedDict


class EditMetrics(TypedDict, total=False):
    # CounterFact, after the edit (``tuner.metrics.counterfact.edit_metrics``); ``_pre``: the unedited model
    final_prob: float  # P(new | rewrite prompt), sequence probability
    pre_prob: float  # the same before the edit
    true_prob: float  # P(true | rewrite prompt) after the edit
    efficacy: float  # 1.0 when the new target beats the true one on the rewrite prompt (mean log-prob)
    paraphrase: float | None  # share of paraphrase prompts where the new target wins
    paraphrase_prob: float | None  # mean P(new | paraphrase)
    specificity: float | None  # share of neighbourhood prompts where the true target still wins
    specificity_pre: float | None
    neighborhood_drop: float | None  # mean P_before(true) − P_after(true) on the neighbourhood
    neighborhood_keep: float | None  # mean min(1, P_after(true) / P_before(true)) on the neighbourhood
    efficacy_pre: float
    paraphrase_pre: float | None
    paraphrase_prob_pre: float | None
    # the v* optimisation (``tuner.metrics.stability.stability_metrics``)
    peak_prob: float  # highest P(new | bare prompt) over the forward passes
    peak_step: int
    opt_final_prob: float  # P(new | bare prompt) of the selected iterate
    selected_step: int
    n_steps: int  # forward passes run
    rebound: float  # peak_prob − opt_final_prob
    oscillation: float  # total upward variation of the loss / the initial loss
    final_loss: float
    early_stopped: bool
    # the update and fluency (``tuner.edit.editor.Editor.result``)
    update_norm: float  # ‖ΔW‖/‖W‖ (the model's total change in batch and sequential modes)
    division_factor: float | None  # uᵀk (ROME only)
    gen_entropy_pre: float  # n-gram entropy of greedy continuations before the edit
    gen_entropy: float  # ... after it
    gen_entropy_drop: float
    disabling_edit: bool  # judged by the editor's DisablingRule (the study's thresholds)
    # how it was written (``tuner.edit.modes``)
    mode: Literal["independent", "batch", "sequential"]
    memit_pass: bool  # MEMIT wrote (part of) this fact
    prob_at_edit: float  # sequential: P(new | rewrite prompt) right after the fact's own edit
    efficacy_at_edit: float  # sequential: efficacy right after the fact's own edit


FIELDS = tuple(EditMetrics.__annotations__)
AT_EDIT = ("prob_at_edit", "efficacy_at_edit")
"""Sequential mode only."""
STORED = tuple(k for k in FIELDS if k not in ("gen_entropy_pre", "mode", *AT_EDIT))
"""The per-fact measures a trial stores (``per_fact``; sequential mode adds ``AT_EDIT``)."""
MEANS = ("final_prob", "rebound", "peak_prob", "efficacy", "specificity", "paraphrase", "oscillation",
         "final_loss", "n_steps", "early_stopped", "update_norm", "gen_entropy_drop", "disabling_edit")
"""Averaged over a trial's facts (its ``mean`` attribute)."""
SHOWN = ("case_id", "final_prob", "pre_prob", "peak_prob", "rebound", "efficacy", "paraphrase", "specificity",
         "oscillation", "n_steps", "early_stopped", "update_norm", "division_factor", "gen_entropy_drop",
         "disabling_edit", "memit_pass", *AT_EDIT, "seconds")
"""The per-fact columns of a trial's dashboard note and of the report's best-trial table."""
