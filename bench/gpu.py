"""Real-scale speed of the ROME engine on random-initialised models of real shape.

    python bench/gpu.py            # on a GPU: Llama-2-7B and ChatGLM3-6B shapes in bf16
    python bench/gpu.py --toy      # the same measurements at toy size on the CPU (< 1 minute)

Prints, per model, measured side by side in this one run:
  * a bare ROME step (full forward + backward to δ at the edit layer, one fact's rows), the
    engine's step on the same rows, and their ratio;
  * one trial's v* for 8 facts: batched (one optimisation) vs one fact after another;
  * layer statistics: per layer, and every searched layer in one pass (time per layer);
  * MEMIT: the 8 facts in one edit over a two-layer window vs 8 independent ROME edits;
  * the fluency check's greedy decoding with the key/value cache vs re-running the sequence;
  * peak GPU memory;
  * the modeled wall time of a 200-trial ``studies/chatglm3-6b.yaml`` study: 200 × (mean steps
    × the batched 8-fact step + the per-trial fixed cost), for the early-stop savings given.

Weights are random, so the figures are about speed only. The ChatGLM3-6B shape runs the
project's own ChatGLM-interface model code (``tests/chatglm``) at full size."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
LLAMA_TOY = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=8, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=2000, max_position_embeddings=256)
CHATGLM_6B = dict(num_layers=28, hidden_size=4096, ffn_hidden_size=13696, kv_channels=128, num_attention_heads=32,
                  multi_query_group_num=2, padded_vocab_size=65024, seq_length=8192)
CHATGLM_TOY = dict(num_layers=8, hidden_size=64, ffn_hidden_size=208, kv_channels=16, num_attention_heads=4,
                   multi_query_group_num=2, padded_vocab_size=2000, seq_length=256)


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Any, device: Any, repeat: int = 3) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def build_llama(size: dict, dtype: Any, device: str) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**size, tie_word_embeddings=False))
    return model.to(dtype).eval()


def build_chatglm(size: dict, dtype: Any, device: str) -> Any:
    import torch

    here = Path(__file__).resolve().parents[1] / "tests" / "chatglm"
    sys.path.insert(0, str(here))
    try:
        from configuration_chatglm import ChatGLMConfig
        from modeling_chatglm import ChatGLMForConditionalGeneration, RMSNorm
    finally:
        sys.path.remove(str(here))
    config = ChatGLMConfig(pad_token_id=0, **size)
    config.max_length, config.use_cache = size["seq_length"], False
    torch.manual_seed(0)
    with torch.device(device):
        model = ChatGLMForConditionalGeneration(config)
        for m in model.modules():
            if isinstance(m, RMSNorm):
                torch.nn.init.ones_(m.weight)
            elif isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, std=0.02)
            elif isinstance(m, torch.nn.Embedding):
                torch.nn.init.normal_(m.weight, std=0.02)
    return model.to(dtype).eval()


def bare_step(model: Any, adapter: Any, layer: int, kwargs: dict, rows: Any, cols: Any, target_cols: Any,
              target: Any) -> Any:
    """One full forward + backward to a δ added at the edit layer: the bound the engine's step
    is compared with."""
    import torch

    from tuner.plumbing.hooks import Trace

    d = model.config.hidden_size
    delta = torch.zeros(d, device=rows.device, requires_grad=True)

    def add(out: Any, _m: Any) -> Any:
        view = out.transpose(0, 1) if adapter.seq_first else out
        view[rows, cols] += delta.to(out.dtype)
        return out

    def step() -> None:
        with Trace(model, adapter.rewrite.format(layer), edit_output=add):
            logits = model(**kwargs).logits
        lp = logits[rows[:, None], target_cols].float().log_softmax(-1)
        (-lp.gather(-1, target.expand(target_cols.shape)[..., None]).mean()).backward()

    return step


def measure(name: str, model: Any, tok: Any, facts: list, *, layer: int, layers: list[int], stats_tokens: int,
            steps: tuple[int, int], device: Any) -> dict[str, float]:
    import torch

    from tuner.hparams import EditHParams
    from tuner.plumbing.adapters import detect_adapter
    from tuner.plumbing.tokens import target_token_ids
    from tuner.rome.compute_v import VRequest, compute_vs
    from tuner.rome.context import context_templates
    from tuner.rome.layer_stats import compute_second_moments

    model.requires_grad_(False)
    adapter = detect_adapter(model.config, family="chatglm" if "chatglm" in name.lower() else None)
    hp = EditHParams(layer=layer, v_num_grad_steps=steps[1], v_lr=0.05, early_stop_loss=None,
                         mom2_adjustment=False, context_template_length_params=[[5, 10], [10, 10]])
    templates = context_templates(model, tok, hp.context_templates, hp.context_template_length_params, seed=0)
    requests = [VRequest(f.prompt, f.subject, tuple(target_token_ids(tok, f.rewrite_prompt, f.target_new)))
                for f in facts]

    def engine(reqs: list, n_steps: int) -> float:
        h = hp.replace(v_num_grad_steps=n_steps)
        return timed(lambda: compute_vs(model, tok, adapter, h, reqs, templates), device, repeat=1)

    # the engine's per-step cost: the difference of two step counts removes the fixed cost
    lo, hi = steps
    one = engine(requests[:1], lo), engine(requests[:1], hi)
    engine_step = (one[1] - one[0]) / (hi - lo)
    batched = engine(requests, lo), engine(requests, hi)
    batched_step = (batched[1] - batched[0]) / (hi - lo)
    sequential = sum(engine([r], hi) for r in requests)

    # the bare step on one fact's rows, built the way the engine builds them
    from tuner.rome.v_batch import VRows

    rows_data = VRows(tok, adapter, hp, requests[:1], templates, device)
    kwargs = rows_data.batch.model_kwargs(model)
    n_rows = len(templates)
    rows = torch.arange(n_rows, device=device)
    bare = timed(bare_step(model, adapter, layer, kwargs, rows, rows_data.edit_col[:n_rows],
                           rows_data.target_cols[:n_rows], rows_data.target_ids[0]), device)

    texts = [" ".join((f.prompt.format(f.subject).split() + [f.target_true]) * 8) for f in facts] * 200
    t0 = time.perf_counter()
    compute_second_moments(model, tok, adapter, [layers[0]], texts, n_samples=stats_tokens, progress=False)
    sync(device)
    per_layer = time.perf_counter() - t0
    t0 = time.perf_counter()
    compute_second_moments(model, tok, adapter, layers, texts, n_samples=stats_tokens, progress=False)
    sync(device)
    one_pass = time.perf_counter() - t0
    from tuner.edit.editor import Editor

    editor = Editor(model, tok, adapter, fingerprint="bench", stats_texts=[], progress=False)
    plans = editor.plan_many(facts, hp.replace(v_num_grad_steps=lo))
    for fact in facts:
        editor.pre_scores(fact)  # computed once per fact and cached for the whole study
    sync(device)
    t0 = time.perf_counter()
    for fact, plan in zip(facts, plans):
        editor.evaluate(fact, hp, plan)
    sync(device)
    evaluation = time.perf_counter() - t0
    # the fluency check's greedy decoding (8 facts x 5 prompts x 16 tokens): with the key/value
    # cache and re-running the whole sequence every token; sequence-first models always re-run
    from tuner.metrics.fluency import fluency_prompts, greedy_continuations

    prompts = [p for f in facts for p in fluency_prompts(f)]
    decoded, decode_s = {}, {}
    for cache in (True, False):
        decoded[cache] = greedy_continuations(model, tok, adapter, prompts, cache=cache)
        decode_s[cache] = timed(lambda: greedy_continuations(model, tok, adapter, prompts, cache=cache), device,
                                repeat=1)
    same = sum(a == b for a, b in zip(decoded[True], decoded[False]))
    # MEMIT: 8 facts in one edit over a two-layer window vs 8 independent ROME edits (each its own
    # v*, k* and rank-one update), the same v* steps; C = I (no statistics) in both
    from tuner.memit.plan import memit_plan

    def rome_each() -> None:
        for fact in facts:
            editor.plan_many([fact], hp.replace(v_num_grad_steps=hi))

    memit_hp = hp.replace(method="memit", window_size=2, v_num_grad_steps=hi)
    memit = timed(lambda: memit_plan(model, tok, adapter, memit_hp, requests, templates, lambda _layer: None),
                  device, repeat=1)
    rome_8 = timed(rome_each, device, repeat=1)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    fixed = batched[0] - lo * batched_step  # initial pass, batching, bookkeeping of one 8-fact trial
    return {"bare_step": bare, "engine_step": engine_step, "batched_step": batched_step,
            "batched_trial": batched[1], "sequential_trial": sequential, "per_layer": per_layer,
            "one_pass": one_pass, "n_layers_pass": len(layers), "peak_gib": peak, "fixed": fixed, "eval": evaluation,
            "rows": n_rows, "memit_batch": memit, "rome_each": rome_8, "decode_cached": decode_s[True],
            "decode_whole": decode_s[False], "decode_same": same, "decode_n": len(prompts),
            "decode_cache_used": not adapter.seq_first}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--toy", action="store_true", help="toy sizes on the CPU (a smoke run, < 1 minute)")
    ap.add_argument("--facts", type=int, default=8, help="facts per trial (default 8, as studies/chatglm3-6b.yaml)")
    ap.add_argument("--early-stop-saving", type=float, nargs="*", default=[0.0, 0.5, 0.75],
                    help="fractions of the drawn steps saved by the early stop, for the modeled study")
    args = ap.parse_args()
    import torch

    from tuner.facts.schema import load_facts
    from tuner.models.build import make_tokenizer
    from tuner.models.corpus import fact_sentences
    from tuner.study.config import StudyConfig

    root = Path(__file__).resolve().parents[1]
    device = torch.device("cpu" if args.toy or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    facts = load_facts(root / "studies/facts/synthetic_edits.json")[: args.facts]
    import json

    kb = json.loads((root / "studies/facts/synthetic_kb.json").read_text())
    tok = make_tokenizer(fact_sentences(kb))
    study = StudyConfig.load(root / "studies/chatglm3-6b.yaml")
    steps_dim = next(d for d in study.search.dimensions if d.name == "v_num_grad_steps")
    mean_steps = (steps_dim.low + steps_dim.high) / 2

    models = [("Llama-2-7B shape", build_llama, LLAMA_TOY if args.toy else LLAMA_7B, 5),
              ("ChatGLM3-6B shape", build_chatglm, CHATGLM_TOY if args.toy else CHATGLM_6B, 5)]
    card = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (no GPU)"
    print(f"device: {card}; dtype {str(dtype).removeprefix('torch.')}; {'toy sizes' if args.toy else 'real shapes'}; "
          f"{len(facts)} facts per trial")
    for name, build, size, layer in models:
        t0 = time.perf_counter()
        model = build(size, dtype, device.type)
        n_params = sum(p.numel() for p in model.parameters())
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        from tuner.plumbing.adapters import detect_adapter

        depth = detect_adapter(model.config, family="chatglm" if "ChatGLM" in name else None).n_layers(model.config)
        layers = [i for i in study.search.layers(study.hparams) if i < depth]  # the study's searched layers
        m = measure(name, model, tok, facts, layer=layer, layers=layers, stats_tokens=2000 if args.toy else 20000,
                    steps=(3, 8) if args.toy else (5, 15), device=device)
        size_text = f"{n_params / 1e9:.2f} B" if n_params >= 1e8 else f"{n_params / 1e6:.2f} M"
        print(f"\n{name}: {size_text} parameters, built in {time.perf_counter() - t0:.0f} s, edit layer {layer}")
        rows = [
            (f"bare forward+backward step ({m['rows']} rows), ms", f"{1000 * m['bare_step']:.1f}"),
            ("engine step, same rows, ms", f"{1000 * m['engine_step']:.1f}"),
            ("engine / bare", f"{m['engine_step'] / m['bare_step']:.2f}x"),
            (f"engine step, {len(facts)} facts batched, ms", f"{1000 * m['batched_step']:.1f}"),
            (f"v* of {len(facts)} facts: one by one, s", f"{m['sequential_trial']:.2f}"),
            (f"v* of {len(facts)} facts: batched, s", f"{m['batched_trial']:.2f}"),
            ("batched speed-up", f"{m['sequential_trial'] / m['batched_trial']:.2f}x"),
            ("statistics, one layer alone, s", f"{m['per_layer']:.2f}"),
            (f"statistics, {m['n_layers_pass']} layers in one pass, s", f"{m['one_pass']:.2f}"),
            ("statistics: per-layer runs / one pass", f"{m['n_layers_pass'] * m['per_layer'] / m['one_pass']:.2f}x"),
            (f"scoring {len(facts)} edits (post-edit evaluation), s", f"{m['eval']:.2f}"),
            (f"{len(facts)} independent ROME edits (v*, k*, ΔW each), s", f"{m['rome_each']:.2f}"),
            (f"MEMIT, {len(facts)} facts in one edit, layers {layer}-{layer + 1}, s", f"{m['memit_batch']:.2f}"),
            (f"{len(facts)} ROME edits / one MEMIT batch", f"{m['rome_each'] / m['memit_batch']:.2f}x"),
            (f"fluency decoding ({m['decode_n']} prompts): cached / re-run, s",
             f"{m['decode_cached']:.2f} / {m['decode_whole']:.2f}" if m["decode_cache_used"]
             else f"n/a / {m['decode_whole']:.2f}"),
            ("fluency decoding: identical continuations", f"{m['decode_same']}/{m['decode_n']}"),
            ("peak GPU memory, GiB", f"{m['peak_gib']:.1f}"),
        ]
        for saving in args.early_stop_saving:
            hours = 200 * (mean_steps * (1 - saving) * m["batched_step"] + m["fixed"] + m["eval"]) / 3600
            rows.append((f"modeled 200-trial chatglm3-6b study, {saving:.0%} steps saved, h", f"{hours:.2f}"))
        width = max(len(r[0]) for r in rows)
        for label, value in rows:
            print(f"  {label:<{width}} {value:>10}")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
