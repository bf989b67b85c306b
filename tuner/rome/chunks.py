"""Forward passes over many facts in chunks of whole facts: a CUDA out-of-memory error halves the
chunk and repeats the part that failed (v*'s optimisation steps and MEMIT's key pass share it)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)


class Chunks:
    """``run(fn, facts)`` calls ``fn(part)`` on consecutive parts of ``facts`` of ``size`` facts
    (at least one); the size a retry settled on stays for the later calls."""

    def __init__(self, n_facts: int, rows_per_fact: int, width: int, *, tokens_per_chunk: int,
                 max_facts: int | None, device: Any) -> None:
        by_tokens = tokens_per_chunk // (rows_per_fact * width)
        self.size = max(1, min(n_facts, max_facts or n_facts, by_tokens))
        self.device = torch.device(device)

    def run(self, fn: Callable[[list[int]], None], facts: Sequence[int]) -> None:
        facts = list(facts)
        i = 0
        while i < len(facts):
            part = facts[i:i + self.size]
            try:
                fn(part)
            except torch.OutOfMemoryError:
                if self.size == 1:
                    raise
                self.size = max(1, self.size // 2)
                log.warning("out of memory with %d facts per forward pass; retrying with %d", len(part), self.size)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            i += len(part)
