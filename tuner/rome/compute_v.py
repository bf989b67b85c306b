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
layer run once per batch and are replayed (``tuner.rome.prefix``). Rows are processed in chunks
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

import logging
import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from tuner.errors import EditError
from tuner.rome.adapters import Adapter
from tuner.rome.context import fill_template
from tuner.rome.hooks import Trace
from tuner.rome.hparams import ROMEHyperParams
from tuner.rome.prefix import PrefixReplay
from tuner.rome.tokens import Batch, make_batch, pad_id_of, padding_side, subject_token_index, target_logprobs_at

log = logging.getLogger(__name__)
KL_PROMPT = "{} is a"
TOKENS_PER_CHUNK = 8192
"""Padded tokens per forward pass, in chunks of whole facts (a CUDA out-of-memory halves the chunk
and retries). ``python bench/gpu.py`` on a GPU prints the peak memory of its runs at this size,
8 facts' v* with 21 context templates among them, on Llama-2-7B and ChatGLM3-6B shapes in bf16."""
SHARED_KNOBS = ("layer", "fact_token", "seed", "context_templates", "context_template_length_params")
"""Knobs every setting in one ``compute_vs`` batch must agree on."""
TRAJECTORY_KEYS = ("loss", "nll", "kl", "weight_decay", "prob", "context_prob", "delta_norm", "lr")


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

    @property
    def opt_final_prob(self) -> float:
        """P(new | bare prompt) with the selected δ."""
        return self.trajectory["prob"][self.selected_step]


def compute_v(model: Any, tok: Any, adapter: Adapter, hp: ROMEHyperParams, prompt: str, subject: str,
              target_ids: Sequence[int], context_templates: Sequence[str]) -> VResult:
    """v* for one fact."""
    return compute_vs(model, tok, adapter, hp, [VRequest(prompt, subject, tuple(target_ids))], context_templates)[0]


class _Rows:
    """The batch of every fact's rows: R rewrite rows (one per context template) then 1 KL row."""

    def __init__(self, tok: Any, adapter: Adapter, hp: ROMEHyperParams, requests: Sequence[VRequest],
                 templates: Sequence[str], device: Any) -> None:
        if templates[0] != "{}":
            raise ValueError("context_templates[0] must be the bare prompt '{}' (tuner.rome.context)")
        self.n_facts, self.per_fact = len(requests), len(templates) + 1
        rows, lookup, target_pos = [], [], []
        for req in requests:
            n_target = len(req.target_ids)
            for tmpl in templates:
                ids, idx = subject_token_index(tok, fill_template(tmpl, req.prompt, req.subject), req.subject,
                                               hp.fact_token)
                rows.append(ids + list(req.target_ids[:-1]))
                lookup.append(idx)
                target_pos.append([len(ids) - 1 + j for j in range(n_target)])
            kl_ids, kl_idx = subject_token_index(tok, KL_PROMPT.format(req.subject), req.subject, hp.fact_token)
            rows.append(kl_ids)
            lookup.append(kl_idx)
            target_pos.append([])
        self.batch = make_batch(rows, pad_id=pad_id_of(tok), side=padding_side(tok, adapter.padding_side),
                                device=device)
        off = self.batch.offsets
        width = max(len(r.target_ids) for r in requests)
        self.edit_col = torch.tensor([off[i] + lookup[i] for i in range(len(rows))], device=device)  # (N,)
        # (N, Lmax) positions predicting each target token, padded with 0 and masked out
        self.target_cols = torch.tensor([[off[i] + p for p in pos] + [0] * (width - len(pos))
                                         for i, pos in enumerate(target_pos)], device=device)
        self.target_mask = torch.tensor([[1.0] * len(pos) + [0.0] * (width - len(pos)) for pos in target_pos],
                                        device=device)
        self.target_ids = torch.tensor([list(r.target_ids) + [0] * (width - len(r.target_ids))
                                        for r in requests for _ in range(self.per_fact)], device=device)

    def of(self, facts: Sequence[int]) -> torch.Tensor:
        """Batch rows of ``facts`` (in order: each fact's rewrite rows, then its KL row)."""
        p = self.per_fact
        return torch.tensor([f * p + j for f in facts for j in range(p)], device=self.edit_col.device)

    def sub_batch(self, rows: torch.Tensor) -> Batch:
        b = self.batch
        return Batch(b.input_ids[rows], b.attention_mask[rows], b.position_ids[rows],
                     [b.offsets[i] for i in rows.tolist()])


class _Settings:
    """The settings of one ``compute_vs`` batch: requests grouped by setting (one δ tensor and
    one Adam optimiser per group) and the per-request factors of the loss and the clamp."""

    def __init__(self, hp: ROMEHyperParams, knobs: Sequence[ROMEHyperParams] | None, n: int, device: Any) -> None:
        knobs = list(knobs) if knobs is not None else [hp] * n
        if len(knobs) != n:
            raise ValueError(f"knobs: {len(knobs)} settings for {n} requests")
        self.settings: list[ROMEHyperParams] = []
        self.group_of: list[int] = []
        for k in knobs:
            differ = [name for name in SHARED_KNOBS if getattr(k, name) != getattr(hp, name)]
            if differ:
                raise ValueError(f"settings in one v* batch must share {', '.join(differ)}")
            if k not in self.settings:
                self.settings.append(k)
            self.group_of.append(self.settings.index(k))
        self.groups = [[f for f in range(n) if self.group_of[f] == g] for g in range(len(self.settings))]
        order = [f for g in self.groups for f in g]  # torch.cat(deltas) is in this order
        self.inverse = torch.tensor([order.index(f) for f in range(n)], device=device)
        self.kl = torch.tensor([k.kl_factor for k in knobs], device=device)
        self.decay = torch.tensor([k.v_weight_decay for k in knobs], device=device)
        self.clamp = torch.tensor([k.clamp_norm_factor for k in knobs], device=device)
        self.max_steps = max(k.v_num_grad_steps for k in self.settings)

    def joined(self, deltas: list[torch.Tensor]) -> torch.Tensor:
        """Every request's δ row, in request order (one setting: its δ itself)."""
        return deltas[0] if len(deltas) == 1 else torch.cat(deltas)[self.inverse]

    def of(self, request: int) -> ROMEHyperParams:
        return self.settings[self.group_of[request]]


def _step_setting(delta: torch.Tensor, opt: Any, sched: Any, members: list[int], stepping: set[int],
                  max_norm: torch.Tensor) -> None:
    """One setting's Adam step, if any of its facts (``members``, request indices; row i of
    ``delta`` is request ``members[i]``) still steps: the stopped facts' rows are held where they
    are (Adam's momentum would move them), the stepped ones clamped to their own ball."""
    moving = [i for i, f in enumerate(members) if f in stepping]
    if not moving:
        return
    frozen = [i for i in range(len(members)) if i not in set(moving)]
    saved = delta.detach()[frozen].clone() if frozen else None
    opt.step()
    if sched is not None:
        sched.step()
    with torch.no_grad():
        if saved is not None:
            delta[frozen] = saved
        idx = torch.tensor(moving, device=delta.device)
        limit = max_norm[torch.tensor([members[i] for i in moving], device=delta.device)]
        norm = delta[idx].norm(dim=-1)
        over = norm > limit
        if over.any():  # clamp each stepped fact's δ to its own ball
            delta[idx[over]] *= (limit[over] / norm[over])[:, None]


def compute_vs(
    model: Any,
    tok: Any,
    adapter: Adapter,
    hp: ROMEHyperParams,
    requests: Sequence[VRequest],
    context_templates: Sequence[str],
    *,
    max_facts_per_chunk: int | None = None,
    tokens_per_chunk: int = TOKENS_PER_CHUNK,
    on_step: Callable[[int, list[float]], Any] | None = None,
    norm_of: str = "module",
    knobs: Sequence[ROMEHyperParams] | None = None,
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
    device = next(model.parameters()).device
    module = adapter.rewrite.format(hp.layer)
    F = len(requests)
    if F == 0:
        return []
    per = _Settings(hp, knobs, F, device)
    data = _Rows(tok, adapter, hp, requests, context_templates, device)
    R, P = len(context_templates), data.per_fact
    full_kwargs = data.batch.model_kwargs(model)
    by_tokens = tokens_per_chunk // (P * data.batch.input_ids.shape[1])
    chunk = [max(1, min(F, max_facts_per_chunk or F, by_tokens))]

    replay = PrefixReplay(model, adapter, hp.layer)

    def run_chunked(fn: Callable[[list[int]], None], facts: list[int]) -> None:
        """``fn(chunk_facts)`` over ``facts`` in chunks; a CUDA OOM halves the chunk and retries."""
        i = 0
        while i < len(facts):
            part = facts[i:i + chunk[0]]
            try:
                fn(part)
            except torch.OutOfMemoryError:
                if chunk[0] == 1:
                    raise
                chunk[0] = max(1, chunk[0] // 2)
                log.warning("out of memory with %d facts per forward pass; retrying with %d", len(part), chunk[0])
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            i += len(part)

    # Keys, values, the KL reference and block L−1's output (replayed from now on): one no-grad
    # pass over every fact's rows, in chunks.
    kl_init: list[torch.Tensor] = [torch.empty(0)] * F
    keys, values, refs = [None] * F, [None] * F, [None] * F

    def kwargs_of(rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v[rows] for k, v in full_kwargs.items()}

    def initial(part: list[int]) -> None:
        rows = data.of(part)
        block = Trace(model, adapter.layer.format(hp.layer), retain_output=True) if norm_of == "block" else None
        with torch.no_grad(), replay.recording(rows), \
                Trace(model, module, retain_input=True, retain_output=True) as tr, block or nullcontext():
            logits = model(**kwargs_of(rows)).logits
        x, y = tr.input, tr.output
        h = y if block is None else block.output
        if adapter.seq_first:  # (T, B, d) -> (B, T, d); logits are (B, T, V)
            x, y, h = x.transpose(0, 1), y.transpose(0, 1), h.transpose(0, 1)
        for j, f in enumerate(part):
            bare = j * P  # row 0 of the fact is the bare prompt "{}"
            col = data.edit_col[rows[bare]]
            keys[f], values[f], refs[f] = x[bare, col].float(), y[bare, col].float(), h[bare, col].float()
            kl_row = j * P + P - 1
            kl_init[f] = logits[kl_row, data.edit_col[rows[kl_row]]].float().log_softmax(-1)

    run_chunked(initial, list(range(F)))
    key, value_init = torch.stack(keys), torch.stack(values)  # (F, d_ff), (F, d_model)
    kl_ref = torch.stack(kl_init)  # (F, V)
    init_norm = torch.stack(refs).norm(dim=-1)  # (F,) ‖v₀‖, or ‖h‖ for MEMIT

    deltas = [torch.zeros_like(value_init[g], requires_grad=True) for g in per.groups]  # one per setting
    opts = [torch.optim.Adam([d], lr=per.settings[i].v_lr) for i, d in enumerate(deltas)]
    scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=per.settings[i].v_num_grad_steps)
              if per.settings[i].lr_schedule == "cosine" else None for i, o in enumerate(opts)]
    max_norm = per.clamp * init_norm  # (F,)
    trajs: list[dict[str, list[float]]] = [{k: [] for k in TRAJECTORY_KEYS} for _ in range(F)]
    active = list(range(F))
    stopped_early = [False] * F
    best_step = [0] * F
    best_delta = value_init.new_zeros(value_init.shape)
    final_step = [0] * F

    for step in range(per.max_steps):
        for o in opts:
            o.zero_grad(set_to_none=False)
        delta = per.joined(deltas)  # (F, d_model), request order; gradients reach each setting's δ
        stepping: list[int] = []  # facts that take an Adam step after this forward pass

        def forward_backward(part: list[int]) -> None:
            rows = data.of(part)
            fact_of_row = torch.tensor(part, device=device).repeat_interleave(P)

            def add_delta(out: torch.Tensor, _module: Any) -> torch.Tensor:
                view = out.transpose(0, 1) if adapter.seq_first else out  # (B, T, d)
                view[torch.arange(len(rows), device=device), data.edit_col[rows]] += delta[fact_of_row].to(out.dtype)
                return out

            with replay.replaying(rows), Trace(model, module, edit_output=add_delta):
                logits = model(**kwargs_of(rows)).logits
            n = len(part)
            rw = torch.arange(n * P, device=device).view(n, P)[:, :R].reshape(-1)  # rewrite rows in this chunk
            lp = target_logprobs_at(logits, rw, data.target_cols[rows[rw]], data.target_ids[rows[rw]])  # (nR, L)
            mask = data.target_mask[rows[rw]]
            nll_each = (-(lp * mask).sum(1) / mask.sum(1)).view(n, R)  # (n, R) per-token NLL of each row
            nll = nll_each.mean(1)  # (n,)
            kl_rows = torch.arange(n, device=device) * P + P - 1
            cur = logits[kl_rows, data.edit_col[rows[kl_rows]]].float().log_softmax(-1)  # (n, V)
            idx = torch.tensor(part, device=device)
            kl = per.kl[idx] * torch.nn.functional.kl_div(kl_ref[idx], cur, log_target=True,
                                                          reduction="none").sum(-1)
            d = delta[idx]
            wd = per.decay[idx] * (d.norm(dim=-1) / init_norm[idx] ** 2)
            loss = nll + kl + wd  # (n,)
            bare_prob = (lp.view(n, R, -1)[:, 0] * mask.view(n, R, -1)[:, 0]).sum(-1).exp()
            ctx_prob = torch.exp(-nll_each).mean(1)
            names = ("loss", "nll", "kl", "weight_decay", "prob", "context_prob", "delta_norm")
            table = torch.stack([loss, nll, kl, wd, bare_prob, ctx_prob, d.norm(dim=-1)], 1).detach().tolist()
            records = [dict(zip(names, row)) for row in table]  # one device sync per forward pass
            for j, r in enumerate(records):
                if not math.isfinite(r["loss"]):
                    raise EditError(f"loss became {r['loss']} at step {step} for fact {part[j]} "
                                    f"(v_lr={per.of(part[j]).v_lr:g} is likely too large)")
            stops = [per.of(f).early_stop_loss is not None and records[j]["loss"] < per.of(f).early_stop_loss
                     for j, f in enumerate(part)]
            keep = [j for j, f in enumerate(part) if not stops[j] and step < per.of(f).v_num_grad_steps - 1]
            if keep:
                loss[keep].sum().backward()  # may run out of memory: nothing is recorded before it succeeds
            for j, f in enumerate(part):
                t = trajs[f]
                for name, value in records[j].items():
                    t[name].append(value)
                t["lr"].append(opts[per.group_of[f]].param_groups[0]["lr"])
                final_step[f] = step
                if per.of(f).v_select == "best" and (step == 0 or t["prob"][-1] > t["prob"][best_step[f]]):
                    best_step[f] = step
                    best_delta[f] = delta[f].detach()
                stopped_early[f] = stops[j]  # ROME's rule: this δ is good enough, take no further step
            stepping.extend(part[j] for j in keep)

        run_chunked(forward_backward, active)
        if on_step is not None:
            dropped = set(on_step(step, [t["prob"][-1] for t in trajs]) or ())
            stepping = [f for f in stepping if f not in dropped]
        if not stepping:
            break
        for g, (d, o, sched) in enumerate(zip(deltas, opts, scheds)):
            _step_setting(d, o, sched, per.groups[g], set(stepping), max_norm)
        active = stepping

    delta = per.joined(deltas).detach()
    results = []
    for f in range(F):
        if per.of(f).v_select == "best":
            selected, chosen = best_step[f], best_delta[f]
        else:
            selected, chosen = final_step[f], delta[f]
        results.append(VResult((value_init[f] + chosen).detach(), key[f], value_init[f], trajs[f], selected,
                               stopped_early[f]))
    return results
