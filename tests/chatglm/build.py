"""The ChatGLM3-interface test model (this folder's modeling code), trained briefly on the fact
corpus: used by tests/chatglm and bench/methods.py."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
SIZE = dict(num_layers=4, hidden_size=128, ffn_hidden_size=512, kv_channels=32, num_attention_heads=4,
            multi_query_group_num=1, seq_length=128)


def _classes() -> tuple[Any, Any, Any]:
    """(ChatGLMConfig, ChatGLMForConditionalGeneration, RMSNorm) from this folder's model code."""
    sys.path.insert(0, str(HERE))
    try:
        from configuration_chatglm import ChatGLMConfig
        from modeling_chatglm import ChatGLMForConditionalGeneration, RMSNorm
    finally:
        sys.path.remove(str(HERE))
    return ChatGLMConfig, ChatGLMForConditionalGeneration, RMSNorm


def untrained_chatglm(kb: Any, size: dict[str, int] | None = None) -> tuple[Any, Any]:
    """(model, tokenizer): the ChatGLM3-interface model at ``size`` (default ``SIZE``), seeded
    random weights, with a left-padding ``[gMASK] <sop>`` tokenizer over the fact corpus."""
    from tuner.models.build import make_tokenizer
    from tuner.models.corpus import fact_sentences

    config_cls, model_cls, rms_norm = _classes()
    tok = make_tokenizer(fact_sentences(kb), prefix=("[gMASK]", "<sop>"))
    size = {**SIZE, **(size or {})}
    config = config_cls(padded_vocab_size=len(tok), pad_token_id=tok.pad_token_id, **size)
    config.max_length, config.use_cache = 128, False  # what the upstream code reads, for building it here
    torch.manual_seed(0)
    model = model_cls(config)
    for m in model.modules():
        if isinstance(m, rms_norm):
            torch.nn.init.ones_(m.weight)  # upstream leaves them torch.empty
    return model, tok


def build_tiny_chatglm(out: Path, kb: Any, *, size: dict[str, int] | None = None, spec: Any = None) -> Path:
    """Train the ChatGLM-style model briefly on the fact corpus and save it as a checkpoint
    directory with auto_map, its own code, a left-padding [gMASK] <sop> tokenizer and weights."""
    from safetensors.torch import save_file

    from tuner.models.build import BuildSpec, train

    out.mkdir(parents=True, exist_ok=True)
    model, tok = untrained_chatglm(kb, size)
    model, tok, docs, info = train(spec or BuildSpec(seed=0), kb, model=model, tok=tok, progress=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    saved = _classes()[0](padded_vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                          **{**SIZE, **(size or {})}).to_dict()
    saved.pop("max_length", None), saved.pop("use_cache", None)
    saved.update(architectures=["ChatGLMForConditionalGeneration"], auto_map={
        "AutoConfig": "configuration_chatglm.ChatGLMConfig",
        "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
        "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"})
    (out / "config.json").write_text(json.dumps(saved, indent=1))
    for f in ("configuration_chatglm.py", "modeling_chatglm.py"):
        shutil.copy(HERE / f, out / f)
    tok.save_pretrained(out)
    (out / "corpus.txt").write_text("\n".join(docs) + "\n")
    assert info["accuracy"] >= 0.95, info
    return out


def cached_tiny_chatglm(kb: Any) -> Path:
    """``build_tiny_chatglm`` at the default size on the default fact corpus (``kb``, read from
    studies/facts/synthetic_kb.json), built once per version of its inputs (this folder's code,
    that file, ``SIZE``) under ``storage/testbeds/`` and reused read-only: training is
    deterministic, so a cached build is the build."""
    import hashlib
    import tempfile

    from filelock import FileLock

    from tests.workspace import ROOT

    digest = hashlib.sha256()
    for f in ("build.py", "configuration_chatglm.py", "modeling_chatglm.py"):
        digest.update((HERE / f).read_bytes())
    digest.update((ROOT / "studies/facts/synthetic_kb.json").read_bytes())
    digest.update(json.dumps(SIZE, sort_keys=True).encode())
    root = ROOT / "storage" / "testbeds"
    root.mkdir(parents=True, exist_ok=True)
    out = root / f"chatglm3-tiny-{digest.hexdigest()[:12]}"
    with FileLock(str(out) + ".lock"):
        if not (out / "model.safetensors").is_file():
            with tempfile.TemporaryDirectory(dir=root) as tmp:
                build_tiny_chatglm(Path(tmp) / "model", kb)
                (Path(tmp) / "model").rename(out)
    return out
