"""Read a module's input and output at one token per prompt — the key k (rewrite-module input)
and value W k (its output) at the fact token."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tuner.plumbing.adapters import Adapter
from tuner.plumbing.hooks import Trace, get_module
from tuner.plumbing.tokens import make_batch, pad_id_of, padding_side, subject_token_index


@torch.no_grad()
def module_io_at(
    model: Any,
    tok: Any,
    adapter: Adapter,
    layer: int,
    prompts: Sequence[str],
    subject: str,
    fact_token: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewrite-module (input, output) at each prompt's fact token: ((N, d_ff), (N, d_model))."""
    encoded = [subject_token_index(tok, p, subject, fact_token) for p in prompts]
    batch = make_batch(
        [ids for ids, _ in encoded],
        pad_id=pad_id_of(tok),
        side=padding_side(tok, adapter.padding_side),
        device=next(model.parameters()).device,
    )
    with Trace(model, adapter.rewrite.format(layer), retain_input=True, retain_output=True) as tr:
        model(**batch.model_kwargs(model))
    x, y = tr.input, tr.output
    x, y = adapter.batch_first(x), adapter.batch_first(y)
    rows = torch.arange(len(prompts), device=x.device)
    cols = torch.tensor([batch.offsets[i] + idx for i, (_, idx) in enumerate(encoded)], device=x.device)
    return x[rows, cols].float(), y[rows, cols].float()


@torch.no_grad()
def module_output(model: Any, adapter: Adapter, layer: int, key: torch.Tensor) -> torch.Tensor:
    """The rewrite module's output (d_model,) for one input ``key`` (d_ff,), bias included."""
    module = get_module(model, adapter.rewrite.format(layer))
    weight = next(module.parameters())
    return module(key.to(device=weight.device, dtype=weight.dtype)[None])[0].float()


def rewrite_weight(model: Any, adapter: Adapter, layer: int) -> torch.nn.Parameter:
    """The weight of the rewrite module (the MLP down-projection) of ``layer``."""
    return get_module(model, adapter.rewrite.format(layer)).weight
