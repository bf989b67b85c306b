"""The architecture facts to verify before editing a new model family, read from the loaded
model itself (not from its family's name):

    tuner inspect --config studies/chatglm3-6b.yaml     # printed, and written as inspect.md

layer count and widths, the module every template resolves to, the activation layout the probe
found, padding side and prefix tokens, the normalisation that feeds the MLP (RMSNorm or
LayerNorm, found by running a forward pass), where the loss is read (after the final layer and
norm: EasyEdit's ``v_loss_layer = n_layers − 1``), whether remote code runs, and the middle
30–70 % layer band where ROME's edit layers usually lie."""

from __future__ import annotations

from typing import Any

import torch

from tuner.plumbing.hooks import get_module
from tuner.plumbing.tokens import encode, make_batch, pad_id_of, padding_side

TEMPLATES = ("layer", "mlp", "rewrite", "attn", "embed", "final_norm", "lm_head")


def norm_before_mlp(model: Any, adapter: Any, layer: int, tok: Any) -> tuple[str, str]:
    """(module name, class) of the last normalisation module run before layer ``layer``'s MLP."""
    block = get_module(model, adapter.layer.format(layer))
    mlp = get_module(model, adapter.mlp.format(layer))
    order: list[tuple[str, str]] = []
    seen_at_mlp: list[tuple[str, str]] = []
    handles = []
    for name, module in block.named_modules():
        if "norm" in type(module).__name__.lower() and module is not block:
            full = f"{adapter.layer.format(layer)}.{name}"
            handles.append(module.register_forward_hook(
                lambda _m, _i, _o, full=full, cls=type(module).__name__: order.append((full, cls))))
    handles.append(mlp.register_forward_pre_hook(lambda _m, _i: seen_at_mlp.extend(order[-1:])))
    try:
        batch = make_batch([encode(tok, "The")], pad_id=pad_id_of(tok), side="right",
                           device=next(model.parameters()).device)
        with torch.no_grad():
            model(**batch.model_kwargs(model))
    finally:
        for h in handles:
            h.remove()
    return seen_at_mlp[0] if seen_at_mlp else ("none found", "-")


def inspect_model(loaded: Any, *, trust_remote_code: bool, ships_code: bool) -> dict[str, Any]:
    model, tok, adapter = loaded.model, loaded.tok, loaded.adapter
    n = loaded.n_layers
    mid = n // 2
    modules = {}
    for key in TEMPLATES:
        template = getattr(adapter, key)
        name = template.format(mid) if "{}" in template else template
        modules[key] = {"template": template, "resolved": name, "class": type(get_module(model, name)).__name__}
    weight = get_module(model, adapter.rewrite.format(mid)).weight
    d_out, d_in = weight.shape if adapter.weight_layout == "out_in" else weight.shape[::-1]
    norm_name, norm_class = norm_before_mlp(model, adapter, mid, tok)
    prefix = encode(tok, "")
    return {
        "model": loaded.name,
        "class": type(model).__name__,
        "family": adapter.family,
        "n_layers": n,
        "d_model": int(d_out),
        "d_ff": int(d_in),
        "modules": modules,
        "activation_layout": "sequence-first (T, B, d)" if adapter.seq_first else "batch-first (B, T, d)",
        "padding_side": padding_side(tok, adapter.padding_side),
        "tokenizer_padding_side": getattr(tok, "padding_side", "right"),
        "prefix_tokens": tok.convert_ids_to_tokens(prefix) if prefix else [],
        "norm_before_mlp": {"module": norm_name, "class": norm_class,
                            "kind": "RMSNorm" if "rms" in norm_class.lower() else "LayerNorm"
                            if "layernorm" in norm_class.lower() else norm_class},
        "loss_read_at": f"logits after layer {n - 1}, {adapter.final_norm} and {adapter.lm_head} "
                        f"(EasyEdit v_loss_layer = {n - 1})",
        "remote_code": {"ships_code": ships_code, "trust_remote_code": trust_remote_code},
        "middle_band": [round(0.3 * (n - 1)), round(0.7 * (n - 1))],
        "dtype": str(weight.dtype).removeprefix("torch."),
        "device": loaded.device,
    }


def to_markdown(facts: dict[str, Any]) -> str:
    lines = [f"# Architecture of `{facts['model']}`", "",
             f"- class `{facts['class']}`, adapter family `{facts['family']}`, {facts['dtype']} on {facts['device']}",
             f"- {facts['n_layers']} layers, d_model {facts['d_model']}, d_ff {facts['d_ff']}",
             f"- activation layout (probe): {facts['activation_layout']}",
             f"- padding: engine pads {facts['padding_side']} (tokenizer: {facts['tokenizer_padding_side']}); "
             f"prefix tokens: {' '.join(facts['prefix_tokens']) or 'none'}",
             f"- normalisation in front of the MLP: {facts['norm_before_mlp']['kind']} "
             f"(`{facts['norm_before_mlp']['module']}`, {facts['norm_before_mlp']['class']})",
             f"- loss read at: {facts['loss_read_at']}",
             f"- remote code: checkpoint ships code: {facts['remote_code']['ships_code']}, "
             f"runs it: {facts['remote_code']['trust_remote_code']}",
             f"- middle 30–70 % layer band: {facts['middle_band'][0]}–{facts['middle_band'][1]}",
             "", "| template | resolved at the middle layer | class |", "|---|---|---|"]
    lines += [f"| {k} `{v['template']}` | `{v['resolved']}` | {v['class']} |" for k, v in facts["modules"].items()]
    return "\n".join(lines) + "\n"
