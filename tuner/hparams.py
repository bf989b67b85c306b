"""ROME hyperparameters: every knob declared once, here.

Each field of ``EditHParams`` carries its whole description in ``knob(...)``: default,
bounds, help text, whether it can be searched, its EasyEdit key and its ``tuner edit`` flag.
Everything else is derived from ``KNOBS``:

- YAML validation           ``EditHParams.from_dict`` (strict keys, types, bounds)
- the search space          ``tuner.study.space`` (int / float / categorical from the type)
- ``tuner edit`` flags      ``tuner.cli.edit`` (``--v-lr``, ``--steps``, ``--mom2/--no-mom2`` ...)
- dashboard notes           ``tuner.study.notes``
- the EasyEdit export       ``tuner.study.export`` (``easyedit`` names; the rest in a header comment)
- presets                   ``PRESETS`` / ``preset()`` (ROME's textbook values, the build check)

Adding a knob = adding one field below (and using it in the engine)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from tuner.errors import ConfigError
from tuner.strict import from_mapping


class _Any:
    def __repr__(self) -> str:
        return "any"


ANY = _Any()


@dataclass(frozen=True)
class Knob:
    """The declaration of one hyperparameter (see the module docstring for what uses it)."""

    name: str
    help: str
    min: float | None = None
    """Smallest allowed value (inclusive unless ``min_open``)."""
    min_open: bool = False
    searchable: bool = True
    easyedit: str | None = None
    """The key EasyEdit's ROME hparams use for this knob; ``None``: EasyEdit cannot express it."""
    easyedit_behaviour: Any = ANY
    """For a knob EasyEdit has no key for: the value EasyEdit behaves as (``ANY``: the knob does
    not change what EasyEdit would compute, e.g. a seed). A setting is reproducible in EasyEdit
    when every such knob has that value."""
    when: tuple[str, tuple[Any, ...]] | None = None
    """``(knob, values)``: this knob only matters while ``knob`` has one of ``values`` (a
    conditional search dimension: searched only then)."""
    flag: str | None = None
    """``tuner edit`` flag name without dashes (default: the name with ``-``); ``""``: no flag."""
    type: Any = None
    """The field's resolved type annotation (filled in from the dataclass)."""
    default: Any = None

    @property
    def choices(self) -> tuple[Any, ...] | None:
        """The allowed values of a categorical knob (Literal or bool), else ``None``."""
        hint = _strip_optional(self.type)
        if typing.get_origin(hint) is Literal:
            return typing.get_args(hint)
        if hint is bool:
            return (False, True)
        return None

    @property
    def kind(self) -> Literal["int", "float", "categorical", "other"]:
        """How the knob is searched: int or float ranges, or a categorical choice."""
        if self.choices is not None:
            return "categorical"
        hint = _strip_optional(self.type)
        return "int" if hint is int else "float" if hint is float else "other"

    def applies(self, value_of: Any) -> bool:
        """Whether this knob matters given the other knobs (``value_of(name)``); an unknown
        (``None``) condition counts as met."""
        return self.when is None or value_of(self.when[0]) in (None, *self.when[1])

    @property
    def optional(self) -> bool:
        return type(None) in typing.get_args(self.type)

    def check(self, value: Any, where: str = "hparams") -> None:
        """Raise ``ConfigError`` naming ``where.name`` when ``value`` is out of bounds."""
        if value is None or self.min is None:
            return
        ok = value > self.min if self.min_open else value >= self.min
        if not ok:
            raise ConfigError(f"{where}.{self.name} must be {'>' if self.min_open else '>='} {self.min:g}, got {value!r}")

    @property
    def cli_flag(self) -> str | None:
        if self.flag == "":
            return None
        return "--" + (self.flag or self.name.replace("_", "-"))


def _strip_optional(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def knob(default: Any, help: str, **spec: Any) -> Any:
    """A dataclass field carrying its ``Knob`` declaration (name and type filled in later)."""
    return field(default=default, metadata={"knob": spec | {"help": help}})


@dataclass(frozen=True)
class EditHParams:
    layer: int = knob(1, "index of the MLP whose down-projection is rewritten", min=0, easyedit="layers")
    method: Literal["rome", "memit", "hybrid"] = knob(
        "rome", "rome: one rank-one update at `layer`; memit: the window layer … layer+window_size−1 "
        "(Meng et al. 2023); hybrid: ROME at `layer`, then MEMIT over the window for the facts ROME leaves short",
        easyedit_behaviour="rome")
    window_size: int = knob(2, "number of MEMIT layers starting at `layer` (memit/hybrid: `layer` is the window's "
                            "start, the targets z sit at its last layer)", min=1,
                            when=("method", ("memit", "hybrid")))
    # MEMIT's GPT-J setting is λ = 15000; the default here is what tests/rome/test_memit.py's
    # end-to-end edit asserts on the embedded default model (8 facts, window 0-1: ≥ 6 edited).
    # easyedit stays None: the export writes EasyEdit's ROME hparams, which have no such field
    # (tests/study/test_export.py loads them strictly); a MEMIT export would name it mom2_update_weight.
    mom2_update_weight: float = knob(
        100.0, "MEMIT's λ: ΔW = R Kᵀ (λC + K Kᵀ)⁻¹, how strongly the keys of the "
        "statistics corpus (C = E[kkᵀ]) are kept unchanged against the edited facts' keys K (EasyEdit MEMIT's "
        "mom2_update_weight)", min=0, min_open=True, when=("method", ("memit", "hybrid")))
    hybrid_min_prob: float = knob(0.5, "hybrid: a fact whose ROME edit leaves P(new | prompt) below this is "
                                  "edited again with MEMIT", min=0, when=("method", ("hybrid",)))
    hybrid_max_rebound: float = knob(0.1, "hybrid: a fact whose v* optimisation rebounds (peak − end of "
                                     "P(new)) by more than this is edited again with MEMIT", min=0,
                                     when=("method", ("hybrid",)))
    # MEMIT measures its clamp against the residual stream (several times the MLP output's
    # norm), so the hybrid's two passes need two clamps, as EasyEdit's two hparams files have
    hybrid_clamp_norm_factor: float = knob(
        2.0, "hybrid: clamp_norm_factor of the MEMIT pass (a multiple of the residual stream's norm, as MEMIT "
        "measures it; the ROME pass keeps clamp_norm_factor)", min=0, min_open=True, when=("method", ("hybrid",)))
    fact_token: Literal["subject_last", "subject_first", "last"] = knob(
        "subject_last", "token whose key selects the subject", easyedit="fact_token")
    v_num_grad_steps: int = knob(20, "forward passes of the v* optimisation (at most one Adam step fewer)", min=1,
                                 easyedit="v_num_grad_steps", flag="steps")
    v_lr: float = knob(0.5, "Adam learning rate of v*", min=0, min_open=True, easyedit="v_lr")
    v_weight_decay: float = knob(0.5, "weight of ‖δ‖/‖v₀‖² in the v* loss (MEMIT: ‖δ‖/‖h‖², h the residual stream)",
                                min=0, easyedit="v_weight_decay")
    clamp_norm_factor: float = knob(4.0, "‖δ‖ is clamped to this multiple of ‖v₀‖ (MEMIT: of ‖h‖, as in EasyEdit)",
                                    min=0, min_open=True,
                                    easyedit="clamp_norm_factor")
    kl_factor: float = knob(0.0625, "weight of the essence-drift KL term", min=0, easyedit="kl_factor")
    lr_schedule: Literal["constant", "cosine"] = knob("constant", "learning-rate schedule of v*",
                                                      easyedit_behaviour="constant")
    early_stop_loss: float | None = knob(
        0.05, "stop optimising v* once the total loss is below this, as ROME does (null: never)", min=0,
        min_open=True, easyedit_behaviour=0.05)
    v_select: Literal["last", "best"] = knob(
        "last", "v* from the last iterate (ROME) or the one with the highest target probability",
        easyedit_behaviour="last")
    key_mode: Literal["rome", "r-rome"] = knob(
        "rome", "rome: u from k*, Λ from the bare prompt's key; r-rome: k* in both (Ŵk* = v*)",
        easyedit_behaviour="rome")
    mom2_adjustment: bool = knob(True, "use C⁻¹ in the update (u ∝ C⁻¹k*)", easyedit="mom2_adjustment", flag="mom2")
    mom2_n_tokens: int = knob(20000, "tokens of the statistics corpus behind C = E[kkᵀ] (EasyEdit's "
                              "mom2_n_samples counts documents instead)", min=1)
    mom2_ridge: float = knob(0.0, "λ·mean(diag C) added to C before factorising (0 = ROME; only for a singular C)",
                             min=0, easyedit_behaviour=0.0)
    context_templates: str | tuple[str, ...] = knob(
        "sampled", "sampled (prefixes the model writes from its BOS), easyedit (from EasyEdit's five start "
        "words), or a list of templates each containing {}", searchable=False, flag="")
    context_template_length_params: tuple[tuple[int, int], ...] = knob(
        ((5, 5),), "(tokens, count) pairs of generated context prefixes; k* averages over them and \"{}\"",
        searchable=False, easyedit="context_template_length_params", flag="")
    seed: int = knob(0, "seed of the context-template sampler (k* and v* are deterministic given it)", min=0,
                     flag="seed")

    def __post_init__(self) -> None:
        # Lists from YAML/JSON become tuples so the dataclass stays hashable.
        pairs = tuple(tuple(p) for p in self.context_template_length_params)
        object.__setattr__(self, "context_template_length_params", pairs)
        for k in KNOBS.values():
            k.check(getattr(self, k.name))
        for pair in pairs:
            if len(pair) != 2 or min(pair) < 1:
                raise ConfigError("hparams.context_template_length_params: each entry is [tokens, count] >= 1")
        templates = self.context_templates
        if isinstance(templates, str):
            if templates not in CONTEXT_MODES:
                raise ConfigError(f"hparams.context_templates: {templates!r} is neither one of "
                                  f"{', '.join(CONTEXT_MODES)} nor a list of templates")
        else:
            object.__setattr__(self, "context_templates", tuple(templates))
            if not templates or any(t.count("{}") != 1 for t in templates):
                raise ConfigError("hparams.context_templates: a list of templates, each with exactly one {} "
                                  "(where the prompt goes)")

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "hparams") -> EditHParams:
        for old, new in RENAMED.items():
            if old in data:
                raise ConfigError(f"{where}.{old} is now {where}.{new}: {KNOBS[new].help}")
        return from_mapping(cls, data, prefix=f"{where}.")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML values (tuples as lists)."""
        d = dataclasses.asdict(self)
        d["context_template_length_params"] = [list(p) for p in self.context_template_length_params]
        if not isinstance(self.context_templates, str):
            d["context_templates"] = list(self.context_templates)
        return d

    def reproducible_in_easyedit(self) -> bool:
        """Every knob EasyEdit has no key for is at the value EasyEdit behaves as."""
        return all(k.easyedit_behaviour is ANY or getattr(self, k.name) == k.easyedit_behaviour
                   for k in KNOBS.values() if k.easyedit is None)

    def memit_pass(self) -> EditHParams:
        """The setting MEMIT runs with: a hybrid's MEMIT pass clamps with ``hybrid_clamp_norm_factor``."""
        return self.replace(clamp_norm_factor=self.hybrid_clamp_norm_factor) if self.method == "hybrid" else self

    def replace(self, **changes: Any) -> EditHParams:
        unknown = set(changes) - set(KNOBS)
        if unknown:
            raise ConfigError(f"unknown hyperparameter {sorted(unknown)[0]}")
        return dataclasses.replace(self, **changes)


CONTEXT_MODES = ("sampled", "easyedit")
RENAMED = {"mom2_n_samples": "mom2_n_tokens"}
"""Old key → new key: the old one is refused with a message naming the new one."""


def _declare() -> dict[str, Knob]:
    hints = typing.get_type_hints(EditHParams)
    return {f.name: Knob(name=f.name, type=hints[f.name], default=f.default, **f.metadata["knob"])
            for f in dataclasses.fields(EditHParams)}


KNOBS: dict[str, Knob] = _declare()
"""Every hyperparameter's declaration, in field order."""


@dataclass(frozen=True)
class Preset:
    values: dict[str, Any]
    layer_depth_fraction: float | None = None
    """Place ``layer`` at this fraction of the model's depth (ROME's layer 17 of GPT-2 XL's 48)."""
    about: str = ""


PRESETS: dict[str, Preset] = {
    "textbook": Preset(
        dict(method="rome", v_num_grad_steps=20, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=4.0,
             kl_factor=0.0625, lr_schedule="constant", early_stop_loss=0.05, v_select="last", key_mode="rome"),
        layer_depth_fraction=17 / 48,
        about="ROME's published GPT-2 XL / GPT-J settings: the baseline every study is compared with "
              "(mom2_adjustment as the study sets it, so a study without a statistics corpus has one too)"),
    "verify": Preset(
        # The default model's build check runs this preset at every layer: `tuner model build`
        # prints the share of its 20 edits it flips per layer (the build fails below min_editability).
        dict(v_num_grad_steps=60, v_lr=0.5, v_weight_decay=1e-3, kl_factor=0.01, clamp_norm_factor=12.0,
             mom2_adjustment=True),
        about="settings known to edit the embedded default model; its build's editability check"),
}


def _easyedit(layer: int, depth: int, steps: int, weight_decay: float, mom2: bool, source: str) -> Preset:
    """EasyEdit's shipped ROME setting for one family (``hparams/ROME/<source>.yaml``): its layer
    index placed at the same fraction of depth, everything else as written there."""
    return Preset(
        dict(method="rome", v_num_grad_steps=steps, v_lr=0.5, v_weight_decay=weight_decay, clamp_norm_factor=4.0,
             kl_factor=0.0625, mom2_adjustment=mom2, lr_schedule="constant", early_stop_loss=0.05, v_select="last",
             key_mode="rome", context_templates="easyedit", context_template_length_params=((5, 10), (10, 10))),
        layer_depth_fraction=layer / (depth - 1),
        about=f"EasyEdit's ROME defaults for {source} (layer {layer} of {depth}, placed by depth)")


EASYEDIT_DEFAULTS: dict[str, Preset] = {
    "gpt2": _easyedit(17, 48, 20, 0.5, True, "gpt2-xl"),
    "gptj": _easyedit(5, 28, 20, 0.5, False, "gpt-j-6B"),
    "llama": _easyedit(5, 32, 25, 1e-3, False, "llama-7b"),
    "qwen2": _easyedit(5, 28, 25, 1e-3, False, "qwen2-7b"),
    "mistral": _easyedit(5, 32, 25, 1e-3, False, "mistral-7b"),
    "chatglm": _easyedit(5, 28, 20, 0.5, False, "chatglm2-6b"),
    "glm4": _easyedit(5, 40, 25, 1e-3, False, "chatglm4-9b"),
}
"""EasyEdit's per-family ROME defaults (the files its users start from), by adapter family. A
family EasyEdit ships no file for (``gpt_neox``, ``glm``) uses its Llama-7B file."""


def easyedit_preset_name(family: str) -> str:
    return "easyedit-" + (family if family in EASYEDIT_DEFAULTS else "llama")


def preset(name: str, base: EditHParams | None = None, *, n_layers: int | None = None) -> EditHParams:
    """``base`` with preset ``name`` applied (and its layer placed by depth when it sets one):
    one of ``PRESETS`` or ``easyedit-<family>`` (``EASYEDIT_DEFAULTS``)."""
    family = name.removeprefix("easyedit-")
    try:
        p = EASYEDIT_DEFAULTS[family] if name.startswith("easyedit-") else PRESETS[name]
    except KeyError:
        known = [*PRESETS, *(f"easyedit-{f}" for f in EASYEDIT_DEFAULTS)]
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(known)}") from None
    values = dict(p.values)
    if p.layer_depth_fraction is not None:
        if n_layers is None:
            raise ConfigError(f"preset {name!r} places the layer by depth: the model's depth is needed")
        values["layer"] = int(round(p.layer_depth_fraction * (n_layers - 1)))
    return (base or EditHParams()).replace(**values)
