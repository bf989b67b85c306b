"""Forward hooks as context managers: read a module's input/output, or rewrite its output.

    with Trace(model, "model.layers.2.mlp.down_proj", retain_input=True) as tr:
        model(**batch)
    keys = tr.input            # (B, T, d_ff), or (T, B, d_ff) for sequence-first models

Hooks are removed in ``__exit__`` whatever happens inside the block, so the model is
unchanged afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from tuner.errors import ArchitectureError


def get_module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ArchitectureError(
            f"module {name!r} not found in {type(model).__name__}; "
            "set the module templates in the study YAML (model.adapter)"
        ) from None


def _first(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x


class Trace:
    """Retain the input and/or output of one module, optionally rewriting its output.

    ``edit_output(output, module) -> output`` may modify the tensor in place or return a new one;
    tuple outputs are handled by editing their first element."""

    def __init__(
        self,
        model: nn.Module,
        name: str,
        *,
        retain_input: bool = False,
        retain_output: bool = False,
        detach: bool = True,
        edit_output: Callable[[torch.Tensor, nn.Module], torch.Tensor | None] | None = None,
    ) -> None:
        self.module = get_module(model, name)
        self.name = name
        self.input: torch.Tensor | None = None
        self.output: torch.Tensor | None = None
        self._retain_input = retain_input
        self._retain_output = retain_output
        self._detach = detach
        self._edit = edit_output
        self._handle: Any = None

    def _hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if self._retain_input:
            x = _first(args)
            self.input = x.detach() if self._detach else x
        if self._edit is not None:
            out = _first(output)
            new = self._edit(out, module)
            if new is not None and new is not out:
                output = (new, *output[1:]) if isinstance(output, tuple) else new
        if self._retain_output:
            y = _first(output)
            self.output = y.detach() if self._detach else y
        return output

    def __enter__(self) -> Trace:
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


class TraceDict(dict):
    """Several ``Trace``s at once, keyed by module name; all removed on exit."""

    def __init__(self, model: nn.Module, names: Iterable[str], **kwargs: Any) -> None:
        super().__init__()
        self._model = model
        self._names = list(names)
        self._kwargs = kwargs

    def __enter__(self) -> TraceDict:
        try:
            for name in self._names:
                self[name] = Trace(self._model, name, **self._kwargs).__enter__()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for tr in self.values():
            tr.close()


class _StopForward(Exception):
    """Raised by ``forward_until``'s hook: nothing above the module is needed."""


def _stop(*_: Any) -> None:
    raise _StopForward


def forward_until(model: nn.Module, name: str, **kwargs: Any) -> None:
    """``model(**kwargs)`` cut short right after module ``name`` has run: the hooks registered on
    it before this call (a ``Trace``'s, the statistics') still see its output; the blocks above
    never run. Returns nothing (there are no logits)."""
    handle = get_module(model, name).register_forward_hook(_stop)
    try:
        model(**kwargs)
    except _StopForward:
        pass
    finally:
        handle.remove()
