"""MEMIT's least-squares update of one layer: ΔW = resid Kᵀ (λC + K Kᵀ)⁻¹ (float64, Cholesky)."""

from __future__ import annotations

import torch

from tuner.errors import EditError


def memit_delta(resid: torch.Tensor, keys: torch.Tensor, cov: torch.Tensor | None, lam: float,
                ridge: float = 0.0) -> torch.Tensor:
    """ΔW (d_model, d_ff) float64 = resid Kᵀ (λC + K Kᵀ)⁻¹ for resid (d_model, N), K (d_ff, N);
    C = identity when ``cov`` is None; ``ridge`` adds ridge·mean(diag C)·I to C."""
    k = keys.double()
    d_ff = k.shape[0]
    eye = torch.eye(d_ff, dtype=torch.float64, device=k.device)
    c = eye if cov is None else cov.double().to(k.device)
    if ridge > 0:
        c = c + ridge * c.diagonal().mean() * eye
    a = lam * c + k @ k.T  # (d_ff, d_ff), symmetric
    factor, info = torch.linalg.cholesky_ex(a)
    if int(info) != 0:
        raise EditError("λC + KKᵀ is not positive definite: the key statistics C are singular; use a larger "
                        "statistics corpus or set hparams.mom2_ridge (e.g. 1e-4)")
    x = torch.cholesky_solve(k, factor)  # (d_ff, N) = (λC + KKᵀ)⁻¹ K
    return resid.double().to(k.device) @ x.T  # (d_model, d_ff)
