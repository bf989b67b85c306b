"""The study definition: one YAML file (``studies/*.yaml``), parsed once into typed objects.

    cfg = StudyConfig.load("studies/default.yaml")
    cfg.hparams          # EditHParams: the fixed knobs (search's fixed values merged in)
    cfg.search           # SearchSpace: the searched knobs
    cfg.model, cfg.facts, cfg.objective

Relative paths in the file are resolved against the file's own directory, then the working
directory (``tuner.paths.resolve_path``), so a study stored in a database resolves on another
machine's checkout too."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tuner.errors import ConfigError
from tuner.facts.selection import FactSpec
from tuner.hparams import EditHParams
from tuner.models.spec import ModelSpec
from tuner.paths import resolve_path
from tuner.strict import from_mapping, read_yaml
from tuner.study.space import SearchSpace

__all__ = ["FactSpec", "ModelSpec", "ObjectiveSpec", "StudyConfig"]


@dataclass(frozen=True)
class ObjectiveSpec:
    """How a trial is scored and judged (``tuner.metrics.scoring`` has the formulas)."""

    kind: Literal["edit", "stability"] = "edit"
    """``edit``: CounterFact's harmonic mean of the efficacy (with the stability term), paraphrase
    and neighbourhood terms — a non-edit scores ~0, an edit that breaks its neighbours scores low.
    ``stability``: the plain mission objective final_prob − λ·rebound (+ the weights below)."""
    rebound_penalty: float = 1.0
    """λ in the stability term  final_prob − λ·rebound  (both kinds)."""
    paraphrase_weight: float = 0.0
    """``stability`` only: + w·P(new | paraphrase)."""
    neighborhood_weight: float = 0.0
    """``stability`` only: + w·(neighbourhood specificity − 1)."""
    multi_objective: bool = False
    """Two objectives (efficacy − λ·rebound, specificity), both maximised: a Pareto front."""
    max_update_norm: float = 25.0
    """An edit with ‖ΔW‖/‖W‖ above this is disabling; a trial with more disabling edits than the
    references made is infeasible (``tuner.metrics.fluency``: measured thresholds, and how to set it
    for a large model)."""
    max_entropy_drop: float = 0.5
    """An edit whose generation entropy falls by more than this share is disabling."""
    specificity_margin: float | None = 0.05
    """The relative specificity guard: a trial whose mean neighbourhood specificity is more than
    this below the worse of the references (ROME's textbook setting, the family's EasyEdit
    defaults, on the same facts) is infeasible. The references are always feasible. ``null``
    turns it off."""
    max_specificity_drop: float | None = None
    """The absolute guard, off unless set: a trial whose mean specificity falls more than this
    below the unedited model's is infeasible (the references may then be infeasible too)."""

    def __post_init__(self) -> None:
        if self.kind not in ("edit", "stability"):
            raise ConfigError(f"objective.kind must be 'edit' or 'stability', got {self.kind!r}")
        for name in ("specificity_margin", "max_specificity_drop"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ConfigError(f"objective.{name} must be between 0 and 1 (or null), got {value!r}")


@dataclass(frozen=True)
class StudyConfig:
    name: str = "default"
    seed: int = 0
    model: ModelSpec = field(default_factory=ModelSpec)
    facts: FactSpec = field(default_factory=FactSpec)
    hparams: EditHParams = field(default_factory=EditHParams)
    search: SearchSpace = field(default_factory=SearchSpace)
    objective: ObjectiveSpec = field(default_factory=ObjectiveSpec)
    sampler: Literal["tpe", "gp", "random"] = "gp"
    """Optuna's GPSampler by default: on the default study it found the best settings in the fewest
    trials (``bench/search.py``; README, "Search efficiency")."""
    pruner: Literal["median", "percentile", "hyperband", "wilcoxon", "none"] = "none"
    """Stops hopeless trials on the v* trajectory (``tuner.study.objective``); the default was
    chosen by ``bench/search.py`` (README, "Search efficiency")."""
    pruner_warmup: int = 5
    """Optimisation steps a trial runs before the median/percentile pruner may stop it (and the
    step at which the Wilcoxon pruner compares facts). 5, the first checkpoint: only an early
    stop saves most of a trial (``bench/search.py``; README, "Search efficiency")."""
    trials: int = 200
    easyedit_only: bool = False
    """Search only what EasyEdit can run: knobs EasyEdit has no key for are fixed at EasyEdit's
    behaviour (e.g. ``lr_schedule: constant``, ``early_stop_loss: 0.05``) and dropped from the
    search, so every trial — and the export — is a setting EasyEdit reproduces."""
    description: str = ""
    base_dir: str = "."
    """Directory the relative paths are resolved against (set by ``load``)."""

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ConfigError(f"trials must be >= 1, got {self.trials}")
        if self.pruner_warmup < 1:
            raise ConfigError(f"pruner_warmup must be >= 1, got {self.pruner_warmup}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, base_dir: str | Path = ".") -> StudyConfig:
        data = {**data, "base_dir": str(data.get("base_dir", base_dir))}
        search, fixed = SearchSpace.parse(data.pop("search", None) or {})
        hparams = data.pop("hparams", None) or {}
        if not isinstance(hparams, dict):
            raise ConfigError(f"hparams: expected a mapping, got {hparams!r}")
        hp = EditHParams.from_dict(hparams).replace(**fixed)  # `search: {x: value}` fixes x
        cfg = from_mapping(cls, data)
        if cfg.easyedit_only:
            hp, search = easyedit_only(hp, search)
        return dataclasses.replace(cfg, hparams=hp, search=search)

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
        """Plain values: what ``from_dict`` reads back (stored in the study, hashed for resumes)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key in ("model", "facts", "objective"):
            d[key] = dataclasses.asdict(d[key])
        d["hparams"] = self.hparams.to_dict()
        d["search"] = self.search.to_dict()
        return d

    def to_yaml(self) -> str:
        d = self.to_dict()
        d.pop("base_dir")
        return yaml.safe_dump(d, sort_keys=False, allow_unicode=True)

    def resolve(self, path: str) -> Path:
        return resolve_path(self.base_dir, path)

    def replace(self, **changes: Any) -> StudyConfig:
        return dataclasses.replace(self, **changes)

    # -- what the study's files describe ---------------------------------------------------
    def select_facts(self) -> list[Any]:
        """The fixed, seeded subset of facts every trial edits."""
        from tuner.facts.selection import select_facts

        return select_facts(self.facts, self.resolve(self.facts.path))

    def select_holdout(self) -> list[Any]:
        """The held-out facts (``facts.holdout``), disjoint from ``select_facts()``."""
        from tuner.facts.selection import select_holdout

        return select_holdout(self.facts, self.resolve(self.facts.path))

    def build_default_model(self, *, seed: int = 0, force: bool = False, progress: bool = True) -> Path:
        """Train (or reuse) the embedded default model this study names."""
        from tuner.models.load import build_default

        return build_default(self.model, resolve=self.resolve, edits=self.resolve(self.facts.path), seed=seed,
                             force=force, progress=progress)

    def load_model(self, *, device: str | None = None, progress: bool = True) -> Any:
        """The study's model, loaded once (``tuner.models.load.LoadedModel``)."""
        from tuner.models.load import load_model

        return load_model(self.model, resolve=self.resolve, edits=self.resolve(self.facts.path), device=device,
                          progress=progress)

    def disabling_rule(self) -> Any:
        """The study's ``DisablingRule`` (``objective.max_update_norm``, ``objective.max_entropy_drop``):
        every editor that scores the study's edits carries it (``LoadedModel.editor(disabling=...)``)."""
        from tuner.metrics.fluency import DisablingRule

        return DisablingRule(self.objective.max_update_norm, self.objective.max_entropy_drop)


def easyedit_only(hp: EditHParams, search: SearchSpace) -> tuple[EditHParams, SearchSpace]:
    """``hp`` and ``search`` restricted to settings EasyEdit reproduces (``easyedit_only: true``)."""
    from tuner.hparams import ANY, KNOBS

    pinned = {k.name: k.easyedit_behaviour for k in KNOBS.values()
              if k.easyedit is None and k.easyedit_behaviour is not ANY}
    kept = tuple(d for d in search.dimensions if d.name not in pinned)
    return hp.replace(**pinned), dataclasses.replace(search, dimensions=kept)
