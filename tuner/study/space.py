"""The search space, read once from the study YAML's ``search`` mapping:

    search:
      layer: {low: 0, high: 3}            # int range (or `all`: every layer of the model)
      v_lr: {low: 0.01, high: 5, log: true}
      lr_schedule: [constant, cosine]     # categorical
      kl_factor: 0.0625                   # fixed (same as setting it under hparams)

Names must be ROME knobs (``tuner.hparams.KNOBS``); whether a range is int or float comes
from the knob's type, bounds are checked by the knob's own check, with one line naming the key.
Fixed values are merged into the study's hyperparameters; ``SearchSpace`` keeps the ranges.

    space = SearchSpace.parse(search).bind(n_layers)
    hp = space.suggest(trial, base_hparams)        # Optuna's suggest_* → EditHParams
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from tuner.errors import ConfigError
from tuner.hparams import KNOBS, EditHParams
from tuner.memit.window import fit_window

ALL_LAYERS = "all"


@dataclass(frozen=True)
class Dimension:
    """One searched knob."""

    name: str
    kind: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    """``None`` for ``layer: all`` until ``SearchSpace.bind`` knows the model's depth."""
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """Ask Optuna's trial for a value: the one place that dispatches on ``kind``."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def to_spec(self) -> Any:
        """The YAML form this dimension was parsed from."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.high is None:
            return ALL_LAYERS
        spec: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            spec["log"] = True
        return spec


@dataclass(frozen=True)
class SearchSpace:
    dimensions: tuple[Dimension, ...] = ()
    n_layers: int | None = None
    """The model's depth, known after ``bind``."""

    @classmethod
    def parse(cls, search: dict[str, Any], *, where: str = "search") -> tuple[SearchSpace, dict[str, Any]]:
        """(the searched dimensions, the values the mapping fixes)."""
        if not isinstance(search, dict):
            raise ConfigError(f"{where}: expected a mapping of hyperparameter names, got {search!r}")
        dims, fixed = [], {}
        for name, spec in search.items():
            key = f"{where}.{name}"
            k = KNOBS.get(name)
            if k is None or not k.searchable:
                searchable = ", ".join(n for n, v in KNOBS.items() if v.searchable)
                raise ConfigError(f"{key}: unknown hyperparameter; searchable: {searchable}")
            if isinstance(spec, list):
                if not spec:
                    raise ConfigError(f"{key}: empty list of choices")
                for choice in spec:  # each choice must be a valid value of the knob
                    EditHParams.from_dict({name: choice}, where=where)
                dims.append(Dimension(name, "categorical", choices=tuple(spec)))
            elif name == "layer" and spec == ALL_LAYERS:
                dims.append(Dimension(name, "int", low=0, high=None))
            elif isinstance(spec, dict):
                dims.append(_range(k, spec, key, where))
            else:
                EditHParams.from_dict({name: spec}, where=where)
                fixed[name] = spec
        return cls(tuple(dims)), fixed

    def bind(self, n_layers: int) -> SearchSpace:
        """Resolve ``layer: all`` and check the layer range against the model's depth."""
        dims = []
        for d in self.dimensions:
            if d.name == "layer" and d.kind == "int":
                if d.high is None:
                    d = Dimension("layer", "int", low=0, high=n_layers - 1)
                if d.low < 0 or d.high > n_layers - 1:
                    raise ConfigError(f"search.layer: range {int(d.low)}-{int(d.high)} exceeds the model's "
                                      f"{n_layers} layers (0-{n_layers - 1})")
            if d.name == "layer" and d.kind == "categorical" and any(not 0 <= c < n_layers for c in d.choices):
                raise ConfigError(f"search.layer: choices {list(d.choices)} exceed the model's {n_layers} layers "
                                  f"(0-{n_layers - 1})")
            dims.append(d)
        return SearchSpace(tuple(dims), n_layers)

    def suggest(self, trial: Any, base: EditHParams) -> EditHParams:
        """Optuna's values for this trial. A conditional knob (``Knob.when``) is asked for only
        while its condition holds (MEMIT's window only for memit/hybrid), so the sampler sees a
        conditional space; a window that would run past the last layer is moved down to end there."""
        values: dict[str, Any] = {}
        for d in self._conditions_last():
            if KNOBS[d.name].applies(lambda name: values.get(name, getattr(base, name))):
                values[d.name] = d.suggest(trial)
        hp = base.replace(**values)
        if hp.method != "rome" and self.n_layers is not None:
            hp = hp.replace(layer=fit_window(hp.layer, hp.window_size, self.n_layers))
        return hp

    def clip(self, values: EditHParams | dict[str, Any]) -> dict[str, Any]:
        """The values of the searched knobs (from hyperparameters or another trial's params),
        each moved into its dimension: a range's nearest bound; a categorical value that is not
        a choice, or a knob the values lack, is left to the sampler."""
        get = values.get if isinstance(values, dict) else (lambda name: getattr(values, name))
        out: dict[str, Any] = {}
        for d in self._conditions_last():
            value = get(d.name)
            if not KNOBS[d.name].applies(lambda name: out.get(name, get(name))):
                continue  # a conditional knob this setting does not use (MEMIT's window in a ROME trial)
            if value is None:
                continue
            if d.kind == "categorical":
                if value in d.choices:
                    out[d.name] = value
            elif d.high is not None and not isinstance(value, (bool, str)):
                value = min(max(value, d.low), d.high)
                out[d.name] = int(round(value)) if d.kind == "int" else float(value)
        return out

    def _conditions_last(self) -> list[Dimension]:
        """Dimensions with their conditions' knobs first (``Knob.when``)."""
        return sorted(self.dimensions, key=lambda d: KNOBS[d.name].when is not None)

    def layers(self, base: EditHParams) -> list[int]:
        """Every layer a trial can edit (after ``bind``): what the statistics are computed for,
        MEMIT's windows included when ``method`` is or may be memit/hybrid."""
        dims = {d.name: d for d in self.dimensions}

        def values(name: str) -> list[Any]:
            d = dims.get(name)
            if d is None:
                return [getattr(base, name)]
            return sorted(d.choices) if d.kind == "categorical" else list(range(int(d.low), int(d.high) + 1))

        widths = values("window_size") if set(values("method")) - {"rome"} else [1]
        out = set()
        for layer in values("layer"):
            for width in widths:
                start = layer if self.n_layers is None else fit_window(layer, width, self.n_layers)
                out.update(range(start, start + width))
        return sorted(out)

    def on_bounds(self, params: dict[str, Any]) -> list[tuple[str, str, Any]]:
        """(knob, "low"/"high", bound) for every searched range (but the layer, bounded by the
        model) whose value in ``params`` sits on a bound: within 2 % of the range (in log space
        for log ranges), or equal for integers. The optimum may lie beyond it."""
        out = []
        for d in self.dimensions:
            value = params.get(d.name)
            if d.kind == "categorical" or d.name == "layer" or d.high is None or value is None or d.low == d.high:
                continue
            scale = math.log if d.log else float
            tol = 0 if d.kind == "int" else 0.02 * (scale(d.high) - scale(d.low))
            for side, bound in (("low", d.low), ("high", d.high)):
                if abs(scale(value) - scale(bound)) <= tol:
                    out.append((d.name, side, bound))
        return out

    def widen(self, sides: list[tuple[str, str, Any]]) -> SearchSpace:
        """The space with the given bounds moved out: ×/÷ 4 on a log range, by half the range
        otherwise (never past what the knob accepts: a negative rate, say)."""
        moved = {(name, side) for name, side, _ in sides}
        dims = []
        for d in self.dimensions:
            low, high = d.low, d.high
            span = (high - low) / 2 if high is not None else 0
            if (d.name, "high") in moved:
                high = high * 4 if d.log else high + span
            if (d.name, "low") in moved:
                low = low / 4 if d.log else low - span
                k = KNOBS[d.name]
                if k.min is not None and (low < k.min or (k.min_open and low <= k.min)):
                    low = d.low  # already at what the knob accepts
            if d.kind == "int" and low is not None:
                low, high = int(math.floor(low)), int(math.ceil(high))
            dims.append(dataclasses.replace(d, low=low, high=high))
        return SearchSpace(tuple(dims), self.n_layers)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    @property
    def log_names(self) -> set[str]:
        return {d.name for d in self.dimensions if d.log}

    def to_dict(self) -> dict[str, Any]:
        return {d.name: d.to_spec() for d in self.dimensions}


def _range(k: Any, spec: dict[str, Any], key: str, where: str) -> Dimension:
    unknown = set(spec) - {"low", "high", "log"}
    if unknown:
        raise ConfigError(f"{key}: unknown key {sorted(unknown)[0]}; use low, high, log")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{key}: needs both low and high")
    if k.kind not in ("int", "float"):
        raise ConfigError(f"{key}: a range needs a numeric hyperparameter; give a list of choices instead")
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{key}.log: expected true or false, got {log!r}")
    for bound, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}.{bound}: expected a number, got {value!r}")
    if low > high:
        raise ConfigError(f"{key}: low ({low}) > high ({high})")
    if log and low <= 0:
        raise ConfigError(f"{key}: log scale needs low > 0, got {low}")
    if k.kind == "int":
        if int(low) != low or int(high) != high:
            raise ConfigError(f"{key}: bounds must be integers")
        low, high = int(low), int(high)
    else:
        low, high = float(low), float(high)
    for value in (low, high):
        k.check(value, where)
    return Dimension(k.name, k.kind, low, high, log)
