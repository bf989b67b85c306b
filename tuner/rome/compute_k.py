"""k*: the rewrite module's input at the fact token (the subject's last token by default),
averaged over the context templates — ROME's "key" that selects the subject."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tuner.plumbing.adapters import Adapter
from tuner.plumbing.module_io import module_io_at
from tuner.rome.context import fill_template


def compute_k(
    model: Any,
    tok: Any,
    adapter: Adapter,
    layer: int,
    prompt: str,
    subject: str,
    context_templates: Sequence[str],
    fact_token: str = "subject_last",
) -> torch.Tensor:
    """k* (d_ff,): mean key over ``context_templates`` filled with the fact's prompt."""
    prompts = [fill_template(t, prompt, subject) for t in context_templates]
    keys, _ = module_io_at(model, tok, adapter, layer, prompts, subject, fact_token)
    return keys.mean(0)
