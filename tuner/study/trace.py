"""Causal tracing of a study's facts (``tuner trace``, ``tuner launch --seed-from-trace``):
the study's model and facts through ``tuner.analysis.causal_trace``, as one JSON-ready dict."""

from __future__ import annotations

import time
from typing import Any

from tuner.study.config import StudyConfig


def run_trace(cfg: StudyConfig, *, facts: int, noise: float, samples: int, window: int | None, seed: int,
              device: str | None = None, progress: bool = True) -> dict[str, Any]:
    from tuner.analysis.causal_trace import check_trace_options, per_layer_effects, trace_facts
    from tuner.facts.schema import load_facts

    check_trace_options(noise=noise, facts=facts, samples=samples)  # before the model loads
    loaded = cfg.load_model(device=device, progress=progress)
    chosen = load_facts(cfg.resolve(cfg.facts.path))[:facts]
    t0 = time.perf_counter()
    traces, skipped = trace_facts(loaded.model, loaded.tok, loaded.adapter, chosen, noise=noise, samples=samples,
                                  window=window, seed=seed, progress=progress)
    effects = per_layer_effects(traces)
    top = sorted(range(len(effects["mlp"])), key=lambda i: effects["mlp"][i], reverse=True)
    return {"model": loaded.name, "fingerprint": loaded.fingerprint, "noise": noise, "samples": samples,
            "seed": seed, "traced": len(traces), "skipped_wrong": skipped, "seconds": round(time.perf_counter() - t0, 2),
            "effects": effects, "top_mlp_layers": top, "facts": [t.to_dict() for t in traces]}
