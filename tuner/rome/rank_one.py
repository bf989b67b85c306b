"""The rank-one update (ROME §3.1, eq. 2):  Ŵ = W + Λ uᵀ  written into the rewrite module.

    u = C⁻¹ k* / ‖C⁻¹ k*‖          (C⁻¹ only with mom2_adjustment; else u = k*/‖k*‖)
    Λ = (v* − W k) / (uᵀ k)        (k: the bare prompt's key, so Ŵ k = v* exactly)

For any key k' with k'ᵀ C⁻¹ k* = 0 the output is unchanged. ``weight_update`` restores the original
weight bit-exactly on exit, even if the block raises."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from tuner.rome.adapters import Adapter
from tuner.rome.hooks import get_module


def left_vector(k_star: torch.Tensor, mom2: torch.Tensor | None, ridge: float = 0.0) -> torch.Tensor:
    """u (d_ff,): the direction of keys the edit responds to."""
    k = k_star.double()
    if mom2 is not None:
        c = mom2.double().to(k.device)
        if ridge > 0:
            c = c + ridge * c.diagonal().mean() * torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
        k = torch.linalg.solve(c, k)
    return (k / k.norm()).float()


def rank_one_delta(
    u: torch.Tensor, key: torch.Tensor, value_init: torch.Tensor, v_star: torch.Tensor
) -> torch.Tensor:
    """ΔW as (d_model, d_ff): Λ uᵀ with Λ = (v* − W k)/(uᵀ k)."""
    lam = (v_star.double() - value_init.double()) / torch.dot(u.double(), key.double())
    return torch.outer(lam, u.double())


def rewrite_weight(model: Any, adapter: Adapter, layer: int) -> torch.nn.Parameter:
    return get_module(model, adapter.rewrite.format(layer)).weight


@contextmanager
def weight_update(model: Any, adapter: Adapter, layer: int, delta_w: torch.Tensor) -> Iterator[None]:
    """Add ``delta_w`` (d_model × d_ff) to the rewrite weight for the duration of the block."""
    weight = rewrite_weight(model, adapter, layer)
    original = weight.detach().clone()
    upd = delta_w if adapter.weight_layout == "out_in" else delta_w.T  # Conv1D stores (d_ff, d_model)
    if upd.shape != weight.shape:
        raise ValueError(f"update shape {tuple(upd.shape)} does not match weight {tuple(weight.shape)}")
    try:
        with torch.no_grad():
            weight.add_(upd.to(device=weight.device, dtype=weight.dtype))
        yield
    finally:
        with torch.no_grad():
            weight.copy_(original)
