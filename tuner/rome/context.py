"""Context templates: ``"{}"`` plus short prefixes sampled from the model itself (ROME §3.1),
so k* and v* generalise over the text that may precede the subject. Seeded, hence
deterministic; each template ends in ``". {}"``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tuner.rome.tokens import encode, make_batch, pad_id_of


def fill_template(template: str, prompt: str, subject: str) -> str:
    """``template`` is a context template ("... . {}"); ``prompt`` holds "{}" for the subject."""
    return template.replace("{}", prompt).replace("{}", subject)


@torch.no_grad()
def sample_context_templates(
    model: Any,
    tok: Any,
    length_params: Sequence[tuple[int, int]],
    *,
    seed: int,
    top_k: int = 5,
) -> list[str]:
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    start = encode(tok, "")
    if not start:  # no BOS: start from a common word
        start = encode(tok, "The")
    templates = ["{}"]
    for n_tokens, count in length_params:
        rows = [list(start) for _ in range(count)]
        for _ in range(n_tokens):
            # Rows grow together and share a start, so right padding never occurs here.
            batch = make_batch(rows, pad_id=pad_id_of(tok), side="right", device=device)
            logits = model(**batch.model_kwargs(model)).logits[:, -1, :].float().cpu()  # (count, V)
            top = logits.topk(top_k, dim=-1)
            probs = torch.softmax(top.values, dim=-1)
            pick = torch.multinomial(probs, 1, generator=gen).squeeze(1)
            for r, row in enumerate(rows):
                row.append(int(top.indices[r, pick[r]]))
        for row in rows:
            text = tok.decode(row[len(start) :], skip_special_tokens=True)
            text = text.replace("{", "(").replace("}", ")").strip()
            templates.append(text + ". {}")
    return templates
