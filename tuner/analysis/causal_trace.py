"""Causal tracing (Meng et al. 2022, §2): where does the model recall a fact?

For each fact prompt: a clean run; corrupted runs with Gaussian noise (``noise`` × the std of
the embedding matrix, seeded) on the subject tokens' embeddings; then corrupted runs in which
one hidden state (layer × token), or a window of MLP or attention outputs around a layer, is
restored to its clean value. The indirect effect of a site is P(answer | restored) −
P(answer | corrupted). Row 0 of every batch is the clean prompt and rows 1..S its noised
copies, so a restoration copies row 0 into the others (batched over the noised copies).

    tuner trace --config studies/default.yaml --facts 20
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from tuner.errors import ConfigError
from tuner.plumbing.adapters import Adapter
from tuner.plumbing.hooks import Trace, TraceDict
from tuner.plumbing.tokens import encode, make_batch, pad_id_of, subject_token_index, target_token_ids

KINDS = ("state", "mlp", "attn")


@dataclass
class FactTrace:
    case_id: int
    prompt: str
    answer: str
    tokens: list[str]
    subject_first: int
    subject_last: int
    clean_prob: float
    corrupt_prob: float
    scores: dict[str, list[list[float]]]  # kind -> (n_layers, n_tokens) P(answer) with the site restored

    def effect_at_subject_last(self, kind: str) -> list[float]:
        return [row[self.subject_last] - self.corrupt_prob for row in self.scores[kind]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def trace_fact(model: Any, tok: Any, adapter: Adapter, *, case_id: int, prompt: str, subject: str, answer: str,
               noise: float, samples: int, window: int, generator: torch.Generator) -> FactTrace:
    ids, last = subject_token_index(tok, prompt, subject, "subject_last")
    _, first = subject_token_index(tok, prompt, subject, "subject_first")
    n_layers = adapter.n_layers(model.config)
    device = next(model.parameters()).device
    batch = make_batch([ids] * (samples + 1), pad_id=pad_id_of(tok), side="right", device=device)
    kwargs = batch.model_kwargs(model)
    answer_id = target_token_ids(tok, prompt, answer)[0]
    embed = model.get_submodule(adapter.embed)
    std = float(embed.weight.float().std())
    span = last - first + 1
    eps = torch.randn((samples, span, embed.weight.shape[1]), generator=generator) * (noise * std)  # (S, n_subj, d)

    def corrupt(out: torch.Tensor, _m: Any) -> torch.Tensor:
        v = adapter.batch_first(out)
        v[1:, first : last + 1] += eps.to(device=v.device, dtype=v.dtype)
        return out

    def prob(modules: list[str], tokens: list[int]) -> tuple[float, float]:
        """(clean, mean corrupted) P(answer) with ``modules``' outputs at ``tokens`` restored from row 0."""

        def restore(out: torch.Tensor, _m: Any) -> torch.Tensor:
            v = adapter.batch_first(out)
            v[1:, tokens] = v[0, tokens]
            return out

        with Trace(model, adapter.embed, edit_output=corrupt), TraceDict(model, modules, edit_output=restore):
            p = model(**kwargs).logits[:, -1].float().softmax(-1)[:, answer_id]  # (S+1,)
        return float(p[0]), float(p[1:].mean())

    clean, corrupted = prob([], [])
    n_tok = len(ids)
    scores: dict[str, list[list[float]]] = {k: [] for k in KINDS}
    for layer in range(n_layers):
        lo, hi = max(0, layer - window // 2), min(n_layers, layer - window // 2 + window)
        for kind in KINDS:
            row = []
            if kind == "state":
                modules = [adapter.layer.format(layer)]
            else:
                template = adapter.mlp if kind == "mlp" else adapter.attn
                modules = [template.format(j) for j in range(lo, hi)]
            for t in range(n_tok):
                row.append(prob(modules, [t])[1])
            scores[kind].append(row)
    return FactTrace(case_id, prompt, answer, tok.convert_ids_to_tokens(ids), first, last, clean, corrupted, scores)


def check_trace_options(*, noise: float, facts: int, samples: int) -> None:
    """The options' bounds, checked before a model is loaded (``tuner trace``) and here."""
    if noise <= 0:
        raise ConfigError(f"--noise must be > 0 (a multiple of the embedding std), got {noise}")
    if facts < 1 or samples < 1:
        raise ConfigError("--facts and --samples must be >= 1")


def predicts(model: Any, tok: Any, prompt: str, answer: str) -> bool:
    ids = encode(tok, prompt)
    batch = make_batch([ids], pad_id=pad_id_of(tok), side="right", device=next(model.parameters()).device)
    with torch.no_grad():
        top = int(model(**batch.model_kwargs(model)).logits[0, -1].argmax())
    return top == target_token_ids(tok, prompt, answer)[0]


def trace_facts(model: Any, tok: Any, adapter: Adapter, facts: Sequence[Any], *, noise: float = 3.0,
                samples: int = 10, window: int | None = None, seed: int = 0,
                progress: bool = True) -> tuple[list[FactTrace], int]:
    """Trace the facts the model gets right; returns (traces, number skipped as wrong)."""
    from tqdm.auto import tqdm

    check_trace_options(noise=noise, facts=len(facts) or 1, samples=samples)
    n_layers = adapter.n_layers(model.config)
    window = window or max(1, n_layers // 4)
    gen = torch.Generator().manual_seed(seed)
    out, skipped = [], 0
    for f in tqdm(facts, desc="causal trace", unit="fact", disable=not progress):
        if not predicts(model, tok, f.rewrite_prompt, f.target_true):
            skipped += 1
            continue
        out.append(trace_fact(model, tok, adapter, case_id=f.case_id, prompt=f.rewrite_prompt, subject=f.subject,
                              answer=f.target_true, noise=noise, samples=samples, window=window, generator=gen))
    return out, skipped


def per_layer_effects(traces: Sequence[FactTrace]) -> dict[str, list[float]]:
    """Average indirect effect per layer at the subject's last token, for each kind."""
    if not traces:
        return {k: [] for k in KINDS}
    n = len(traces[0].scores["state"])
    return {k: [sum(t.effect_at_subject_last(k)[i] for t in traces) / len(traces) for i in range(n)] for k in KINDS}
