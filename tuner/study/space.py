"""The search space, read from the study YAML's ``search`` mapping:

    search:
      layer: {low: 0, high: 3}            # int range (or `all`: every layer of the model)
      v_lr: {low: 0.01, high: 5, log: true}
      lr_schedule: [constant, cosine]     # categorical
      kl_factor: 0.0625                   # fixed (same as setting it under hparams)

Names must be ROME hyperparameters; bounds are checked here, with one line naming the key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from tuner.errors import ConfigError
from tuner.rome.hparams import ROMEHyperParams

SEARCHABLE = {f.name: f for f in dataclasses.fields(ROMEHyperParams)} 
INT_KNOBS = {"layer", "v_num_grad_steps", "mom2_n_samples", "seed"}


@dataclass(frozen=True)
class Knob:
    name: str
    kind: str  # "int" | "float" | "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def distribution(self) -> Any:
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "categorical":
            return CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(float(self.low), float(self.high), log=self.log)


def parse_space(search: dict[str, Any], *, n_layers: int | None = None) -> tuple[list[Knob], dict[str, Any]]:
    """(searched knobs, fixed values). ``n_layers`` checks the layer range when known."""
    knobs, fixed = [], {}
    for name, spec in search.items():
        key = f"search.{name}"
        if name not in SEARCHABLE:
            raise ConfigError(f"{key}: unknown hyperparameter; searchable: {', '.join(sorted(SEARCHABLE))}")
        if name == "layer" and spec == "all":
            if n_layers is None:
                raise ConfigError(f"{key}: 'all' needs the model's depth")
            spec = {"low": 0, "high": n_layers - 1}
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"{key}: empty list of choices")
            for choice in spec:  # validate each choice as a hyperparameter value
                ROMEHyperParams.from_dict({name: choice})
            knobs.append(Knob(name, "categorical", choices=tuple(spec)))
        elif isinstance(spec, dict):
            unknown = set(spec) - {"low", "high", "log"}
            if unknown:
                raise ConfigError(f"{key}: unknown key {sorted(unknown)[0]}; use low, high, log")
            if "low" not in spec or "high" not in spec:
                raise ConfigError(f"{key}: needs both low and high")
            low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
            for bound, value in (("low", low), ("high", high)):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(f"{key}.{bound}: expected a number, got {value!r}")
            if low > high:
                raise ConfigError(f"{key}: low ({low}) > high ({high})")
            if log and low <= 0:
                raise ConfigError(f"{key}: log scale needs low > 0, got {low}")
            kind = "int" if name in INT_KNOBS else "float"
            if kind == "int" and (int(low) != low or int(high) != high):
                raise ConfigError(f"{key}: bounds must be integers")
            ROMEHyperParams.from_dict({name: int(low) if kind == "int" else float(low)})
            ROMEHyperParams.from_dict({name: int(high) if kind == "int" else float(high)})
            knobs.append(Knob(name, kind, low, high, log))
        else:
            ROMEHyperParams.from_dict({name: spec})
            fixed[name] = spec
    if n_layers is not None:
        for k in knobs:
            if k.name == "layer" and (k.low < 0 or k.high > n_layers - 1):
                raise ConfigError(f"search.layer: range {int(k.low)}-{int(k.high)} exceeds the model's {n_layers} layers (0-{n_layers - 1})")
        layer = fixed.get("layer")
        if layer is not None and not 0 <= layer < n_layers:
            raise ConfigError(f"search.layer: {layer} exceeds the model's {n_layers} layers (0-{n_layers - 1})")
    return knobs, fixed


def suggest(trial: Any, knobs: list[Knob], fixed: dict[str, Any], base: ROMEHyperParams) -> ROMEHyperParams:
    values = dict(fixed)
    for k in knobs:
        if k.kind == "categorical":
            values[k.name] = trial.suggest_categorical(k.name, list(k.choices))
        elif k.kind == "int":
            values[k.name] = trial.suggest_int(k.name, int(k.low), int(k.high), log=k.log)
        else:
            values[k.name] = trial.suggest_float(k.name, float(k.low), float(k.high), log=k.log)
    return base.replace(**values)
