"""The study definition: one YAML file (``studies/*.yaml``) loaded strictly.

    cfg = StudyConfig.load("studies/default.yaml")
    cfg.hparams          # ROMEHyperParams: the fixed knobs
    cfg.search           # what the study searches (see tuner.study.space)

Relative paths in the file are resolved against the file's own directory, then the working
directory, so a study stored in a database resolves on another machine's checkout too."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tuner.errors import ConfigError
from tuner.rome.hparams import ROMEHyperParams
from tuner.strict import from_mapping, read_yaml


@dataclass(frozen=True)
class ModelSpec:
    name: str = "default"
    """``default`` (the embedded model, trained on first use), a local checkpoint directory, or
    a model id already in the local Hugging Face cache (nothing is downloaded)."""
    arch: Literal["llama", "gpt2", "glm"] = "llama"
    """Architecture of the embedded default model."""
    family: str | None = None
    """Force an adapter family instead of detecting it from the config."""
    adapter: dict[str, Any] = field(default_factory=dict)
    """Module-template overrides, e.g. ``rewrite: "model.layers.{}.mlp.down_proj"``."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    device: str = "auto"
    trust_remote_code: bool = False
    """Run the checkpoint's own Python code (ChatGLM3 needs it). Never enabled implicitly."""
    stats_corpus: str | None = None
    """Text file (one document per line) for C = E[k kᵀ]; the default model uses its own corpus."""
    kb: str = "facts/synthetic_kb.json"
    """Knowledge base the default model is trained on."""


@dataclass(frozen=True)
class FactSpec:
    path: str = "facts/synthetic_edits.json"
    per_trial: int = 8
    """How many facts each trial edits: a fixed, seeded subset, the same for every trial."""
    seed: int = 0


@dataclass(frozen=True)
class ObjectiveSpec:
    rebound_penalty: float = 1.0
    """λ in  score = final_prob − λ·rebound  (per fact; the trial value is the mean)."""
    paraphrase_weight: float = 0.0
    neighborhood_weight: float = 0.0
    multi_objective: bool = False
    """Two objectives (efficacy − λ·rebound, specificity), both maximised: a Pareto front."""


@dataclass(frozen=True)
class StudyConfig:
    name: str = "default"
    seed: int = 0
    model: ModelSpec = field(default_factory=ModelSpec)
    facts: FactSpec = field(default_factory=FactSpec)
    hparams: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)
    objective: ObjectiveSpec = field(default_factory=ObjectiveSpec)
    sampler: Literal["tpe", "gp", "random"] = "tpe"
    pruner: Literal["median", "none", "hyperband"] = "median"
    trials: int = 200
    description: str = ""
    base_dir: str = "."
    """Directory the relative paths are resolved against (set by ``load``)."""

    def __post_init__(self) -> None:
        # Fail early on bad fixed hyperparameters (with the key named).
        ROMEHyperParams.from_dict(self.hparams)
        if self.trials < 1:
            raise ConfigError(f"trials must be >= 1, got {self.trials}")
        if self.facts.per_trial < 1:
            raise ConfigError(f"facts.per_trial must be >= 1, got {self.facts.per_trial}")

    @property
    def base_hparams(self) -> ROMEHyperParams:
        return ROMEHyperParams.from_dict(self.hparams)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, base_dir: str | Path = ".") -> StudyConfig:
        data = {**data, "base_dir": str(data.get("base_dir", base_dir))}
        return from_mapping(cls, data)

    @classmethod
    def load(cls, path: str | Path) -> StudyConfig:
        path = Path(path)
        data = read_yaml(path)
        if "base_dir" in data:
            raise ConfigError(f"{path}: unknown key base_dir")
        try:
            return cls.from_dict(data, base_dir=path.parent.resolve())
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, *, with_base_dir: bool = False) -> str:
        d = self.to_dict()
        if not with_base_dir:
            d.pop("base_dir")
        return yaml.safe_dump(d, sort_keys=False)

    def resolve(self, path: str) -> Path:
        p = Path(path)
        if p.is_absolute():
            return p
        for candidate in (Path(self.base_dir) / p, p, Path("studies") / p):
            if candidate.exists():
                return candidate
        return Path(self.base_dir) / p

    def replace(self, **changes: Any) -> StudyConfig:
        return dataclasses.replace(self, **changes)
