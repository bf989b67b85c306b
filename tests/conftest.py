"""Shared fixtures: tiny random models of every supported family, the synthetic facts, and the
embedded default model (trained once per session, cached under storage/models/)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.workspace import ROOT, shared_home  # noqa: F401  (re-exported for the tests)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_cli(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m tuner ARGS`` as a real process."""
    return subprocess.run([sys.executable, "-m", "tuner", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.fixture(scope="session")
def kb():
    from tuner.models.corpus import load_kb

    return load_kb(ROOT / "studies/facts/synthetic_kb.json")


@pytest.fixture(scope="session")
def facts():
    from tuner.facts.schema import load_facts

    return load_facts(ROOT / "studies/facts/synthetic_edits.json")


@pytest.fixture(scope="session")
def tiny_tok(kb):
    from tuner.models.build import make_tokenizer
    from tuner.models.corpus import fact_sentences

    return make_tokenizer(fact_sentences(kb))


@pytest.fixture(scope="session")
def stats_texts(kb):
    import random

    from tuner.models.corpus import documents, fact_sentences

    return documents(fact_sentences(kb), random.Random(0))[:80]


FAMILIES = ["gpt2", "gptj", "gpt_neox", "llama", "qwen2", "mistral", "glm", "glm4"]


def tiny_config(model_type: str, vocab_size: int):
    import transformers as tf

    common = dict(vocab_size=vocab_size, tie_word_embeddings=False, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    llama_like = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=128, **common)
    return {
        "gpt2": lambda: tf.GPT2Config(n_layer=3, n_embd=32, n_inner=64, n_head=2, n_positions=128, **common),
        "gptj": lambda: tf.GPTJConfig(n_layer=3, n_embd=32, n_inner=64, n_head=2, rotary_dim=8, n_positions=128, **common),
        "gpt_neox": lambda: tf.GPTNeoXConfig(num_hidden_layers=3, hidden_size=32, intermediate_size=64,
                                             num_attention_heads=2, max_position_embeddings=128, **common),
        "llama": lambda: tf.LlamaConfig(**llama_like),
        "qwen2": lambda: tf.Qwen2Config(**llama_like),
        "mistral": lambda: tf.MistralConfig(**llama_like),
        "glm": lambda: tf.GlmConfig(**llama_like),
        "glm4": lambda: tf.Glm4Config(**llama_like),
    }[model_type]()


@pytest.fixture(scope="session")
def tiny_models(tiny_tok):
    """model_type -> a randomly initialised tiny causal LM (seeded), in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    cache = {}

    def get(model_type: str):
        if model_type not in cache:
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(tiny_config(model_type, len(tiny_tok)))
            cache[model_type] = model.eval()
        return cache[model_type]

    return get


@pytest.fixture(scope="session")
def tiny_editor(tiny_models, tiny_tok, stats_texts, tmp_path_factory):
    from tuner.edit.editor import Editor
    from tuner.plumbing.adapters import detect_adapter

    root = tmp_path_factory.mktemp("stats")
    editors = {}

    def get(model_type: str) -> Editor:
        if model_type not in editors:
            model = tiny_models(model_type)
            editors[model_type] = Editor(model, tiny_tok, detect_adapter(model.config), fingerprint=model_type,
                                         stats_texts=stats_texts, stats_root=root, progress=False)
        return editors[model_type]

    return get


@pytest.fixture(scope="session")
def default_model():
    """The embedded default model, built through the public API (cached in storage/)."""
    from tuner.study.config import StudyConfig

    os.chdir(ROOT)
    return StudyConfig.load(ROOT / "studies/default.yaml").load_model(device="cpu", progress=False)
