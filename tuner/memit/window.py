"""MEMIT's window of layers ``layer … layer + window_size − 1`` and the context that writes every
layer's ΔW for a block."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch

from tuner.errors import ConfigError
from tuner.hparams import EditHParams
from tuner.plumbing.adapters import Adapter
from tuner.rome.rank_one import weight_update


def fit_window(layer: int, width: int, n_layers: int) -> int:
    """The start of a ``width``-layer window asked to start at ``layer``, moved down so that it
    ends at the model's last layer at the latest (the search space proposes windows this way)."""
    return max(0, min(layer, n_layers - width))


def window(hp: EditHParams, n_layers: int) -> list[int]:
    """The MEMIT layers ``layer … layer + window_size − 1``; ``ConfigError`` when they do not fit."""
    top = hp.layer + hp.window_size - 1
    if hp.layer < 0 or top >= n_layers:
        raise ConfigError(f"hparams.layer {hp.layer} + window_size {hp.window_size} exceeds the model's "
                          f"{n_layers} layers (the window must end at layer {n_layers - 1} or below)")
    return list(range(hp.layer, top + 1))


@contextmanager
def weight_updates(model: Any, adapter: Adapter, deltas: dict[int, torch.Tensor]) -> Iterator[None]:
    """Add every layer's ΔW (d_model × d_ff) for the duration of the block; each weight is
    restored bit-exactly on exit, even when the block (or a later layer's shape check) raises."""
    with ExitStack() as stack:
        for layer in sorted(deltas):
            stack.enter_context(weight_update(model, adapter, layer, deltas[layer]))
        yield
