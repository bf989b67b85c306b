"""The rank-one update (ROME §3.1, eq. 2):  Ŵ = W + Λ uᵀ  written into the rewrite module.

    u = C⁻¹ k* / ‖C⁻¹ k*‖          (C⁻¹ only with mom2_adjustment; else u = k*/‖k*‖)
    Λ = (v* − W k) / (uᵀ k)        key_mode rome:   k = the bare prompt's key, so Ŵ k = v*
                                   key_mode r-rome: k = k* (Gupta et al. 2024), so Ŵ k* = v*

C is factorised once per (layer, sample count, ridge) (``SecondMomentSolver``) and reused by
every edit. ``uᵀk`` is the *division factor*: when it is tiny, ‖Λ‖ explodes ("disabling edits").

For any key k' with k'ᵀ C⁻¹ k* = 0 the output is unchanged. ``weight_update`` restores the original
weight bit-exactly on exit, even if the block raises. ``RowUpdates`` (``tuner.metrics.row_updates``)
scores many such updates in one batch without writing them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from tuner.errors import EditError
from tuner.plumbing.adapters import Adapter
from tuner.plumbing.module_io import rewrite_weight


class SecondMomentSolver:
    """C⁻¹k for many k from one Cholesky factorisation of C (float64: C is ill-conditioned).

    ROME solves C x = k with no regularisation; ``ridge`` (λ, relative to C's mean diagonal) is
    0 by default and only there for a C that is singular, e.g. from a corpus with fewer distinct
    keys than d_ff."""

    def __init__(self, mom2: torch.Tensor, ridge: float = 0.0) -> None:
        c = mom2.double()
        if ridge > 0:
            c = c + ridge * c.diagonal().mean() * torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
        self.factor, info = torch.linalg.cholesky_ex(c)  # (d_ff, d_ff) lower triangular
        if int(info) != 0:
            raise EditError("the key statistics C are singular (not positive definite): use a larger "
                            "statistics corpus or set hparams.mom2_ridge (e.g. 1e-4)")

    def solve(self, k: torch.Tensor) -> torch.Tensor:
        return torch.cholesky_solve(k.double().to(self.factor.device)[:, None], self.factor)[:, 0]


def left_vector(k_star: torch.Tensor, solver: SecondMomentSolver | None) -> torch.Tensor:
    """u (d_ff,): the unit direction of keys the edit responds to."""
    k = k_star.double() if solver is None else solver.solve(k_star)
    return (k / k.norm()).float()


def rank_one_delta(
    u: torch.Tensor, key: torch.Tensor, value_init: torch.Tensor, v_star: torch.Tensor
) -> torch.Tensor:
    """ΔW as (d_model, d_ff): Λ uᵀ with Λ = (v* − W k)/(uᵀ k)."""
    lam = (v_star.double() - value_init.double()) / torch.dot(u.double(), key.double())
    return torch.outer(lam, u.double())


def oriented(adapter: Adapter, delta_w: torch.Tensor) -> torch.Tensor:
    """ΔW (d_model × d_ff) in the layout of the rewrite weight (GPT-2's Conv1D stores d_ff × d_model)."""
    return delta_w if adapter.weight_layout == "out_in" else delta_w.T


@contextmanager
def weight_update(model: Any, adapter: Adapter, layer: int, delta_w: torch.Tensor) -> Iterator[None]:
    """Add ``delta_w`` (d_model × d_ff) to the rewrite weight for the duration of the block."""
    weight = rewrite_weight(model, adapter, layer)
    original = weight.detach().clone()
    upd = oriented(adapter, delta_w)
    if upd.shape != weight.shape:
        raise ValueError(f"update shape {tuple(upd.shape)} does not match weight {tuple(weight.shape)}")
    try:
        with torch.no_grad():
            weight.add_(upd.to(device=weight.device, dtype=weight.dtype))
        yield
    finally:
        with torch.no_grad():
            weight.copy_(original)


def lambda_of(delta_w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Λ (d_model,) from ΔW = Λ uᵀ and the unit vector u."""
    return delta_w @ u.double() / torch.dot(u.double(), u.double())
