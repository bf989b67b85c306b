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
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from tuner.errors import ConfigError, EditError
from tuner.rome.adapters import Adapter
from tuner.rome.compute_v import TOKENS_PER_CHUNK, VRequest, VResult, compute_vs
from tuner.rome.context import fill_template
from tuner.rome.hooks import Trace, get_module
from tuner.rome.hparams import ROMEHyperParams
from tuner.rome.rank_one import weight_update
from tuner.rome.tokens import make_batch, pad_id_of, padding_side, subject_token_index

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


def fit_window(layer: int, width: int, n_layers: int) -> int:
    """The start of a ``width``-layer window asked to start at ``layer``, moved down so that it
    ends at the model's last layer at the latest (the search space proposes windows this way)."""
    return max(0, min(layer, n_layers - width))


def window(hp: ROMEHyperParams, n_layers: int) -> list[int]:
    """The MEMIT layers ``layer … layer + window_size − 1``; ``ConfigError`` when they do not fit."""
    top = hp.layer + hp.window_size - 1
    if hp.layer < 0 or top >= n_layers:
        raise ConfigError(f"hparams.layer {hp.layer} + window_size {hp.window_size} exceeds the model's "
                          f"{n_layers} layers (the window must end at layer {n_layers - 1} or below)")
    return list(range(hp.layer, top + 1))


@contextmanager
def weight_updates(model: Any, adapter: Adapter, deltas: dict[int, torch.Tensor]) -> Iterator[None]:
    """Add every layer's ΔW (d_model × d_ff) for the duration of the block; each weight is
    restored bit-exactly on exit, even when the block (or a later layer's shape check) raises."""
    with ExitStack() as stack:
        for layer in sorted(deltas):
            stack.enter_context(weight_update(model, adapter, layer, deltas[layer]))
        yield


class _StopForward(Exception):
    """Raised after block ``top``: nothing above it is needed."""


def _fact_rows(tok: Any, requests: Sequence[VRequest], templates: Sequence[str],
               fact_token: str) -> list[list[tuple[list[int], int]]]:
    """Per fact, per template: (token ids, fact-token index); template 0 is the bare prompt."""
    if templates[0] != "{}":
        raise ValueError("context_templates[0] must be the bare prompt '{}' (tuner.rome.context)")
    return [[subject_token_index(tok, fill_template(t, r.prompt, r.subject), r.subject, fact_token)
             for t in templates] for r in requests]


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
    facts: (K (d_ff, N) the rewrite-module input at ``layer`` averaged over the templates,
    H (d_model, N) block ``top``'s output at the bare prompt's fact token), both float64."""
    device = next(model.parameters()).device
    side, pad = padding_side(tok, adapter.padding_side), pad_id_of(tok)
    n_facts, per_fact = len(rows), len(rows[0])
    width = max(len(ids) for fact in rows for ids, _ in fact)
    chunk = max(1, min(n_facts, max_facts_per_chunk or n_facts, tokens_per_chunk // (per_fact * width)))
    keys, hidden = [], []
    block = get_module(model, adapter.layer.format(top))

    def stop(*_: Any) -> None:
        raise _StopForward

    for start in range(0, n_facts, chunk):
        part = rows[start:start + chunk]
        flat = [r for fact in part for r in fact]
        batch = make_batch([ids for ids, _ in flat], pad_id=pad, side=side, device=device)
        with Trace(model, adapter.rewrite.format(layer), retain_input=True) as k_tr, \
                Trace(model, adapter.layer.format(top), retain_output=True) as h_tr:
            handle = block.register_forward_hook(stop)  # after h_tr's hook: the output is kept first
            try:
                model(**batch.model_kwargs(model))
            except _StopForward:
                pass
            finally:
                handle.remove()
        x, h = k_tr.input, h_tr.output
        if adapter.seq_first:
            x, h = x.transpose(0, 1), h.transpose(0, 1)  # (T, B, d) -> (B, T, d)
        b = torch.arange(len(flat), device=x.device)
        cols = torch.tensor([batch.offsets[i] + idx for i, (_, idx) in enumerate(flat)], device=x.device)
        k = x[b, cols].double().view(len(part), per_fact, -1)  # (n, R, d_ff)
        keys.append(k.mean(1))
        hidden.append(h[b, cols].double().view(len(part), per_fact, -1)[:, 0])  # (n, d_model) bare prompt
    return torch.cat(keys).T, torch.cat(hidden).T


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


def memit_plan(
    model: Any,
    tok: Any,
    adapter: Adapter,
    hp: ROMEHyperParams,
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

    rows = _fact_rows(tok, requests, context_templates, hp.fact_token)
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
