"""v*: the value vector that makes the model say the new target (ROME §3.1, eq. 4).

A delta δ is added to the rewrite module's output at the fact token of every row and optimised
with Adam on
    loss = NLL(new target | context + prompt)                         (rewrite prompts)
         + kl_factor · KL(P(· | "{subject} is a") ‖ P₀)               (essence drift)
         + v_weight_decay · ‖δ‖ / ‖v₀‖²                               (keep δ small)
after each step δ is clamped to ``clamp_norm_factor · ‖v₀‖``.

Step semantics are ROME's and EasyEdit's: ``v_num_grad_steps`` forward passes, an Adam step
after every one but the last, and a stop as soon as the total loss is below
``early_stop_loss`` (0.05 there). v* is the last iterate, or with ``v_select: best`` the
iterate with the highest target probability.

Every forward pass is recorded. ``prob`` is P(new target | bare rewrite prompt) — the sequence
probability, measured as ``final_prob`` is after the edit — so ``rebound = peak − end`` compares
like with like; ``context_prob`` is ROME's own view (per-token geometric mean, averaged over the
context prompts).

    tuner edit --fact 7 --layer 0 --v-lr 2.0 --v-weight-decay 3 --steps 40"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tuner.errors import EditError
from tuner.rome.adapters import Adapter
from tuner.rome.context import fill_template
from tuner.rome.hooks import Trace
from tuner.rome.hparams import ROMEHyperParams
from tuner.rome.module_io import module_io_at
from tuner.rome.tokens import make_batch, pad_id_of, padding_side, subject_token_index, target_logprobs_at

KL_PROMPT = "{} is a"


TRAJECTORY_KEYS = ("loss", "nll", "kl", "weight_decay", "prob", "context_prob", "delta_norm", "lr")


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


def compute_v(
    model: Any,
    tok: Any,
    adapter: Adapter,
    hp: ROMEHyperParams,
    prompt: str,
    subject: str,
    target_ids: Sequence[int],
    context_templates: Sequence[str],
) -> VResult:
    device = next(model.parameters()).device
    module = adapter.rewrite.format(hp.layer)
    n_target = len(target_ids)

    # Rows: one per context template (prompt + target[:-1]), then the KL prompt.
    rows, lookup, target_pos = [], [], []
    for tmpl in context_templates:
        ids, idx = subject_token_index(tok, fill_template(tmpl, prompt, subject), subject, hp.fact_token)
        rows.append(ids + list(target_ids[:-1]))
        lookup.append(idx)
        target_pos.append([len(ids) - 1 + j for j in range(n_target)])
    kl_ids, kl_idx = subject_token_index(tok, KL_PROMPT.format(subject), subject, hp.fact_token)
    rows.append(kl_ids)
    lookup.append(kl_idx)
    n_rewrite = len(context_templates)
    if context_templates[0] != "{}":
        raise ValueError("context_templates[0] must be the bare prompt '{}' (tuner.rome.context)")

    batch = make_batch(rows, pad_id=pad_id_of(tok), side=padding_side(tok, adapter.padding_side), device=device)
    kwargs = batch.model_kwargs(model)
    edit_rows = torch.arange(len(rows), device=device)  # δ is added in every row, at its fact token
    edit_cols = torch.tensor([batch.offsets[i] + lookup[i] for i in range(len(rows))], device=device)
    rewrite_rows = torch.arange(n_rewrite, device=device)
    target_cols = torch.tensor([[batch.offsets[i] + p for p in target_pos[i]] for i in range(n_rewrite)],
                               device=device)  # (R, L) positions predicting each target token
    target = torch.tensor(list(target_ids), device=device)  # (L,)
    kl_col = batch.offsets[-1] + kl_idx

    def rewrite_logprobs(logits: torch.Tensor) -> torch.Tensor:
        return target_logprobs_at(logits, rewrite_rows, target_cols, target)  # (R, L)

    key, value_init = (t[0] for t in module_io_at(model, tok, adapter, hp.layer, [prompt.format(subject)], subject, hp.fact_token))
    with torch.no_grad():
        kl_init = _kl_log_probs(model(**kwargs).logits, kl_col)  # (V,)
    init_norm = value_init.norm()

    delta = torch.zeros_like(value_init, requires_grad=True)  # (d_model,)

    def add_delta(out: torch.Tensor, _module: Any) -> torch.Tensor:
        view = out.transpose(0, 1) if adapter.seq_first else out  # (B, T, d)
        view[edit_rows, edit_cols] += delta.to(out.dtype)
        return out

    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=hp.v_num_grad_steps)
        if hp.lr_schedule == "cosine"
        else None
    )
    max_norm = hp.clamp_norm_factor * init_norm
    traj: dict[str, list[float]] = {k: [] for k in TRAJECTORY_KEYS}
    early_stopped = False
    best_step, best_delta = 0, delta.detach().clone()
    for step in range(hp.v_num_grad_steps):
        opt.zero_grad(set_to_none=True)
        with Trace(model, module, edit_output=add_delta):
            logits = model(**kwargs).logits  # (B, T, V)
        token_logprobs = rewrite_logprobs(logits)  # (R, L)
        nll_each = -token_logprobs.mean(1)  # (R,) per-token NLL of the target
        nll = nll_each.mean()
        kl = hp.kl_factor * torch.nn.functional.kl_div(
            kl_init, _kl_log_probs(logits, kl_col), log_target=True, reduction="sum"
        )
        wd = hp.v_weight_decay * (delta.norm() / init_norm**2)
        loss = nll + kl + wd
        if not torch.isfinite(loss):
            raise EditError(f"loss became {loss.item()} at step {step} (v_lr={hp.v_lr:g} is likely too large)")
        for name, value in (
            ("loss", loss), ("nll", nll), ("kl", kl), ("weight_decay", wd),
            ("prob", token_logprobs[0].sum().exp()),  # row 0 is the bare prompt ("{}")
            ("context_prob", torch.exp(-nll_each).mean()), ("delta_norm", delta.norm()),
        ):
            traj[name].append(float(value.detach()))
        traj["lr"].append(opt.param_groups[0]["lr"])
        if hp.v_select == "best" and traj["prob"][-1] > traj["prob"][best_step]:
            best_step, best_delta = step, delta.detach().clone()
        if hp.early_stop_loss is not None and traj["loss"][-1] < hp.early_stop_loss:
            early_stopped = True  # ROME's rule: this δ is good enough, take no further step
            break
        if step == hp.v_num_grad_steps - 1:
            break  # no step after the last forward pass: it would never be evaluated
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        with torch.no_grad():
            norm = delta.norm()
            if norm > max_norm:
                delta.mul_(max_norm / norm)

    selected, chosen = (best_step, best_delta) if hp.v_select == "best" else (len(traj["loss"]) - 1, delta.detach())
    return VResult((value_init + chosen).detach(), key, value_init, traj, selected, early_stopped)


def _kl_log_probs(logits: torch.Tensor, col: int) -> torch.Tensor:
    return logits[-1, col].float().log_softmax(-1)  # (V,) next-token distribution after the subject
