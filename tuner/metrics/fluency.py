"""Generation quality before and after an edit: the n-gram entropy of short greedy
continuations (ROME's fluency measure), and the rule that flags a *disabling* edit.

An edit is disabling (Gupta et al. 2024, "Rebuilding ROME") when it breaks the model rather than
rewriting one fact: the update dwarfs the weight it is added to, or the model's continuations
of the fact's prompts collapse into repetition. The default thresholds (a study can set its own:
``objective.max_update_norm``, ``objective.max_entropy_drop``):

    update_norm  = ‖ΔW‖_F / ‖W‖_F                   > MAX_UPDATE_NORM   (25)
    entropy drop = (H_before − H_after) / H_before  > MAX_ENTROPY_DROP  (0.5)
    or any non-finite probability or norm

On the embedded default model, ``tests/rome/test_rome_semantics.py::
test_collapse_metrics_flag_a_destroyed_edit_not_a_good_one`` asserts that a good edit (the
``verify`` preset's v* settings at layer 1) stays under MAX_UPDATE_NORM and is not disabling, and
that the same edit destroyed (v_lr 5, clamp 1000, no weight decay or KL) exceeds it and is;
``python bench/semantics.py`` prints the mean update_norm, entropy drop and share of disabling
edits over 20 facts for the textbook, the default study's and such destroyed settings. A small
model's rank-one update is large next to its weight; on 6–7 B models lower ``max_update_norm`` to
a few times your textbook baseline's ``update_norm``.

H is the mean over prompts of (H₂ + 2·H₃)/3, Hₙ the entropy in bits of the continuation's
n-gram distribution over GEN_TOKENS greedy tokens (trigrams weighted double, as in ROME)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from tuner.metrics.row_updates import RowUpdates
from tuner.plumbing.adapters import Adapter
from tuner.plumbing.tokens import accepts_position_ids, encode, forward_params, make_batch, pad_id_of, padding_side

GEN_TOKENS = 16
MAX_UPDATE_NORM = 25.0
MAX_ENTROPY_DROP = 0.5


@torch.no_grad()
def greedy_continuations(model: Any, tok: Any, adapter: Adapter, prompts: Sequence[str],
                         n_tokens: int = GEN_TOKENS, *, edits: RowUpdates | None = None,
                         prompt_fact: Sequence[int] | None = None, cache: bool = True) -> list[list[int]]:
    """The next ``n_tokens`` greedy tokens after each prompt. With ``edits``, prompt i is
    continued under the rank-one update of fact ``prompt_fact[i]``. Models with a key/value
    cache and explicit positions (the ``transformers`` decoders) run each new token alone
    (``_cached``; ``bench/gpu.py [--toy]`` prints the time of both ways and how many continuations
    agree); sequence-first models (ChatGLM's remote code, with its own cache format) and
    ``cache=False`` re-run the whole sequence every step."""
    if cache and not adapter.seq_first and accepts_position_ids(model):
        cached = _cached(model, tok, prompts, n_tokens, edits, prompt_fact)
        if cached is not None:
            return cached
    device = next(model.parameters()).device
    rows = [encode(tok, p) for p in prompts]
    start = [len(r) for r in rows]
    side = padding_side(tok, adapter.padding_side)
    for _ in range(n_tokens):
        batch = make_batch(rows, pad_id=pad_id_of(tok), side=side, device=device)
        with (nullcontext() if edits is None else edits.rows(torch.tensor(prompt_fact))):
            logits = model(**batch.model_kwargs(model)).logits  # (B, T, V)
        last = torch.tensor([batch.offsets[i] + len(r) - 1 for i, r in enumerate(rows)], device=device)
        nxt = logits[torch.arange(len(rows), device=device), last].argmax(-1).tolist()
        rows = [r + [t] for r, t in zip(rows, nxt)]
    return [r[s:] for r, s in zip(rows, start)]


def _cached(model: Any, tok: Any, prompts: Sequence[str], n_tokens: int, edits: RowUpdates | None,
            prompt_fact: Sequence[int] | None) -> list[list[int]] | None:
    """Greedy decoding with the model's key/value cache: the prompts left-padded (positions
    count real tokens only), then one token per row and step. None if the model returns no cache."""
    # transformers ≥ 5.2x calls it `cache`, earlier versions `past_key_values`
    cache_kwarg = "cache" if "cache" in forward_params(model) else "past_key_values"
    device = next(model.parameters()).device
    batch = make_batch([encode(tok, p) for p in prompts], pad_id=pad_id_of(tok), side="left", device=device)
    ids, mask, pos = batch.input_ids, batch.attention_mask, batch.position_ids
    past, out = None, []
    with nullcontext() if edits is None else edits.rows(torch.tensor(prompt_fact)):
        for _ in range(n_tokens):
            step = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                         **{cache_kwarg: past})
            past = step["cache"] if "cache" in step else step.get("past_key_values")
            if past is None:
                return None
            ids = step.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            out.append(ids)
            mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], 1)
            pos = pos[:, -1:] + 1
    return torch.cat(out, 1).tolist()


def ngram_entropy(ids: Sequence[int]) -> float:
    """(H₂ + 2·H₃)/3 in bits over the token n-grams of one continuation."""
    total = 0.0
    for n, weight in ((2, 1.0), (3, 2.0)):
        grams = Counter(tuple(ids[i : i + n]) for i in range(len(ids) - n + 1))
        count = sum(grams.values())
        h = -sum(c / count * math.log2(c / count) for c in grams.values()) if count else 0.0
        total += weight * h
    return total / 3.0


def generation_entropy(model: Any, tok: Any, adapter: Adapter, prompts: Sequence[str]) -> float:
    return generation_entropies(model, tok, adapter, [prompts])[0]


def generation_entropies(model: Any, tok: Any, adapter: Adapter, groups: Sequence[Sequence[str]], *,
                         edits: RowUpdates | None = None) -> list[float]:
    """Mean continuation entropy of each group of prompts, all continued in one batch; with
    ``edits`` group f is continued under fact f's edit."""
    prompts = [p for g in groups for p in g]
    owner = [f for f, g in enumerate(groups) for _ in g]
    conts = greedy_continuations(model, tok, adapter, prompts, edits=edits, prompt_fact=owner)
    out = []
    for f, g in enumerate(groups):
        mine = [c for c, o in zip(conts, owner) if o == f]
        out.append(sum(ngram_entropy(c) for c in mine) / len(mine))
    return out


def fluency_prompts(fact: Any, per_group: int = 2) -> list[str]:
    """The fact's rewrite prompt and its first paraphrase and neighbourhood prompts."""
    return [fact.rewrite_prompt, *fact.paraphrase_prompts[:per_group], *fact.neighborhood_prompts[:per_group]]


def is_disabling(metrics: dict[str, Any], *, max_update_norm: float = MAX_UPDATE_NORM,
                 max_entropy_drop: float = MAX_ENTROPY_DROP) -> bool:
    """The rule above, on an edit's metrics (``update_norm``, ``gen_entropy_pre``, ``gen_entropy``,
    ``final_prob``)."""
    before, after = metrics["gen_entropy_pre"], metrics["gen_entropy"]
    if not all(math.isfinite(x) for x in (metrics["update_norm"], after, metrics["final_prob"])):
        return True
    drop = (before - after) / before if before > 0 else 0.0
    return metrics["update_norm"] > max_update_norm or drop > max_entropy_drop


@dataclass(frozen=True)
class DisablingRule:
    """The thresholds of the rule above, as one value an ``Editor`` carries: a study's own
    (``objective.max_update_norm``, ``objective.max_entropy_drop``) wherever its edits are
    scored — trials, references, held-out validation, ``tuner edit --config``."""

    max_update_norm: float = MAX_UPDATE_NORM
    max_entropy_drop: float = MAX_ENTROPY_DROP

    def __call__(self, metrics: dict[str, Any]) -> bool:
        return is_disabling(metrics, max_update_norm=self.max_update_norm, max_entropy_drop=self.max_entropy_drop)
