"""Metrics after an edit, by CounterFact's definitions (the trajectory's stability: ``tuner.metrics.stability``).

Probabilities of multi-token targets are sequence probabilities (product over tokens);
comparisons between the new and the true target use the mean per-token log-probability, as in
ROME's CounterFact evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch

from tuner.metrics.record import EditMetrics
from tuner.metrics.row_updates import RowUpdates
from tuner.plumbing.adapters import Adapter
from tuner.plumbing.tokens import encode, make_batch, pad_id_of, padding_side, target_logprobs_at, target_token_ids


@torch.no_grad()
def target_logprobs(
    model: Any, tok: Any, adapter: Adapter, pairs: Sequence[tuple[str, str]], batch_size: int = 64,
    *, edits: RowUpdates | None = None, pair_fact: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each (prompt, target): (sum of target log-probs, mean per-token log-prob), each (N,).
    With ``edits``, pair i is scored with the rank-one update of fact ``pair_fact[i]``."""
    device = next(model.parameters()).device
    sums, means = [], []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        rows, spans = [], []
        for prompt, target in chunk:
            p_ids, t_ids = encode(tok, prompt), target_token_ids(tok, prompt, target)
            rows.append(p_ids + t_ids[:-1])
            spans.append((len(p_ids), t_ids))
        batch = make_batch(rows, pad_id=pad_id_of(tok), side=padding_side(tok, adapter.padding_side), device=device)
        with (nullcontext() if edits is None else edits.rows(torch.tensor(pair_fact[start : start + batch_size]))):
            logits = model(**batch.model_kwargs(model)).logits  # (B, T, V)
        for i, (n_prompt, t_ids) in enumerate(spans):
            cols = torch.arange(len(t_ids), device=device) + batch.offsets[i] + n_prompt - 1
            lp = target_logprobs_at(logits, torch.tensor([i], device=device), cols[None],
                                    torch.tensor(t_ids, device=device))[0]  # (L,)
            sums.append(lp.sum())
            means.append(lp.mean())
    return torch.stack(sums).cpu(), torch.stack(means).cpu()


def fact_pairs(fact: Any) -> tuple[list[tuple[str, str]], dict[str, slice]]:
    """All (prompt, target) pairs a fact is scored on, and where each group sits."""
    groups = {
        "rewrite": [fact.rewrite_prompt],
        "paraphrase": list(fact.paraphrase_prompts),
        "neighborhood": list(fact.neighborhood_prompts),
    }
    pairs: list[tuple[str, str]] = []
    where: dict[str, slice] = {}
    for name, prompts in groups.items():
        start = len(pairs)
        for p in prompts:
            pairs += [(p, fact.target_new), (p, fact.target_true)]
        where[name] = slice(start, len(pairs))
    return pairs, where


def score_fact(model: Any, tok: Any, adapter: Adapter, fact: Any) -> dict[str, torch.Tensor]:
    """Per group: sequence probability and mean log-prob of the new and true target."""
    return score_facts(model, tok, adapter, [fact])[0]


def score_facts(model: Any, tok: Any, adapter: Adapter, facts: Sequence[Any], *,
                edits: RowUpdates | None = None) -> list[dict[str, Any]]:
    """``score_fact`` for several facts in shared batches; with ``edits`` (one update per fact,
    in order) each fact is scored under its own edit."""
    pairs, pair_fact, layout = [], [], []
    for f, fact in enumerate(facts):
        fp, where = fact_pairs(fact)
        layout.append((len(pairs), where))
        pairs += fp
        pair_fact += [f] * len(fp)
    sums, means = target_logprobs(model, tok, adapter, pairs, batch_size=256, edits=edits, pair_fact=pair_fact)
    out = []
    for start, where in layout:
        groups = {}
        for name, sl in where.items():
            s, m = sums[start + sl.start : start + sl.stop], means[start + sl.start : start + sl.stop]
            groups[name] = {"p_new": s[0::2].exp(), "p_true": s[1::2].exp(), "lp_new": m[0::2], "lp_true": m[1::2]}
        out.append(groups)
    return out


def _mean(x: torch.Tensor) -> float | None:
    return float(x.float().mean()) if x.numel() else None


def edit_metrics(pre: dict[str, Any], post: dict[str, Any]) -> EditMetrics:
    """CounterFact's per-fact measures after the edit (``post``) and, ``_pre``, of the unedited
    model (``pre``): success = the new target beats the true one (per-token mean log-prob), and
    probabilities (sequence probability). ``neighborhood_keep``: the share of the true answer's
    probability the neighbourhood prompts keep, min(1, P_after(true) / P_before(true)) averaged."""
    rw, para, nb = post["rewrite"], post["paraphrase"], post["neighborhood"]
    pre_rw, pre_para, pre_nb = pre["rewrite"], pre["paraphrase"], pre["neighborhood"]
    return {
        "final_prob": float(rw["p_new"][0]),
        "pre_prob": float(pre["rewrite"]["p_new"][0]),
        "true_prob": float(rw["p_true"][0]),
        "efficacy": float(rw["lp_new"][0] > rw["lp_true"][0]),
        "paraphrase": _mean(para["lp_new"] > para["lp_true"]),
        "paraphrase_prob": _mean(para["p_new"]),
        "specificity": _mean(nb["lp_true"] > nb["lp_new"]),
        "specificity_pre": _mean(pre_nb["lp_true"] > pre_nb["lp_new"]),
        "neighborhood_drop": _mean(pre_nb["p_true"] - nb["p_true"]),
        "neighborhood_keep": _mean((nb["p_true"] / pre_nb["p_true"].clamp_min(1e-30)).clamp(max=1.0)),
        "efficacy_pre": float(pre_rw["lp_new"][0] > pre_rw["lp_true"][0]),
        "paraphrase_pre": _mean(pre_para["lp_new"] > pre_para["lp_true"]),
        "paraphrase_prob_pre": _mean(pre_para["p_new"]),
    }
