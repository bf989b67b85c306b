"""Second-moment statistics C = E[k kᵀ] of a rewrite module's input over a text corpus
(computed on first use by ``tuner edit`` / a worker; ``tuner edit --mom2`` exercises it).

Every layer a study can edit is computed in one pass over the corpus, and each forward pass
stops after the highest of them; batches are budgeted in tokens, not documents.

Computed once per (model fingerprint, layer, corpus, token count) and cached as safetensors
under ``storage/stats/<fingerprint>/``. ``n_samples`` below is that token count (the study's
``hparams.mom2_n_tokens``): non-padding token positions, not documents as in ROME's and
EasyEdit's ``mom2_n_samples``. Concurrent workers take a file lock, so one computes
and the others read; the file is written to a temp name and renamed (never half-written)."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from tuner.paths import atomic_write
from tuner.plumbing.adapters import Adapter
from tuner.plumbing.hooks import forward_until, get_module
from tuner.plumbing.tokens import encode, make_batch, pad_id_of, padding_side

log = logging.getLogger(__name__)


def corpus_id(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def stats_path(root: Path, fingerprint: str, module: str, corpus: str, n_samples: int) -> Path:
    return root / "stats" / fingerprint / f"{module}.{corpus}.{n_samples}.safetensors"


@torch.no_grad()
def compute_second_moments(
    model: Any,
    tok: Any,
    adapter: Adapter,
    layers: Sequence[int],
    texts: Sequence[str],
    *,
    n_samples: int,
    tokens_per_batch: int = 8192,
    max_length: int = 256,
    progress: bool = True,
) -> dict[int, tuple[torch.Tensor, int]]:
    """E[k kᵀ] at every layer in ``layers`` over the first ``n_samples`` non-padding token
    positions of the corpus (each text cut to ``max_length`` tokens), in one pass: each batch of
    at most ``tokens_per_batch`` padded tokens runs the model only up to the highest requested
    layer. Returns {layer: (C, count)}, count the token positions averaged over."""
    layers = sorted(set(layers))
    device = next(model.parameters()).device
    side = padding_side(tok, adapter.padding_side)
    pad = pad_id_of(tok)
    totals: dict[int, torch.Tensor] = {}  # float64 accumulators (d_ff, d_ff)
    count = 0
    top = layers[-1]
    state: dict[str, Any] = {}

    def hook_for(layer: int) -> Any:
        def hook(_module: Any, args: Any, _output: Any) -> None:
            keys = args[0] if isinstance(args, tuple) else args
            keys = adapter.batch_first(keys)
            k = keys[state["mask"]].to(torch.float64)[: state["take"]]  # (N, d_ff)
            totals[layer] = k.T @ k if layer not in totals else totals[layer] + k.T @ k

        return hook

    rows = (encode(tok, t)[:max_length] for t in texts)
    handles = [get_module(model, adapter.rewrite.format(layer)).register_forward_hook(hook_for(layer))
               for layer in layers]
    names = ", ".join(str(layer) for layer in layers)
    bar = tqdm(total=n_samples, desc=f"statistics, layer{'s' if len(layers) > 1 else ''} {names}", unit="tok",
               disable=not progress, leave=False)
    try:
        for group in _batched_rows(rows, tokens_per_batch):
            batch = make_batch(group, pad_id=pad, side=side, device=device)
            state["mask"] = batch.attention_mask.bool()
            state["take"] = n_samples - count
            forward_until(model, adapter.rewrite.format(top), **batch.model_kwargs(model))
            got = min(int(state["mask"].sum()), n_samples - count)
            count += got
            bar.update(got)
            if count >= n_samples:
                break
    finally:
        for h in handles:
            h.remove()
        bar.close()
    if count == 0:
        raise ValueError("the statistics corpus is empty")
    return {layer: ((totals[layer] / count).to(torch.float32), count) for layer in layers}


def _batched_rows(rows: Any, tokens_per_batch: int) -> Any:
    """Consecutive non-empty rows grouped so that (rows × the longest row) stays within
    ``tokens_per_batch`` padded tokens (a longer row goes alone); ``rows`` is a lazy iterator,
    so the corpus is tokenised as it is consumed."""
    current: list[list[int]] = []
    width = 0
    for row in rows:
        if not row:
            continue
        w = max(width, len(row))
        if current and w * (len(current) + 1) > tokens_per_batch:
            yield current
            current, w = [], len(row)
        current.append(row)
        width = w
    if current:
        yield current


def second_moment(
    model: Any,
    tok: Any,
    adapter: Adapter,
    layer: int,
    texts: Sequence[str],
    *,
    n_samples: int,
    fingerprint: str,
    root: Path,
    also: Sequence[int] = (),
    progress: bool = True,
) -> torch.Tensor:
    """Cached statistics at ``layer`` over ``n_samples`` corpus tokens: loaded if its file is
    readable; otherwise computed in one pass together with every layer in ``also`` whose file is
    missing, under a lock per model, and written one file per layer (temp file + rename)."""
    corpus = corpus_id(texts)

    def path_of(i: int) -> Path:
        return stats_path(root, fingerprint, adapter.rewrite.format(i), corpus, n_samples)

    folder = root / "stats" / fingerprint
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / "compute.lock")):
        path = path_of(layer)
        if path.exists():
            try:
                return load_file(str(path))["mom2"]
            except Exception as exc:  # noqa: BLE001 - truncated/corrupt cache: keep it aside, recompute
                aside = path.with_name(path.name + f".corrupt-{int(time.time())}")
                path.replace(aside)
                log.warning("statistics cache %s is unreadable (%s); moved to %s and recomputing", path,
                            str(exc).splitlines()[0], aside.name)
        missing = sorted({layer, *(i for i in also if not path_of(i).exists())})
        log.info("computing second-moment statistics for layer%s %s in one pass (%d tokens)",
                 "s" if len(missing) > 1 else "", ", ".join(map(str, missing)), n_samples)
        computed = compute_second_moments(model, tok, adapter, missing, texts, n_samples=n_samples, progress=progress)
        for i, (mom2, count) in computed.items():
            meta = {"module": adapter.rewrite.format(i), "count": str(count), "fingerprint": fingerprint}
            atomic_write(path_of(i), lambda tmp, m=mom2, md=meta: save_file({"mom2": m.contiguous()}, str(tmp),
                                                                            metadata=md))
        return computed[layer][0]
