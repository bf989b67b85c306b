"""Architecture differences as data: one ``Adapter`` per model family.

Templates take the layer index: ``adapter.rewrite.format(3)`` → ``"model.layers.3.mlp.down_proj"``.
The algorithm never branches on the family; it reads these fields."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from tuner.errors import ArchitectureError
from tuner.strict import from_mapping


@dataclass(frozen=True)
class Adapter:
    family: str
    layer: str
    """One transformer block."""
    mlp: str
    rewrite: str
    """The MLP's output projection (W_out): ROME's rank-one update is written here."""
    attn: str
    embed: str
    final_norm: str
    lm_head: str
    weight_layout: Literal["out_in", "in_out"] = "out_in"
    """``out_in``: nn.Linear (weight is d_out × d_in); ``in_out``: GPT-2's Conv1D (d_in × d_out)."""
    seq_first: bool = False
    """Hidden states are (T, B, d) instead of (B, T, d) — ChatGLM2/3."""
    padding_side: Literal["left", "right", "tokenizer"] = "tokenizer"
    """Which side the engine pads batches on; ``tokenizer`` uses the tokenizer's own setting."""
    n_layers_attr: tuple[str, ...] = ("num_hidden_layers", "n_layer", "num_layers")

    def n_layers(self, config: Any) -> int:
        for attr in self.n_layers_attr:
            value = getattr(config, attr, None)
            if isinstance(value, int):
                return value
        raise ArchitectureError(f"cannot read the number of layers from {type(config).__name__}")

    def batch_first(self, x: Any) -> Any:
        """A hidden-state tensor as (B, T, d): a view of ``x``, transposed for sequence-first
        models (writing into it writes into ``x``). The one place the layout is undone."""
        return x.transpose(0, 1) if self.seq_first else x

    def with_overrides(self, overrides: dict[str, Any]) -> Adapter:
        merged = {**dataclasses.asdict(self), **overrides}
        merged["n_layers_attr"] = list(merged["n_layers_attr"])
        return from_mapping(Adapter, merged, prefix="model.adapter.")


_LLAMA = dict(
    layer="model.layers.{}",
    mlp="model.layers.{}.mlp",
    rewrite="model.layers.{}.mlp.down_proj",
    attn="model.layers.{}.self_attn",
    embed="model.embed_tokens",
    final_norm="model.norm",
    lm_head="lm_head",
)

ADAPTERS: dict[str, Adapter] = {
    "gpt2": Adapter(
        family="gpt2",
        layer="transformer.h.{}",
        mlp="transformer.h.{}.mlp",
        rewrite="transformer.h.{}.mlp.c_proj",
        attn="transformer.h.{}.attn",
        embed="transformer.wte",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
        weight_layout="in_out",
    ),
    "gptj": Adapter(
        family="gptj",
        layer="transformer.h.{}",
        mlp="transformer.h.{}.mlp",
        rewrite="transformer.h.{}.mlp.fc_out",
        attn="transformer.h.{}.attn",
        embed="transformer.wte",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
    ),
    "gpt_neox": Adapter(
        family="gpt_neox",
        layer="gpt_neox.layers.{}",
        mlp="gpt_neox.layers.{}.mlp",
        rewrite="gpt_neox.layers.{}.mlp.dense_4h_to_h",
        attn="gpt_neox.layers.{}.attention",
        embed="gpt_neox.embed_in",
        final_norm="gpt_neox.final_layer_norm",
        lm_head="embed_out",
    ),
    "llama": Adapter(family="llama", **_LLAMA),
    # GLM-4 in transformers (GlmForCausalLM / Glm4ForCausalLM) keeps Llama's module names.
    "glm": Adapter(family="glm", **_LLAMA),
    "chatglm": Adapter(
        family="chatglm",
        layer="transformer.encoder.layers.{}",
        mlp="transformer.encoder.layers.{}.mlp",
        rewrite="transformer.encoder.layers.{}.mlp.dense_4h_to_h",
        attn="transformer.encoder.layers.{}.self_attention",
        embed="transformer.embedding.word_embeddings",
        final_norm="transformer.encoder.final_layernorm",
        lm_head="transformer.output_layer",
        seq_first=True,
        padding_side="left",
    ),
}

# config.model_type → family
MODEL_TYPES: dict[str, str] = {
    "gpt2": "gpt2",
    "gptj": "gptj",
    "gpt_neox": "gpt_neox",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "glm": "glm",
    "glm4": "glm",
    "chatglm": "chatglm",
}


def detect_adapter(
    config: Any, *, family: str | None = None, overrides: dict[str, Any] | None = None
) -> Adapter:
    """The adapter for ``config`` (a transformers config), or for an explicit ``family``."""
    if family is None:
        model_type = getattr(config, "model_type", None)
        family = MODEL_TYPES.get(str(model_type))
        if family is None:
            raise ArchitectureError(
                f"unknown architecture {model_type!r}; supported model types: "
                f"{', '.join(sorted(MODEL_TYPES))} (or set model.family and model.adapter in the study YAML)"
            )
    elif family not in ADAPTERS:
        raise ArchitectureError(f"unknown family {family!r}; choose one of {', '.join(ADAPTERS)}")
    adapter = ADAPTERS[family]
    return adapter.with_overrides(overrides) if overrides else adapter
