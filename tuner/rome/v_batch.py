"""The batch one v* optimisation runs on: every fact's rows (``VRows``) and the settings the
facts are optimised under (``VSettings``, one δ tensor and one Adam optimiser per setting)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tuner.hparams import EditHParams
from tuner.plumbing.adapters import Adapter
from tuner.plumbing.tokens import make_batch, pad_id_of, padding_side
from tuner.rome.context import fact_rows

KL_PROMPT = "{} is a"
SHARED_KNOBS = ("layer", "fact_token", "seed", "context_templates", "context_template_length_params")
"""Knobs every setting in one ``compute_vs`` batch must agree on."""


class VRows:
    """The batch of every fact's rows: R rewrite rows (one per context template, the target's
    tokens but the last appended) then 1 KL row ("{subject} is a")."""

    def __init__(self, tok: Any, adapter: Adapter, hp: EditHParams, requests: Sequence[Any],
                 templates: Sequence[str], device: Any) -> None:
        self.n_facts, self.per_fact = len(requests), len(templates) + 1
        prompts = fact_rows(tok, requests, templates, hp.fact_token)
        kl = fact_rows(tok, [_KLRequest(r.subject) for r in requests], ["{}"], hp.fact_token)
        rows, lookup, target_pos = [], [], []
        for req, fact, (kl_row,) in zip(requests, prompts, kl):
            n_target = len(req.target_ids)
            for ids, idx in fact:
                rows.append(ids + list(req.target_ids[:-1]))
                lookup.append(idx)
                target_pos.append([len(ids) - 1 + j for j in range(n_target)])
            rows.append(kl_row[0])
            lookup.append(kl_row[1])
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

    @property
    def width(self) -> int:
        return self.batch.input_ids.shape[1]

    def of(self, facts: Sequence[int]) -> torch.Tensor:
        """Batch rows of ``facts`` (in order: each fact's rewrite rows, then its KL row)."""
        p = self.per_fact
        return torch.tensor([f * p + j for f in facts for j in range(p)], device=self.edit_col.device)


class _KLRequest:
    def __init__(self, subject: str) -> None:
        self.prompt, self.subject = KL_PROMPT, subject


class VSettings:
    """The settings of one ``compute_vs`` batch: requests grouped by setting (one δ tensor and
    one Adam optimiser per group) and the per-request factors of the loss and the clamp."""

    def __init__(self, hp: EditHParams, knobs: Sequence[EditHParams] | None, n: int, device: Any) -> None:
        knobs = list(knobs) if knobs is not None else [hp] * n
        if len(knobs) != n:
            raise ValueError(f"knobs: {len(knobs)} settings for {n} requests")
        self.settings: list[EditHParams] = []
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

    def of(self, request: int) -> EditHParams:
        return self.settings[self.group_of[request]]

    def optimisers(self, value_init: torch.Tensor) -> tuple[list[torch.Tensor], list[Any], list[Any]]:
        """Per setting: its δ rows (zeros), its Adam optimiser and its schedule (or None)."""
        deltas = [torch.zeros_like(value_init[g], requires_grad=True) for g in self.groups]
        opts = [torch.optim.Adam([d], lr=self.settings[i].v_lr) for i, d in enumerate(deltas)]
        scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=self.settings[i].v_num_grad_steps)
                  if self.settings[i].lr_schedule == "cosine" else None for i, o in enumerate(opts)]
        return deltas, opts, scheds


def step_setting(delta: torch.Tensor, opt: Any, sched: Any, members: list[int], stepping: set[int],
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
