"""Replay the blocks below the edit layer instead of recomputing them every optimisation step.

δ is added to the output of layer L's rewrite module, so nothing computed by blocks 0..L−1
depends on it. ``PrefixReplay`` keeps block L−1's output for every row of the batch, recorded
during a forward pass the caller runs anyway (``recording``); inside ``replaying(rows)`` each
of those blocks returns the recorded output for the given rows instead of running. The model's
own forward still builds the embeddings, masks and rotary tables (cheap), so this is generic
over every adapter family, sequence-first ChatGLM included: only the block modules are
swapped, never the model code.

    replay = PrefixReplay(model, adapter, layer)
    with replay.recording(rows):               # a full forward pass that also serves other needs
        model(**kwargs_for(rows))
    with replay.replaying(rows):               # rows: LongTensor of batch rows in this forward
        logits = model(**kwargs_for(rows)).logits"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from tuner.plumbing.adapters import Adapter
from tuner.plumbing.hooks import get_module


class PrefixReplay:
    def __init__(self, model: Any, adapter: Adapter, layer: int) -> None:
        self.model, self.adapter, self.layer = model, adapter, layer
        self.blocks = [get_module(model, adapter.layer.format(i)) for i in range(layer)]
        self._parts: list[tuple[torch.Tensor, Any]] = []  # (batch rows, block L−1's output) per pass
        self._recorded: Any = None  # the parts assembled: block L−1's output for every row

    @property
    def active(self) -> bool:
        """Layer 0 has no prefix to replay."""
        return bool(self.blocks)

    @contextmanager
    def recording(self, rows: torch.Tensor) -> Iterator[None]:
        """Keep block L−1's output of this forward pass as the output of batch ``rows``; the
        passes may cover the batch in any number of chunks."""
        if not self.active:
            yield
            return

        def hook(_module: Any, _args: Any, output: Any) -> None:
            self._parts.append((rows, _detach(output)))

        handle = self.blocks[-1].register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()
        self._recorded = None

    def _assemble(self) -> Any:
        """The recorded chunks as one output over all rows, in row order."""
        dim = 1 if self.adapter.seq_first else 0
        first = self._parts[0][1]
        hidden = [(_first_tensor(out)) for _, out in self._parts]
        n = 1 + max(int(r.max()) for r, _ in self._parts)  # a retried chunk may appear twice
        shape = list(hidden[0].shape)
        shape[dim] = n
        full = hidden[0].new_empty(shape)
        for (rows, _), h in zip(self._parts, hidden):
            full.index_copy_(dim, rows, h)
        return full if isinstance(first, torch.Tensor) else (full, *first[1:])

    @contextmanager
    def replaying(self, rows: torch.Tensor | None = None) -> Iterator[None]:
        """Blocks 0..L−1 return the recorded output of ``rows`` (all rows if ``None``)."""
        if not self.active:
            yield
            return
        if self._recorded is None:
            if not self._parts:
                raise RuntimeError("PrefixReplay.recording() must run before replaying()")
            self._recorded = self._assemble()
        out = self._recorded if rows is None else _select(self._recorded, rows, 1 if self.adapter.seq_first else 0)

        def replay(*_args: Any, **_kwargs: Any) -> Any:
            return out

        for block in self.blocks:
            block.forward = replay  # an instance attribute shadows the class's forward
        try:
            yield
        finally:
            for block in self.blocks:
                del block.forward


def _detach(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, tuple):
        return tuple(_detach(x) for x in output)
    return output


def _first_tensor(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def _select(output: Any, rows: torch.Tensor, dim: int) -> Any:
    """``output`` restricted to batch ``rows``: the hidden states (first tensor) are indexed;
    everything else a block returns (``None``, caches) is passed through as recorded."""
    if isinstance(output, torch.Tensor):
        return output.index_select(dim, rows)
    if isinstance(output, tuple) and output:
        return (_select(output[0], rows, dim), *output[1:])
    return output
