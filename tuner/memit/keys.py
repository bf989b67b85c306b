"""MEMIT's keys K_l (the rewrite-module input at layer l, averaged over the context templates) and
block ``top``'s output h at the bare prompt's fact token, in one pass stopped after ``top``."""

from __future__ import annotations

from typing import Any

import torch

from tuner.plumbing.adapters import Adapter
from tuner.plumbing.hooks import Trace, forward_until
from tuner.plumbing.tokens import make_batch, pad_id_of, padding_side
from tuner.rome.chunks import Chunks
from tuner.rome.compute_v import TOKENS_PER_CHUNK


@torch.no_grad()
def keys_and_hidden(
    model: Any,
    tok: Any,
    adapter: Adapter,
    layer: int,
    top: int,
    rows: list[list[tuple[list[int], int]]],
    *,
    max_facts_per_chunk: int | None = None,
    tokens_per_chunk: int = TOKENS_PER_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass (stopped after block ``top``) over every fact's template rows, in chunks of whole
    facts (halved on a CUDA out-of-memory): K (d_ff, N), the rewrite-module input at ``layer``
    averaged over the templates, and H (d_model, N), block ``top``'s output at the bare prompt's
    fact token, both float64."""
    device = next(model.parameters()).device
    side, pad = padding_side(tok, adapter.padding_side), pad_id_of(tok)
    n_facts, per_fact = len(rows), len(rows[0])
    width = max(len(ids) for fact in rows for ids, _ in fact)
    chunks = Chunks(n_facts, per_fact, width, tokens_per_chunk=tokens_per_chunk, max_facts=max_facts_per_chunk,
                    device=device)
    keys, hidden = [], []

    def read(facts: list[int]) -> None:
        flat = [r for f in facts for r in rows[f]]
        batch = make_batch([ids for ids, _ in flat], pad_id=pad, side=side, device=device)
        with Trace(model, adapter.rewrite.format(layer), retain_input=True) as k_tr, \
                Trace(model, adapter.layer.format(top), retain_output=True) as h_tr:
            forward_until(model, adapter.layer.format(top), **batch.model_kwargs(model))  # after h_tr's hook
        x, h = k_tr.input, h_tr.output
        x, h = adapter.batch_first(x), adapter.batch_first(h)
        b = torch.arange(len(flat), device=x.device)
        cols = torch.tensor([batch.offsets[i] + idx for i, (_, idx) in enumerate(flat)], device=x.device)
        keys.append(x[b, cols].double().view(len(facts), per_fact, -1).mean(1))  # (n, d_ff) over the templates
        hidden.append(h[b, cols].double().view(len(facts), per_fact, -1)[:, 0])  # (n, d_model) bare prompt

    chunks.run(read, range(n_facts))
    return torch.cat(keys).T, torch.cat(hidden).T
