"""Second-moment statistics C = E[k kᵀ] of a rewrite module's input over a text corpus
(computed on first use by ``tuner edit`` / a worker; ``tuner edit --mom2`` exercises it).

Computed once per (model fingerprint, layer, corpus, sample count) and cached as safetensors
under ``storage/stats/<fingerprint>/``. Concurrent workers take a file lock, so one computes
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
from tuner.rome.adapters import Adapter
from tuner.rome.hooks import Trace
from tuner.rome.tokens import encode, make_batch, pad_id_of, padding_side

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
def compute_second_moment(
    model: Any,
    tok: Any,
    adapter: Adapter,
    layer: int,
    texts: Sequence[str],
    *,
    n_samples: int,
    batch_size: int = 32,
    max_length: int = 256,
    progress: bool = True,
) -> tuple[torch.Tensor, int]:
    """E[k kᵀ] over up to ``n_samples`` non-padding token positions. Returns (C, count)."""
    module = adapter.rewrite.format(layer)
    device = next(model.parameters()).device
    side = padding_side(tok, adapter.padding_side)
    pad = pad_id_of(tok)
    total: torch.Tensor | None = None  # (d_ff, d_ff), float64 accumulator
    count = 0
    bar = tqdm(total=n_samples, desc=f"stats {module}", unit="tok", disable=not progress, leave=False)
    for start in range(0, len(texts), batch_size):
        rows = [encode(tok, t)[:max_length] for t in texts[start : start + batch_size]]
        batch = make_batch(rows, pad_id=pad, side=side, device=device)
        with Trace(model, module, retain_input=True) as tr:
            model(**batch.model_kwargs(model))
        keys = tr.input
        if adapter.seq_first:
            keys = keys.transpose(0, 1)  # (T, B, d) -> (B, T, d)
        k = keys[batch.attention_mask.bool()].to(torch.float64)  # (N, d_ff)
        k = k[: n_samples - count]
        total = k.T @ k if total is None else total + k.T @ k
        count += k.shape[0]
        bar.update(k.shape[0])
        if count >= n_samples:
            break
    bar.close()
    if total is None or count == 0:
        raise ValueError("the statistics corpus is empty")
    return (total / count).to(torch.float32), count


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
    progress: bool = True,
) -> torch.Tensor:
    """Cached ``compute_second_moment``: load if present, else compute under a file lock."""
    module = adapter.rewrite.format(layer)
    path = stats_path(root, fingerprint, module, corpus_id(texts), n_samples)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.exists():
            try:
                return load_file(str(path))["mom2"]
            except Exception as exc:  # noqa: BLE001 - truncated/corrupt cache: keep it aside, recompute
                aside = path.with_name(path.name + f".corrupt-{int(time.time())}")
                path.replace(aside)
                log.warning("statistics cache %s is unreadable (%s); moved to %s and recomputing", path,
                            str(exc).splitlines()[0], aside.name)
        log.info("computing second-moment statistics for %s (%d samples)", module, n_samples)
        mom2, count = compute_second_moment(
            model, tok, adapter, layer, texts, n_samples=n_samples, progress=progress
        )
        meta = {"module": module, "count": str(count), "fingerprint": fingerprint}
        atomic_write(path, lambda tmp: save_file({"mom2": mom2.contiguous()}, str(tmp), metadata=meta))
        return mom2
