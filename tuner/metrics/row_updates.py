"""Rank-one updates applied per batch row, without touching the weight: Ŵk = Wk + Λ(uᵀk), so a
row of fact f gets Λ_f(u_fᵀk) added to the rewrite module's output — K ROME edits scored in one
batch (``tuner.metrics.counterfact``, ``tuner.metrics.fluency``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from tuner.plumbing.adapters import Adapter
from tuner.plumbing.hooks import Trace
from tuner.plumbing.module_io import rewrite_weight


class RowUpdates:
    """Rank-one updates applied per batch row through a hook on the rewrite module.

        edits = RowUpdates(model, adapter, layer, lams, us)    # (F, d_model), (F, d_ff)
        with edits.rows(row_fact):                             # (B,) fact index of each row
            model(**batch)

    Row b's output becomes W k + Λ_f (u_fᵀ k) with f = row_fact[b]: what the model with
    W + Λ_f u_fᵀ computes for that row."""

    def __init__(self, model: Any, adapter: Adapter, layer: int, lams: torch.Tensor, us: torch.Tensor) -> None:
        self.model, self.adapter, self.module = model, adapter, adapter.rewrite.format(layer)
        weight = rewrite_weight(model, adapter, layer)
        self.lams = lams.to(device=weight.device, dtype=torch.float32)
        self.us = us.to(device=weight.device, dtype=torch.float32)

    @contextmanager
    def rows(self, row_fact: torch.Tensor) -> Iterator[None]:
        index = row_fact.to(self.lams.device)
        tr: Trace

        def edit(out: torch.Tensor, _module: Any) -> torch.Tensor:
            x = tr.input  # the module's input k, set by the same hook before this runs
            x, view = self.adapter.batch_first(x), self.adapter.batch_first(out)  # (B, T, d)
            coeff = torch.einsum("btd,bd->bt", x.float(), self.us[index])  # (B, T): u_fᵀ k
            view += (coeff[..., None] * self.lams[index][:, None, :]).to(out.dtype)
            return out

        with Trace(self.model, self.module, retain_input=True, edit_output=edit) as tr:
            yield
