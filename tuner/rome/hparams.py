"""ROME hyperparameters as one frozen dataclass, loaded strictly from YAML.

Trial variants are made with ``dataclasses.replace``. Field names follow EasyEdit's ROME
hparams where one exists, so an exported file is familiar (``tuner.study.export``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from tuner.errors import ConfigError
from tuner.strict import from_mapping


@dataclass(frozen=True)
class ROMEHyperParams:
    layer: int = 1
    """Index of the MLP whose down-projection is rewritten."""
    fact_token: Literal["subject_last", "subject_first", "last"] = "subject_last"
    v_num_grad_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    lr_schedule: Literal["constant", "cosine"] = "constant"
    mom2_adjustment: bool = True
    mom2_n_samples: int = 20000
    mom2_ridge: float = 1e-4
    """Tikhonov term added to C (relative to its mean diagonal) before solving; keeps C⁻¹ finite."""
    context_template_length_params: tuple[tuple[int, int], ...] = ((5, 5),)
    """(tokens, count) pairs of sampled context prefixes; k* averages over them and "{}"."""
    seed: int = 0
    """Seed of the context-template sampler (k* and v* are deterministic given it)."""

    def __post_init__(self) -> None:
        # Normalise lists from YAML/JSON to tuples so the dataclass stays hashable.
        pairs = tuple(tuple(p) for p in self.context_template_length_params)
        object.__setattr__(self, "context_template_length_params", pairs)
        checks = [
            ("layer", self.layer >= 0, "must be >= 0"),
            ("v_num_grad_steps", self.v_num_grad_steps >= 1, "must be >= 1"),
            ("v_lr", self.v_lr > 0, "must be > 0"),
            ("v_weight_decay", self.v_weight_decay >= 0, "must be >= 0"),
            ("clamp_norm_factor", self.clamp_norm_factor > 0, "must be > 0"),
            ("kl_factor", self.kl_factor >= 0, "must be >= 0"),
            ("mom2_n_samples", self.mom2_n_samples >= 1, "must be >= 1"),
            ("mom2_ridge", self.mom2_ridge >= 0, "must be >= 0"),
        ]
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"hparams.{key} {why}, got {getattr(self, key)!r}")
        for pair in self.context_template_length_params:
            if len(pair) != 2 or min(pair) < 1:
                raise ConfigError(
                    "hparams.context_template_length_params: each entry is [tokens, count] >= 1"
                )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ROMEHyperParams:
        data = dict(data)
        if "context_template_length_params" in data:
            data["context_template_length_params"] = [
                tuple(p) if isinstance(p, (list, tuple)) else p
                for p in data["context_template_length_params"]
            ]
        return from_mapping(cls, data, prefix="hparams.")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["context_template_length_params"] = [list(p) for p in self.context_template_length_params]
        return d

    def replace(self, **changes: Any) -> ROMEHyperParams:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown hyperparameter {sorted(unknown)[0]}")
        return dataclasses.replace(self, **changes)


# ROME's published GPT-2 XL / GPT-J settings, with the layer scaled to the same relative depth
# (layer 17 of 48 ≈ 0.35). The baseline every study is compared against.
TEXTBOOK = dict(
    v_num_grad_steps=20,
    v_lr=0.5,
    v_weight_decay=0.5,
    clamp_norm_factor=4.0,
    kl_factor=0.0625,
    lr_schedule="constant",
    mom2_adjustment=True,
)


def textbook(n_layers: int, base: ROMEHyperParams | None = None) -> ROMEHyperParams:
    base = base or ROMEHyperParams()
    return base.replace(layer=int(round(17 / 48 * (n_layers - 1))), **TEXTBOOK)
