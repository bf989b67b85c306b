"""MEMIT (Meng et al., ICLR 2023): many facts written at once into the MLPs of a window of layers.

The window is ``layer … top = layer + window_size − 1``. Every fact i gets a target for the
residual stream after block ``top`` at its fact token (MEMIT's z):

    z_i = h_i + δ_i,   δ_i = v*_i − v₀_i

where δ_i is found by ROME's own v* optimisation (``compute_vs``) at the rewrite module of layer
``top``: in these pre-norm (or parallel) blocks the MLP output is added to the residual stream, so
δ added there is δ added to block ``top``'s output, which is what MEMIT optimises. Then, for the
layers l of the window from the bottom (i = 0 … W−1), with the updates of the layers below l
already written into the model:

    K_l   (d_ff, N)     keys at l, each fact's averaged over the context templates (as k*)
    R_l   (d_model, N)  z − h_top(current model) at the bare prompt's fact token (R = δ at the bottom)
    resid = R_l / (W − i)                           the remainder spread over the layers left
    ΔW_l  = resid K_lᵀ (λ C_l + K_l K_lᵀ)⁻¹          (d_model, d_ff)

i.e. ΔW_l is the minimiser of  λ·tr(ΔW C_l ΔWᵀ) + ‖ΔW K_l − resid‖²: C_l = E[kkᵀ] over the
statistics corpus (``cov_of(l)``; identity without mom2_adjustment), λ = ``mom2_update_weight``.
All N facts share one update per layer. The solve is in float64 (Cholesky, no inverse).

As in the reference implementation (and EasyEdit's), δ's clamp ``clamp_norm_factor · ‖h‖`` and
weight decay ``v_weight_decay · ‖δ‖ / ‖h‖²`` are measured against h, the residual stream after
block ``top`` at the fact token (``compute_vs(norm_of="block")``), not against the MLP output v₀
as in ROME (‖h‖ is several times ‖v₀‖: ``tests/rome/test_memit.py::
test_clamp_is_measured_against_the_residual_stream`` asserts ‖δ‖ ≤ clamp · ‖h‖ and ‖δ‖ > 1.5 ·
clamp · ‖v₀‖): an exported MEMIT ``clamp_norm_factor`` means what it means in EasyEdit. One
difference, on purpose: ``mom2_ridge`` (λ' · mean diag C added to C) applies to C_l as it does
in ROME.

    plan = memit_plan(model, tok, adapter, hp.replace(method="memit", layer=1, window_size=2),
                      requests, templates, cov_of=lambda l: editor.mom2(l, hp.mom2_n_tokens))
    with weight_updates(model, adapter, plan.deltas):   # every layer's ΔW, restored on exit
        ...

What is checked, and where:

    tests/rome/test_memit.py::test_memit_edits_eight_facts_at_once
        the embedded default model, the first 8 facts of studies/facts/synthetic_edits.json in
        one update over layers 0-1 with the ``verify`` preset's v* settings, clamp_norm_factor 2
        and the default λ (``mom2_update_weight``): efficacy (mean log P(new) > mean log P(true)
        on the rewrite prompt) for at least 5 of 8 facts, mean specificity at least 0.9
    python bench/methods.py
        efficacy, specificity and paraphrase of ROME, MEMIT and the hybrid on 20 facts of the
        default model and of the ChatGLM3-interface test model, at the default λ and --memit-clamp
    python bench/gpu.py [--toy]
        the time of one 8-fact MEMIT plan over two layers against 8 independent ROME edits"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch

from tuner.hparams import EditHParams
from tuner.memit.keys import keys_and_hidden
from tuner.memit.solve import memit_delta
from tuner.memit.window import window
from tuner.plumbing.adapters import Adapter
from tuner.rome.compute_v import VRequest, VResult, compute_vs
from tuner.rome.context import fact_rows
from tuner.rome.rank_one import weight_update

log = logging.getLogger(__name__)


@dataclass
class MemitPlan:
    """Everything a MEMIT edit writes, computed on the original weights (which it leaves as they were)."""

    deltas: dict[int, torch.Tensor]  # layer -> ΔW (d_model, d_ff), float64, (out, in) like rank_one_delta
    vs: list[VResult]  # per fact: v* at the rewrite module of the window's top layer
    keys: dict[int, torch.Tensor]  # layer -> K_l (d_ff, N) float64, with the layers below already updated
    residuals: dict[int, torch.Tensor]  # layer -> the spread residual R_l / (W − i) it was fitted to (d_model, N)
    z: torch.Tensor  # (d_model, N) float64: target residual stream after block top, h_init + δ
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.deltas)


def memit_plan(
    model: Any,
    tok: Any,
    adapter: Adapter,
    hp: EditHParams,
    requests: Sequence[VRequest],
    context_templates: Sequence[str],
    cov_of: Callable[[int], torch.Tensor | None],
    *,
    on_step: Callable[[int, list[float]], None] | None = None,
    max_facts_per_chunk: int | None = None,
) -> MemitPlan:
    """MEMIT's updates for all ``requests`` over ``window(hp, n_layers)`` (see the module
    docstring). ``cov_of(layer)`` gives C = E[kkᵀ] at a layer, or ``None`` for the identity.
    Lower layers' ΔW are written into the model while the layers above are fitted and removed
    again before this returns or raises: the weights are then exactly the original ones."""
    layers = window(hp, adapter.n_layers(model.config))
    top, n_win = layers[-1], len(layers)
    if not requests:
        raise ValueError("memit_plan needs at least one fact")
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    vs = compute_vs(model, tok, adapter, hp.replace(layer=top), requests, context_templates,
                    on_step=on_step, max_facts_per_chunk=max_facts_per_chunk, norm_of="block")
    timings["v_star"] = time.perf_counter() - t0
    delta = torch.stack([v.v_star.double() - v.value_init.double() for v in vs]).T  # (d_model, N)

    rows = fact_rows(tok, requests, context_templates, hp.fact_token)
    deltas: dict[int, torch.Tensor] = {}
    keys: dict[int, torch.Tensor] = {}
    residuals: dict[int, torch.Tensor] = {}
    h_init = z = None
    timings.update(keys=0.0, stats=0.0, update=0.0)
    with ExitStack() as applied:  # the lower layers' ΔW while the upper ones are fitted
        for i, layer in enumerate(layers):
            t0 = time.perf_counter()
            k, h = keys_and_hidden(model, tok, adapter, layer, top, rows, max_facts_per_chunk=max_facts_per_chunk)
            timings["keys"] += time.perf_counter() - t0
            if h_init is None:
                h_init = h  # (d_model, N) block top's output before any update
                z = h_init + delta
            residual = (h_init - h) + delta  # z − h, exactly δ at the bottom (h == h_init there)
            t0 = time.perf_counter()
            cov = cov_of(layer)
            timings["stats"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            resid = residual / (n_win - i)
            deltas[layer] = memit_delta(resid, k, cov, hp.mom2_update_weight, hp.mom2_ridge)
            keys[layer], residuals[layer] = k, resid
            if log.isEnabledFor(logging.DEBUG):
                log.debug("MEMIT layer %d: ‖R‖ mean %.4g, ‖ΔW K − resid‖/‖resid‖ %.3g", layer,
                          float(residual.norm(dim=0).mean()),
                          float((deltas[layer] @ k - resid).norm() / resid.norm().clamp_min(1e-30)))
            if i < n_win - 1:
                applied.enter_context(weight_update(model, adapter, layer, deltas[layer]))
            timings["update"] += time.perf_counter() - t0
    assert z is not None
    return MemitPlan(deltas, vs, keys, residuals, z, timings)
