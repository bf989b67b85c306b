"""ROME, MEMIT and the hybrid in every edit mode, on the embedded default model and on the
ChatGLM3-interface test model (sequence-first, left-padded; ``tests/chatglm``).

    python bench/methods.py            # ~5 minutes on 2 CPU cores
    python bench/methods.py --facts 8  # smaller

For each model: the same 20 facts (the first of studies/facts/synthetic_edits.json) and the
same v* settings (the default study's fixed hyperparameters at layer 0; MEMIT's window 0-1,
λ = mom2_update_weight's default; MEMIT's clamp, measured against the residual stream's norm
(several times the MLP output's), is --memit-clamp, also for the hybrid's MEMIT pass),
edited with every method in every mode
(``tuner.edit.modes``). Per cell: efficacy (share of facts whose new target beats the true one
on the rewrite prompt), neighbourhood specificity, paraphrase efficacy, the share of facts that
got a MEMIT pass, and in sequential mode the retention (of the facts edited successfully right
after their own edit, the share still edited on the final model) — one table."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def models(root: Path, tmp: Path) -> Iterator[tuple[str, object]]:
    from tests.chatglm.build import build_tiny_chatglm
    from tuner.models.corpus import load_kb
    from tuner.study.config import StudyConfig

    default = StudyConfig.load(root / "studies/default.yaml")
    yield "default (Llama, 4 layers)", default.load_model(device="cpu", progress=False)
    glm_dir = build_tiny_chatglm(tmp / "chatglm3-tiny", load_kb(root / "studies/facts/synthetic_kb.json"))
    glm = StudyConfig.from_dict({"name": "glm", "model": {"name": str(glm_dir), "trust_remote_code": True,
                                                          "stats_corpus": str(glm_dir / "corpus.txt")},
                                 "facts": {"path": str(root / "studies/facts/synthetic_edits.json")}})
    yield "ChatGLM3 interface (4 layers)", glm.load_model(device="cpu", progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--facts", type=int, default=20, help="facts per cell (default 20)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--memit-clamp", type=float, default=2.0,
                    help="MEMIT's clamp_norm_factor, a multiple of the residual stream's norm as in EasyEdit "
                         "(default 2, as in tests/rome/test_memit.py's end-to-end edit)")
    args = ap.parse_args()
    import torch

    from tuner.edit.modes import MODES, run_edits
    from tuner.facts.schema import load_facts
    from tuner.study.config import StudyConfig

    torch.set_num_threads(args.threads)
    root = Path(__file__).resolve().parents[1]
    facts = load_facts(root / "studies/facts/synthetic_edits.json")[: args.facts]
    hp = StudyConfig.load(root / "studies/default.yaml").hparams.replace(layer=0, window_size=2)
    print(f"{len(facts)} facts per cell; v*: {hp.v_num_grad_steps} steps, v_lr {hp.v_lr}, v_weight_decay "
          f"{hp.v_weight_decay}, kl {hp.kl_factor}, clamp {hp.clamp_norm_factor} (× ‖v₀‖; memit: {args.memit_clamp} × "
          f"‖h‖, also the hybrid's MEMIT pass); ROME at layer 0, MEMIT layers 0-1, λ {hp.mom2_update_weight:g}")
    head = f"{'model':<30}{'method':<8}{'mode':<13}{'efficacy':>9}{'specif.':>9}{'paraph.':>9}{'MEMIT':>7}" \
           f"{'retention':>11}{'s':>7}"
    print(head)
    with tempfile.TemporaryDirectory() as d:
        for name, loaded in models(root, Path(d)):
            editor = loaded.editor(progress=False)
            for method in ("rome", "memit", "hybrid"):
                for mode in MODES:
                    t0 = time.perf_counter()
                    cell = hp.replace(method=method, hybrid_clamp_norm_factor=args.memit_clamp,
                                      clamp_norm_factor=args.memit_clamp if method == "memit" else hp.clamp_norm_factor)
                    ms = [r.metrics for r in run_edits(editor, facts, cell, mode)]
                    seconds = time.perf_counter() - t0
                    n = len(ms)

                    def mean(key: str) -> float:
                        vals = [m[key] for m in ms if m.get(key) is not None]
                        return sum(vals) / len(vals) if vals else float("nan")

                    kept = [m["efficacy"] for m in ms if m.get("efficacy_at_edit")]
                    retention = f"{sum(kept) / len(kept):.2f}" if mode == "sequential" and kept else "-"
                    print(f"{name:<30}{method:<8}{mode:<13}{mean('efficacy'):>9.2f}{mean('specificity'):>9.2f}"
                          f"{mean('paraphrase'):>9.2f}{sum(bool(m['memit_pass']) for m in ms) / n:>7.0%}"
                          f"{retention:>11}{seconds:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
