"""What a study says about its model (the ``model:`` section of a study YAML)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


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

    @property
    def is_default(self) -> bool:
        return self.name == "default"
