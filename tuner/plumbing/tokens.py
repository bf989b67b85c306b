"""Tokenisation and batching that stay correct under left padding and prefix tokens.

Each prompt is tokenised alone, so every position is first known in the unpadded row; padding
then shifts a row by a known ``offset``. Batch rows are always indexed as ``offset + i``, which
is right whichever side the tokenizer pads on (the classic bug is to assume right padding).
Position ids are passed explicitly (cumsum of the mask) so a left-padded row sees the same
positions as when it runs alone."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from tuner.errors import EditError


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    position_ids: torch.Tensor  # (B, T)
    offsets: list[int]  # per row: index in the padded row of the unpadded row's token 0

    def model_kwargs(self, model: Any) -> dict[str, torch.Tensor]:
        kwargs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if accepts_position_ids(model):
            kwargs["position_ids"] = self.position_ids
        return kwargs


_FORWARD_PARAMS: dict[type, frozenset[str]] = {}


def forward_params(model: Any) -> frozenset[str]:
    """The names ``model.forward`` takes (read once per model class)."""
    cls = type(model)
    if cls not in _FORWARD_PARAMS:
        _FORWARD_PARAMS[cls] = frozenset(inspect.signature(model.forward).parameters)
    return _FORWARD_PARAMS[cls]


def accepts_position_ids(model: Any) -> bool:
    return "position_ids" in forward_params(model)


def encode(tok: Any, text: str) -> list[int]:
    """Token ids of ``text`` with the tokenizer's own prefix tokens (BOS, ``[gMASK] <sop>``), no EOS."""
    ids = list(tok(text, add_special_tokens=True)["input_ids"])
    eos = getattr(tok, "eos_token_id", None)
    if eos is not None and len(ids) > 1 and ids[-1] == eos and not text.endswith(str(tok.eos_token)):
        ids = ids[:-1]
    return ids


def padding_side(tok: Any, adapter_side: str) -> str:
    return getattr(tok, "padding_side", "right") if adapter_side == "tokenizer" else adapter_side


def make_batch(rows: list[list[int]], *, pad_id: int, side: str, device: Any) -> Batch:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    offsets = []
    for i, row in enumerate(rows):
        off = width - len(row) if side == "left" else 0
        ids[i, off : off + len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, off : off + len(row)] = 1
        offsets.append(off)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    return Batch(ids.to(device), mask.to(device), pos.to(device), offsets)


def pad_id_of(tok: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tok, attr, None)
        if value is not None:
            return int(value)
    return 0


def subject_token_index(tok: Any, prompt: str, subject: str, fact_token: str) -> tuple[list[int], int]:
    """Token ids of ``prompt`` (subject already filled in) and the index of the fact token.

    ``subject_last``/``subject_first``: the last/first token overlapping the *last* occurrence
    of the subject; ``last``: the prompt's final token."""
    ids = encode(tok, prompt)
    if fact_token == "last":
        return ids, len(ids) - 1
    start = prompt.rfind(subject)
    if start < 0 or not subject:
        raise EditError(f"subject {subject!r} not found in prompt {prompt!r}")
    end = start + len(subject)
    spans = _offsets(tok, prompt, ids)
    if spans is not None:
        hits = [i for i, (a, b) in enumerate(spans) if b > a and a < end and b > start]
        if hits:
            return ids, hits[-1] if fact_token == "subject_last" else hits[0]
    # Slow tokenizers: count the tokens of the prefix (ROME's own approach).
    if fact_token == "subject_last":
        return ids, len(encode(tok, prompt[:end])) - 1
    return ids, len(encode(tok, prompt[:start]))


def _offsets(tok: Any, prompt: str, ids: list[int]) -> list[tuple[int, int]] | None:
    if not getattr(tok, "is_fast", False):
        return None
    enc = tok(prompt, add_special_tokens=True, return_offsets_mapping=True)
    spans = [tuple(s) for s in enc["offset_mapping"]]
    return spans[: len(ids)] if list(enc["input_ids"][: len(ids)]) == ids else None


def target_token_ids(tok: Any, prompt: str, target: str) -> list[int]:
    """The ids that continue ``prompt`` with `` target`` — exactly the target's tokens.

    Tokenising prompt and prompt+target together and taking the difference avoids the extra
    token SentencePiece produces when a leading space is tokenised on its own."""
    sep = "" if target.startswith(" ") or prompt.endswith(" ") else " "
    p_ids = encode(tok, prompt)
    full = encode(tok, prompt + sep + target)
    if full[: len(p_ids)] == p_ids and len(full) > len(p_ids):
        return full[len(p_ids) :]
    ids = list(tok(sep + target, add_special_tokens=False)["input_ids"])
    if not ids:
        raise EditError(f"target {target!r} tokenises to nothing")
    return ids


def target_logprobs_at(logits: Any, rows: Any, cols: Any, target_ids: Any) -> Any:
    """log P(target token) read from a padded batch's logits: (R, L).

    ``rows`` (R,) picks batch rows, ``cols`` (R, L) the positions whose next-token distribution
    predicts each target token (already shifted by the row's padding offset), ``target_ids``
    (R, L) or (L,) the tokens. Only the selected positions are normalised (R·L·V, not B·T·V)."""
    picked = logits[rows[:, None], cols].float().log_softmax(-1)  # (R, L, V)
    ids = target_ids.expand(cols.shape) if target_ids.dim() == 1 else target_ids
    return picked.gather(-1, ids[..., None]).squeeze(-1)  # (R, L)
