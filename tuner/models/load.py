"""Load a model once per process: the embedded default (built on first use) or a real
checkpoint from a local directory or the local Hugging Face cache (never downloaded).

    tuner edit --config studies/llama-2-7b.yaml --fact 0      # loads model.name once, edits"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.errors import ConfigError, TunerError
from tuner.models.spec import ModelSpec
from tuner.plumbing.adapters import Adapter, detect_adapter

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: Any
    tok: Any
    adapter: Adapter
    fingerprint: str
    stats_texts: list[str]
    name: str
    device: str

    @property
    def n_layers(self) -> int:
        return self.adapter.n_layers(self.model.config)

    def editor(self, *, progress: bool = True, stats_layers: Sequence[int] = (), disabling: Any = None) -> Any:
        """An ``Editor`` on this model; ``stats_layers``: every layer the caller may edit (their
        statistics are computed together, in one pass, when the first is needed); ``disabling``:
        the study's ``DisablingRule`` (``StudyConfig.disabling_rule()``; default: the default thresholds)."""
        from tuner.edit.editor import Editor
        from tuner.metrics.fluency import DisablingRule

        return Editor(self.model, self.tok, self.adapter, fingerprint=self.fingerprint,
                      stats_texts=self.stats_texts, progress=progress, stats_layers=stats_layers,
                      disabling=disabling or DisablingRule())


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine")
    return device


def _dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def _read_corpus(path: Path) -> list[str]:
    if not path.is_file():
        raise ConfigError(f"model.stats_corpus not found: {path}")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise ConfigError(f"model.stats_corpus is empty: {path}")
    return lines


def build_default(spec: ModelSpec, *, resolve: Callable[[str], Path], edits: Path, seed: int = 0,
                  force: bool = False, progress: bool = True) -> Path:
    """Train (or reuse) the embedded default model ``spec`` describes; its directory."""
    from tuner.models.build import BuildSpec, build

    return build(BuildSpec(arch=spec.arch, seed=seed, kb=str(resolve(spec.kb)), edits=str(edits)), force=force,
                 progress=progress)


def load_model(spec: ModelSpec, *, resolve: Callable[[str], Path], edits: Path, device: str | None = None,
               progress: bool = True) -> LoadedModel:
    """Load ``spec``'s model once. ``resolve`` turns the spec's relative paths into files;
    ``edits`` is the fact file the default model's editability check uses."""
    import torch  # noqa: F401  (heavy import kept local)
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not progress:
        transformers.utils.logging.disable_progress_bar()

    dev = pick_device(device or spec.device)
    dtype = _dtype(spec.dtype, dev)
    if spec.is_default:
        path = build_default(spec, resolve=resolve, edits=edits, progress=progress)
        meta = json.loads((path / "meta.json").read_text())
        fingerprint = meta["fingerprint"]
        corpus = path / "corpus.txt"
        trust = False
        source: str | Path = path
    else:
        source = Path(spec.name)
        trust = spec.trust_remote_code
        if source.is_dir():
            from tuner.models.fingerprint import checkpoint_fingerprint

            fingerprint = checkpoint_fingerprint(source)
        else:
            source = spec.name  # a model id: only the local HF cache is consulted
            fingerprint = hashlib.sha256(spec.name.encode()).hexdigest()[:16]
        corpus = resolve(spec.stats_corpus) if spec.stats_corpus else None
    from tuner.models.remote_compat import load_remote, needs_remote_code, probe_seq_first

    remote = isinstance(source, Path) and needs_remote_code(source)
    if remote and not trust:
        raise ConfigError(f"model {spec.name!r} ships its own modeling code (auto_map in config.json); "
                          "set model.trust_remote_code: true in the study YAML to run it")
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust, local_files_only=True)
        if remote:
            model, _ = load_remote(Path(source), dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust,
                                                         local_files_only=True)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TunerError(f"cannot load model {spec.name!r}: {first}") from None
    model.to(dev)
    adapter = detect_adapter(model.config, family=spec.family, overrides=spec.adapter or None)
    if not spec.is_default:
        # Layout from what the model returns, not only from its family's name.
        seq_first = probe_seq_first(model, tok, adapter.rewrite.format(0))
        if seq_first != adapter.seq_first:
            log.info("probe: %s is %s-first; overriding the %s adapter", adapter.rewrite.format(0),
                     "sequence" if seq_first else "batch", adapter.family)
            adapter = adapter.with_overrides({"seq_first": seq_first})
    stats = _read_corpus(corpus) if corpus is not None else []
    return LoadedModel(model, tok, adapter, fingerprint, stats, str(spec.name), dev)


def model_adapter(spec: ModelSpec) -> tuple[Adapter, int]:
    """(adapter, number of layers) of ``spec``'s model, read from its config without loading weights."""
    overrides = spec.adapter or None
    if spec.is_default:
        from tuner.models.build import BuildSpec

        return detect_adapter(None, family=spec.family or spec.arch, overrides=overrides), BuildSpec().n_layers
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(spec.name, trust_remote_code=spec.trust_remote_code, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the config of model {spec.name!r}: {str(exc).splitlines()[0]}") from None
    adapter = detect_adapter(config, family=spec.family, overrides=overrides)
    return adapter, adapter.n_layers(config)
