"""v*: the value vector that makes the model say the new target (ROME §3.1, eq. 4).

A delta δ is added to the rewrite module's output at the fact token of every row and optimised
with Adam on
    loss = NLL(new target | context + prompt)                         (rewrite prompts)
         + kl_factor · KL(P(· | "{subject} is a") ‖ P₀)               (essence drift)
         + v_weight_decay · ‖δ‖ / ‖v₀‖²                               (keep δ small)
after each step δ is clamped to ``clamp_norm_factor · ‖v₀‖``. (MEMIT measures the decay and the
clamp against the residual stream's norm instead: ``norm_of="block"``.)

Step semantics are ROME's and EasyEdit's: ``v_num_grad_steps`` forward passes, an Adam step
after every one but the last, and a stop as soon as the total loss is below
``early_stop_loss`` (0.05 there). v* is the last iterate, or with ``v_select: best`` the
iterate with the highest target probability.

Several facts are optimised together (``compute_vs``): one batch holds every fact's rewrite
and KL rows, δ has one row per fact and the loss is the sum of the facts' losses, so each
δ row gets exactly its own fact's gradient and Adam (element-wise) moves it as it would alone.
Each fact keeps its own clamp, early stop and trajectory; a stopped fact's rows leave the batch
and its δ is frozen (Adam's momentum would otherwise keep moving it). The blocks below the edit
layer run once per batch and are replayed (``tuner.plumbing.prefix``). Rows are processed in chunks
of whole facts; a CUDA out-of-memory error halves the chunk and repeats the step.

Several *settings* share one batch too (``knobs``: one setting per request, e.g. the facts of
several trials): every setting has its own δ tensor, Adam optimiser and learning-rate
schedule, and every row its own weight decay, KL factor, clamp, step count, early stop and
selection rule, so each setting's v* are those it would get alone (Adam is element-wise).
What the rows share is what the batch's forward pass needs to be one: the layer, the fact
token and the context templates (``SHARED_KNOBS``).

Every forward pass is recorded. ``prob`` is P(new target | bare rewrite prompt) — the sequence
probability, measured as ``final_prob`` is after the edit — so ``rebound = peak − end`` compares
like with like; ``context_prob`` is ROME's own view (per-token geometric mean, averaged over the
context prompts).

    tuner edit --fact 7 --layer 0 --v-lr 2.0 --v-weight-decay 3 --steps 40"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from tuner.errors import EditError
from tuner.hparams import EditHParams
from tuner.plumbing.adapters import Adapter
from tuner.plumbing.hooks import Trace
from tuner.plumbing.prefix import PrefixReplay
from tuner.plumbing.tokens import target_logprobs_at
from tuner.rome.chunks import Chunks
from tuner.rome.v_batch import SHARED_KNOBS, VRows, VSettings, step_setting

TOKENS_PER_CHUNK = 8192
"""Padded tokens per forward pass, in chunks of whole facts (a CUDA out-of-memory halves the chunk
and retries). ``python bench/gpu.py`` on a GPU prints the peak memory of its runs at this size,
8 facts' v* with 21 context templates among them, on Llama-2-7B and ChatGLM3-6B shapes in bf16."""
TRAJECTORY_KEYS = ("loss", "nll", "kl", "weight_decay", "prob", "context_prob", "delta_norm", "lr")
RECORDED = TRAJECTORY_KEYS[:-1]  # what one forward pass measures per fact (``lr`` is the optimiser's)
__all__ = ["SHARED_KNOBS", "TOKENS_PER_CHUNK", "TRAJECTORY_KEYS", "VRequest", "VResult", "compute_v", "compute_vs"]


@dataclass(frozen=True)
class VRequest:
    """One fact to optimise v* for."""

    prompt: str
    subject: str
    target_ids: tuple[int, ...]


@dataclass
class VResult:
    v_star: torch.Tensor  # (d_model,) target output of the rewrite module at the bare prompt's key
    key: torch.Tensor  # (d_ff,) rewrite-module input at the bare prompt's fact token
    value_init: torch.Tensor  # (d_model,) module output there before the edit
    trajectory: dict[str, list[float]]  # per forward pass: TRAJECTORY_KEYS
    selected_step: int  # the forward pass whose δ is v* − value_init
    early_stopped: bool  # the loss fell below hp.early_stop_loss before the last forward pass
    k_star: torch.Tensor  # (d_ff,) k*: the key averaged over the rewrite rows (what ``compute_k`` reads)

    @property
    def opt_final_prob(self) -> float:
        """P(new | bare prompt) with the selected δ."""
        return self.trajectory["prob"][self.selected_step]


def compute_v(model: Any, tok: Any, adapter: Adapter, hp: EditHParams, prompt: str, subject: str,
              target_ids: Sequence[int], context_templates: Sequence[str]) -> VResult:
    """v* for one fact."""
    return compute_vs(model, tok, adapter, hp, [VRequest(prompt, subject, tuple(target_ids))], context_templates)[0]


def compute_vs(
    model: Any,
    tok: Any,
    adapter: Adapter,
    hp: EditHParams,
    requests: Sequence[VRequest],
    context_templates: Sequence[str],
    *,
    max_facts_per_chunk: int | None = None,
    tokens_per_chunk: int = TOKENS_PER_CHUNK,
    on_step: Callable[[int, list[float]], Any] | None = None,
    norm_of: str = "module",
    knobs: Sequence[EditHParams] | None = None,
) -> list[VResult]:
    """v* for every request, optimised together (see the module docstring). A forward pass
    holds at most ``tokens_per_chunk`` padded tokens (whole facts, at least one) and at most
    ``max_facts_per_chunk`` facts. ``on_step(step, probs)`` runs after every forward pass with
    each fact's latest P(new | bare prompt): the worker's interrupt checkpoint and the pruner's
    intermediate value; it may raise to abandon the optimisation, or return the indices of
    requests to stop now (a pruned trial's facts: their δ is frozen, their results are what
    was reached).

    ``knobs``: one setting per request (default ``hp`` for all); they must agree with ``hp`` on
    ``SHARED_KNOBS``.

    ``norm_of`` is the norm the clamp and the weight decay are measured against: ``module``, the
    rewrite module's output v₀ (ROME's), or ``block``, the residual stream after block
    ``hp.layer`` at the fact token (MEMIT's ``target_init``; δ is the same δ either way)."""
    if norm_of not in ("module", "block"):
        raise ValueError(f"norm_of must be 'module' or 'block', got {norm_of!r}")
    if not requests:
        return []
    run = _Optimisation(model, tok, adapter, hp, requests, context_templates, knobs,
                        max_facts_per_chunk=max_facts_per_chunk, tokens_per_chunk=tokens_per_chunk)
    run.initial_pass(norm_of)
    run.optimise(on_step)
    return run.results()


class _Optimisation:
    """One ``compute_vs`` call's state: the batch, the settings, δ and every fact's record."""

    def __init__(self, model: Any, tok: Any, adapter: Adapter, hp: EditHParams, requests: Sequence[VRequest],
                 templates: Sequence[str], knobs: Sequence[EditHParams] | None, *,
                 max_facts_per_chunk: int | None, tokens_per_chunk: int) -> None:
        self.model, self.adapter, self.hp = model, adapter, hp
        self.device = next(model.parameters()).device
        self.module = adapter.rewrite.format(hp.layer)
        self.n = len(requests)
        self.per = VSettings(hp, knobs, self.n, self.device)
        self.data = VRows(tok, adapter, hp, requests, templates, self.device)
        self.R, self.P = len(templates), self.data.per_fact
        self.full_kwargs = self.data.batch.model_kwargs(model)
        self.chunks = Chunks(self.n, self.P, self.data.width, tokens_per_chunk=tokens_per_chunk,
                             max_facts=max_facts_per_chunk, device=self.device)
        self.replay = PrefixReplay(model, adapter, hp.layer)
        self.trajs: list[dict[str, list[float]]] = [{k: [] for k in TRAJECTORY_KEYS} for _ in range(self.n)]
        self.stopped_early = [False] * self.n
        self.best_step = [0] * self.n
        self.final_step = [0] * self.n

    def kwargs_of(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v[rows] for k, v in self.full_kwargs.items()}

    # -- the initial pass ------------------------------------------------------------------------
    def initial_pass(self, norm_of: str) -> None:
        """Keys, values, the KL reference and block L−1's output (replayed from now on): one
        no-grad pass over every fact's rows, in chunks."""
        n = self.n
        keys, values, refs, kl_init, k_stars = [None] * n, [None] * n, [None] * n, [None] * n, [None] * n

        def initial(part: list[int]) -> None:
            model, adapter, data, P = self.model, self.adapter, self.data, self.P
            rows = data.of(part)
            block = Trace(model, adapter.layer.format(self.hp.layer), retain_output=True) if norm_of == "block" else None
            with torch.no_grad(), self.replay.recording(rows), \
                    Trace(model, self.module, retain_input=True, retain_output=True) as tr, block or nullcontext():
                logits = model(**self.kwargs_of(rows)).logits
            x, y = tr.input, tr.output
            h = y if block is None else block.output
            x, y, h = adapter.batch_first(x), adapter.batch_first(y), adapter.batch_first(h)  # logits are (B, T, V)
            for j, f in enumerate(part):
                bare = j * P  # row 0 of the fact is the bare prompt "{}"
                col = data.edit_col[rows[bare]]
                keys[f], values[f], refs[f] = x[bare, col].float(), y[bare, col].float(), h[bare, col].float()
                ctx = torch.arange(bare, bare + self.R, device=x.device)  # the fact's rewrite rows
                k_stars[f] = x[ctx, data.edit_col[rows[ctx]]].float().mean(0)  # k*, as compute_k reads it
                kl_row = j * P + P - 1
                kl_init[f] = logits[kl_row, data.edit_col[rows[kl_row]]].float().log_softmax(-1)

        self.chunks.run(initial, range(n))
        self.key, self.value_init = torch.stack(keys), torch.stack(values)  # (F, d_ff), (F, d_model)
        self.kl_ref = torch.stack(kl_init)  # (F, V)
        self.init_norm = torch.stack(refs).norm(dim=-1)  # (F,) ‖v₀‖, or ‖h‖ for MEMIT
        self.k_star = k_stars

    # -- the optimisation ------------------------------------------------------------------------
    def optimise(self, on_step: Callable[[int, list[float]], Any] | None) -> None:
        """Forward, backward and one Adam step per setting until every fact has stopped."""
        self.deltas, self.opts, scheds = self.per.optimisers(self.value_init)
        self.best_delta = self.value_init.new_zeros(self.value_init.shape)
        max_norm = self.per.clamp * self.init_norm  # (F,)
        active = list(range(self.n))
        for step in range(self.per.max_steps):
            for o in self.opts:
                o.zero_grad(set_to_none=False)
            delta = self.per.joined(self.deltas)  # (F, d_model), request order; gradients reach each δ
            stepping: list[int] = []  # facts that take an Adam step after this forward pass
            self.chunks.run(lambda part: stepping.extend(self.forward_backward(step, delta, part)), active)
            if on_step is not None:
                dropped = set(on_step(step, [t["prob"][-1] for t in self.trajs]) or ())
                stepping = [f for f in stepping if f not in dropped]
            if not stepping:
                break
            for g, (d, o, sched) in enumerate(zip(self.deltas, self.opts, scheds)):
                step_setting(d, o, sched, self.per.groups[g], set(stepping), max_norm)
            active = stepping

    def forward_backward(self, step: int, delta: torch.Tensor, part: list[int]) -> list[int]:
        """One forward pass over ``part``'s rows with δ added, their losses recorded and
        back-propagated for the facts that step on; returns those facts."""
        rows = self.data.of(part)
        fact_of_row = torch.tensor(part, device=self.device).repeat_interleave(self.P)
        edit_col, adapter = self.data.edit_col, self.adapter

        def add_delta(out: torch.Tensor, _module: Any) -> torch.Tensor:
            view = adapter.batch_first(out)  # (B, T, d)
            view[torch.arange(len(rows), device=out.device), edit_col[rows]] += delta[fact_of_row].to(out.dtype)
            return out

        with self.replay.replaying(rows), Trace(self.model, self.module, edit_output=add_delta):
            logits = self.model(**self.kwargs_of(rows)).logits
        loss, records = self.losses(logits, rows, delta, part)
        for j, r in enumerate(records):
            if not math.isfinite(r["loss"]):
                raise EditError(f"loss became {r['loss']} at step {step} for fact {part[j]} "
                                f"(v_lr={self.per.of(part[j]).v_lr:g} is likely too large)")
        stops = [self.per.of(f).early_stop_loss is not None and records[j]["loss"] < self.per.of(f).early_stop_loss
                 for j, f in enumerate(part)]
        keep = [j for j, f in enumerate(part) if not stops[j] and step < self.per.of(f).v_num_grad_steps - 1]
        if keep:
            loss[keep].sum().backward()  # may run out of memory: nothing is recorded before it succeeds
        self.record(step, delta, part, records, stops)
        return [part[j] for j in keep]

    def losses(self, logits: torch.Tensor, rows: torch.Tensor, delta: torch.Tensor,
               part: list[int]) -> tuple[torch.Tensor, list[dict[str, float]]]:
        """Each fact's loss (n,) — NLL over its rewrite rows + KL at its KL row + weight decay —
        and the measures recorded for it (``RECORDED``)."""
        data, R, P, device = self.data, self.R, self.P, self.device
        n = len(part)
        rw = torch.arange(n * P, device=device).view(n, P)[:, :R].reshape(-1)  # rewrite rows in this chunk
        lp = target_logprobs_at(logits, rw, data.target_cols[rows[rw]], data.target_ids[rows[rw]])  # (nR, L)
        mask = data.target_mask[rows[rw]]
        nll_each = (-(lp * mask).sum(1) / mask.sum(1)).view(n, R)  # (n, R) per-token NLL of each row
        nll = nll_each.mean(1)  # (n,)
        kl_rows = torch.arange(n, device=device) * P + P - 1
        cur = logits[kl_rows, data.edit_col[rows[kl_rows]]].float().log_softmax(-1)  # (n, V)
        idx = torch.tensor(part, device=device)
        kl = self.per.kl[idx] * torch.nn.functional.kl_div(self.kl_ref[idx], cur, log_target=True,
                                                           reduction="none").sum(-1)
        d = delta[idx]
        wd = self.per.decay[idx] * (d.norm(dim=-1) / self.init_norm[idx] ** 2)
        loss = nll + kl + wd  # (n,)
        bare_prob = (lp.view(n, R, -1)[:, 0] * mask.view(n, R, -1)[:, 0]).sum(-1).exp()
        ctx_prob = torch.exp(-nll_each).mean(1)
        table = torch.stack([loss, nll, kl, wd, bare_prob, ctx_prob, d.norm(dim=-1)], 1).detach().tolist()
        return loss, [dict(zip(RECORDED, row)) for row in table]  # one device sync per forward pass

    def record(self, step: int, delta: torch.Tensor, part: list[int], records: list[dict[str, float]],
               stops: list[bool]) -> None:
        """Append this pass to each fact's trajectory; keep the best δ for ``v_select: best``."""
        for j, f in enumerate(part):
            t = self.trajs[f]
            for name, value in records[j].items():
                t[name].append(value)
            t["lr"].append(self.opts[self.per.group_of[f]].param_groups[0]["lr"])
            self.final_step[f] = step
            if self.per.of(f).v_select == "best" and (step == 0 or t["prob"][-1] > t["prob"][self.best_step[f]]):
                self.best_step[f] = step
                self.best_delta[f] = delta[f].detach()
            self.stopped_early[f] = stops[j]  # ROME's rule: this δ is good enough, take no further step

    def results(self) -> list[VResult]:
        delta = self.per.joined(self.deltas).detach()
        out = []
        for f in range(self.n):
            if self.per.of(f).v_select == "best":
                selected, chosen = self.best_step[f], self.best_delta[f]
            else:
                selected, chosen = self.final_step[f], delta[f]
            out.append(VResult((self.value_init[f] + chosen).detach(), self.key[f], self.value_init[f], self.trajs[f],
                               selected, self.stopped_early[f], self.k_star[f]))
        return out
