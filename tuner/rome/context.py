"""Context templates: ``"{}"`` plus short prefixes sampled from the model itself (ROME §3.1),
so k* and v* generalise over the text that may precede the subject. Seeded, hence
deterministic; each generated template ends in ``". {}"``.

    tuner edit --fact 0 --json | jq .context_templates"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tuner.plumbing.tokens import encode, make_batch, pad_id_of, subject_token_index


def fill_template(template: str, prompt: str, subject: str) -> str:
    """``template`` is a context template ("... . {}"); ``prompt`` holds "{}" for the subject."""
    return template.replace("{}", prompt).replace("{}", subject)


def fact_rows(tok: Any, requests: Sequence[Any], templates: Sequence[str],
              fact_token: str) -> list[list[tuple[list[int], int]]]:
    """Per request (``prompt``, ``subject``), per template: (token ids, fact-token index) — the
    rows every v* batch and MEMIT's keys are read from; template 0 must be the bare prompt."""
    if templates[0] != "{}":
        raise ValueError("context_templates[0] must be the bare prompt '{}' (tuner.rome.context)")
    return [[subject_token_index(tok, fill_template(t, r.prompt, r.subject), r.subject, fact_token)
             for t in templates] for r in requests]


EASYEDIT_START_WORDS = ("The", "Therefore", "Because", "I", "You")
"""EasyEdit starts its sampled context prefixes from these five words (count // 5 per word)."""


def context_templates(model: Any, tok: Any, mode: str | Sequence[str], length_params: Sequence[tuple[int, int]],
                      *, seed: int) -> list[str]:
    """``"{}"`` first (the bare prompt: row 0 of every v* batch), then the prefixes ``mode`` asks for:
    ``sampled`` (written by the model from its BOS), ``easyedit`` (from EasyEdit's start words,
    the start word kept, each ``tokens`` long in total), or an explicit list of templates."""
    if not isinstance(mode, str):
        return ["{}"] + [t for t in mode if t != "{}"]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    templates = ["{}"]
    for n_tokens, count in length_params:
        if mode == "easyedit":
            for word in EASYEDIT_START_WORDS:
                start = encode(tok, word)
                n_new = max(1, n_tokens - len(start))
                rows = _sample_rows(model, tok, start, count // len(EASYEDIT_START_WORDS), n_new, gen)
                templates += [_as_template(tok, row) for row in rows]  # the start word stays
        else:
            start = encode(tok, "") or encode(tok, "The")  # no BOS: start from a common word
            rows = _sample_rows(model, tok, start, count, n_tokens, gen)
            templates += [_as_template(tok, row[len(start):]) for row in rows]
    return templates


def _as_template(tok: Any, ids: list[int]) -> str:
    text = tok.decode(ids, skip_special_tokens=True)
    return text.replace("{", "(").replace("}", ")").strip() + ". {}"


@torch.no_grad()
def _sample_rows(model: Any, tok: Any, start: list[int], count: int, n_new: int, gen: torch.Generator,
                 top_k: int = 5) -> list[list[int]]:
    """``count`` continuations of ``start``, ``n_new`` tokens each, sampled from the top ``top_k``."""
    if count < 1:
        return []
    device = next(model.parameters()).device
    rows = [list(start) for _ in range(count)]
    for _ in range(n_new):
        # Rows grow together and share a start, so no row is ever padded.
        batch = make_batch(rows, pad_id=pad_id_of(tok), side="right", device=device)
        logits = model(**batch.model_kwargs(model)).logits[:, -1, :].float().cpu()  # (count, V)
        top = logits.topk(top_k, dim=-1)
        pick = torch.multinomial(torch.softmax(top.values, dim=-1), 1, generator=gen).squeeze(1)
        for r, row in enumerate(rows):
            row.append(int(top.indices[r, pick[r]]))
    return rows
