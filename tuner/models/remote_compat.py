"""Loading checkpoints that ship their own modeling code (``auto_map``), such as ChatGLM3,
under current transformers — only when the study YAML opts in with ``trust_remote_code``.

Fixes are applied in memory (the user's files are never edited) and logged once:
  * ``config.max_length`` / ``config.use_cache`` — read by ChatGLM3's ``__init__``, no longer
    set on configs by transformers 5 (generation parameters moved to ``GenerationConfig``);
  * a model class whose ``__init__`` never calls ``post_init()`` — transformers 5's
    ``from_pretrained`` then fails on ``all_tied_weights_keys``; the class is wrapped so that
    ``post_init()`` runs after the original ``__init__``."""

from __future__ import annotations

import ast
import functools
import inspect
import json
import logging
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tuner.errors import ConfigError, TunerError

log = logging.getLogger(__name__)
_LOGGED: set[str] = set()


def needs_remote_code(path: Path) -> bool:
    cfg = path / "config.json"
    return cfg.is_file() and "auto_map" in json.loads(cfg.read_text(encoding="utf-8"))


def _with_post_init(cls: type) -> type:
    if getattr(cls, "_tuner_post_init", False):
        return cls
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls.__init__)))
    except (OSError, TypeError, SyntaxError):
        return cls
    calls = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    if "post_init" in calls:
        return cls
    original = cls.__init__

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.post_init()

    cls.__init__ = __init__
    cls._tuner_post_init = True
    return cls


def load_remote(path: Path, *, dtype: Any) -> tuple[Any, list[str]]:
    """(model, fixes applied) for a checkpoint directory with its own code."""
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=True, local_files_only=True)
        ref = config.auto_map.get("AutoModelForCausalLM") or config.auto_map.get("AutoModel")
        if ref is None:
            raise ConfigError(f"{path}/config.json: auto_map names no AutoModelForCausalLM or AutoModel class")
        cls = get_class_from_dynamic_module(ref, str(path), local_files_only=True)
    except (OSError, ValueError, AttributeError, ImportError) as exc:
        raise TunerError(f"cannot load the remote code of {path}: {str(exc).splitlines()[0]}") from None
    fixes = []
    if getattr(config, "max_length", None) is None:
        config.max_length = int(getattr(config, "seq_length", 2048))
        fixes.append(f"config.max_length={config.max_length}")
    if getattr(config, "use_cache", None) is None:
        config.use_cache = False
        fixes.append("config.use_cache=False")
    patched = _with_post_init(cls)
    if getattr(patched, "_tuner_post_init", False):
        fixes.append(f"{cls.__name__}.__init__ now calls post_init()")
    try:
        with _quiet_third_party() as silenced:
            model = patched.from_pretrained(path, config=config, dtype=dtype, local_files_only=True)
        if silenced and str(path) not in _LOGGED:
            log.info("%d warning(s) of transformers and the checkpoint's code while loading %s were silenced "
                     "(run with -v to see them)", len(silenced), path)
    except Exception as exc:  # the checkpoint's own code: report what broke, in one line
        raise TunerError(f"cannot load {path} even with compatibility fixes ({', '.join(fixes) or 'none'}): "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if fixes and str(path) not in _LOGGED:
        _LOGGED.add(str(path))
        log.info("loaded %s with compatibility fixes: %s", path, "; ".join(fixes))
    return model, fixes


@contextmanager
def _quiet_third_party() -> Iterator[list[str]]:
    """Collect (instead of print) the warnings a remote-code load triggers — transformers'
    GenerationMixin notice, deprecations in the checkpoint's code — unless logging at DEBUG."""
    import warnings

    from transformers.utils import logging as hf_logging

    silenced: list[str] = []
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield silenced
        return
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield silenced
        silenced += [str(w.message) for w in caught]
    finally:
        hf_logging.set_verbosity(level)


def probe_seq_first(model: Any, tok: Any, module_name: str) -> bool:
    """Whether ``module_name`` emits [T, B, d] (sequence-first), from a probe forward pass."""
    import torch

    from tuner.plumbing.hooks import Trace
    from tuner.plumbing.tokens import encode, make_batch, pad_id_of

    rows = [encode(tok, "a b c d e f g"), encode(tok, "a b c d e f g")]
    T = len(rows[0])
    batch = make_batch(rows + [rows[0]], pad_id=pad_id_of(tok), side="right", device=next(model.parameters()).device)
    with torch.no_grad(), Trace(model, module_name, retain_output=True) as tr:
        model(**batch.model_kwargs(model))
    shape = tuple(tr.output.shape)
    if shape[:2] == (T, 3):
        return True
    if shape[:2] == (3, T):
        return False
    raise ConfigError(f"cannot tell the layout of {module_name}: output shape {shape} for batch 3 × {T} tokens")
