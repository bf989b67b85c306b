"""How a trial's facts are written into the model: the method (``hp.method``) and the edit mode.

    results = run_edits(editor, facts, hp, "sequential")   # one EditResult per fact, in order

Methods:
  rome    one rank-one update per fact at ``hp.layer`` (``tuner.rome.rank_one``)
  memit   MEMIT over the window ``hp.layer … hp.layer + window_size − 1`` (``tuner.memit.plan``)
  hybrid  the progressive fallback for models where ROME alone falls short (ChatGLM3): ROME at
          ``hp.layer`` first; a fact whose ROME edit falls short — P(new | rewrite prompt) on the
          edited model below ``hybrid_min_prob``, or a rebound of its v* trajectory (peak − end)
          above ``hybrid_max_rebound`` — then gets a MEMIT pass over the window, whose targets z
          are optimised on the ROME-edited model: MEMIT carries the residual ROME left. The MEMIT
          pass clamps with ``hybrid_clamp_norm_factor`` (× the residual stream's norm, as MEMIT
          measures it), the ROME pass with ``clamp_norm_factor`` (× ‖v₀‖).

Modes:
  independent  every fact edited alone on the original weights; ROME's K edits are scored in
               shared batches (``RowUpdates``)
  batch        all K facts written at once: ROME's K rank-one updates summed, MEMIT's one update
               per layer for all facts; every fact scored on that one model
  sequential   facts edited one after another, each on the model the earlier edits left (a user
               editing fact after fact); each fact is scored right after its own edit
               (``prob_at_edit``, ``efficacy_at_edit``) and every fact again on the final model,
               so forgetting and collapse show (``retention``)

In batch and sequential modes a fact's metrics are the final model's, and ``update_norm`` is the
largest ‖ΔW_l‖/‖W_l‖ of the model's total change (what the disabling-edit guard reads). Every
weight is restored bit-exactly afterwards, whatever happens (``_Scratch``)."""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from tuner.errors import ConfigError
from tuner.hparams import EditHParams
from tuner.memit.plan import MemitPlan, memit_plan
from tuner.memit.window import window
from tuner.metrics.counterfact import score_facts
from tuner.metrics.fluency import fluency_prompts, generation_entropies
from tuner.metrics.stability import stability_metrics
from tuner.plumbing.module_io import rewrite_weight
from tuner.rome import rank_one
from tuner.rome.compute_v import VResult
from tuner.signals import checkpoint

if TYPE_CHECKING:
    from tuner.edit.editor import Editor, EditResult

MODES = ("independent", "batch", "sequential")
OnStep = Callable[[int, list[float]], None]


class _Scratch:
    """The rewrite weights of ``layers``, saved once; updates are added in place and ``reset``
    or the end of the block puts the saved weights back (bit-exact)."""

    def __init__(self, editor: Editor, layers: Sequence[int]) -> None:
        self.editor = editor
        self.weights = {layer: rewrite_weight(editor.model, editor.adapter, layer) for layer in layers}
        self.saved = {layer: w.detach().clone() for layer, w in self.weights.items()}
        self.total: dict[int, torch.Tensor] = {}  # ΔW written since the last reset, per layer

    def add(self, deltas: dict[int, torch.Tensor]) -> None:
        for layer, delta in deltas.items():
            w = self.weights[layer]
            with torch.no_grad():
                w.add_(rank_one.oriented(self.editor.adapter, delta).to(device=w.device, dtype=w.dtype))
            self.total[layer] = self.total.get(layer, 0) + delta.double().to(w.device)

    def update_norm(self) -> float:
        """max over layers of ‖total ΔW_l‖ / ‖W_l‖."""
        return max((float(t.norm() / self.saved[layer].double().norm()) for layer, t in self.total.items()),
                   default=0.0)

    def reset(self) -> None:
        with torch.no_grad():
            for layer, w in self.weights.items():
                w.copy_(self.saved[layer])
        self.total = {}


@contextmanager
def _scratch(editor: Editor, layers: Sequence[int]) -> Iterator[_Scratch]:
    s = _Scratch(editor, sorted(set(layers)))
    try:
        yield s
    finally:
        s.reset()


def _memit(editor: Editor, facts: Sequence[Any], hp: EditHParams, on_step: OnStep | None) -> MemitPlan:
    hp = hp.memit_pass()  # a hybrid's MEMIT pass has its own clamp (MEMIT measures it against ‖h‖)
    def cov_of(layer: int) -> torch.Tensor | None:
        return editor.mom2(layer, hp.mom2_n_tokens) if hp.mom2_adjustment else None

    return memit_plan(editor.model, editor.tok, editor.adapter, hp, editor.requests(facts),
                      editor.context_templates(hp), cov_of, on_step=on_step,
                      max_facts_per_chunk=editor.max_facts_per_chunk)


def _short(hp: EditHParams, prob: float, v: VResult) -> bool:
    """Hybrid's rule: this fact's ROME edit falls short and gets a MEMIT pass."""
    rebound = stability_metrics(v.trajectory, v.selected_step)["rebound"]
    return prob < hp.hybrid_min_prob or rebound > hp.hybrid_max_rebound


def _only_checkpoint(_step: int, _probs: list[float]) -> None:
    checkpoint()


def run_edits(editor: Editor, facts: Sequence[Any], hp: EditHParams, mode: str = "independent", *,
              on_step: OnStep | None = None) -> list[EditResult]:
    """Edit ``facts`` with ``hp`` in ``mode`` and score them (see the module docstring).
    ``on_step(step, probs)`` runs after every forward pass of the first optimisation (the
    pruner's intermediate values); later optimisations of the same call only checkpoint."""
    if mode not in MODES:
        raise ConfigError(f"unknown edit mode {mode!r}; choose one of {', '.join(MODES)}")
    editor.check_layer(hp.layer)
    if hp.method == "rome" and mode == "independent":
        plans = editor.plan_many(facts, hp, on_step=on_step)
        checkpoint()
        results = editor.evaluate_many(facts, hp, plans)
        for r in results:
            r.metrics.update(mode=mode, memit_pass=False)
        return results
    layers = [hp.layer] if hp.method == "rome" else window(hp, editor.n_layers)
    steps = itertools.chain([on_step], itertools.repeat(_only_checkpoint))  # pruner values from the first only
    step_fn = functools.partial(next, steps)

    t0 = time.perf_counter()
    with _scratch(editor, layers) as scratch:
        if mode == "independent":
            results = _independent(editor, facts, hp, scratch, step_fn)
        else:
            results = _accumulated(editor, facts, hp, scratch, step_fn, sequential=mode == "sequential")
    seconds = (time.perf_counter() - t0) / len(facts)
    for r in results:
        r.metrics["mode"] = mode
        r.timings = {"edit": seconds}
    return results


BATCH_KEY = ("layer", "fact_token", "seed", "context_templates", "context_template_length_params",
             "mom2_adjustment", "mom2_n_tokens", "mom2_ridge", "key_mode")
"""What settings must share for their edits to run in one batch (``run_trials``)."""


def batch_key(hp: EditHParams, mode: str) -> tuple | None:
    """Settings with the same key run together in ``run_trials``; ``None``: this one runs alone
    (MEMIT, the hybrid, batch and sequential modes write several updates per setting)."""
    if hp.method != "rome" or mode != "independent":
        return None
    return tuple(getattr(hp, name) for name in BATCH_KEY)


def run_trials(editor: Editor, facts: Sequence[Any], hps: Sequence[EditHParams], *,
               on_step: Callable[[int, list[float]], Any] | None = None,
               skip: Callable[[], set[int]] = set) -> list[list[EditResult] | None]:
    """``run_edits(editor, facts, hp, "independent")`` for every setting of ``hps`` (one
    ``batch_key``) at once: all their v* in one optimisation, all their edits scored in the same
    batches; each setting's results are those it gets alone. ``on_step`` as in
    ``Editor.plan_trials``; ``skip()``, asked after the optimisation, names settings not to
    score (pruned trials): ``None`` in their place."""
    keys = {batch_key(hp, "independent") for hp in hps}
    if None in keys or len(keys) != 1:
        raise ConfigError("run_trials: settings of one batch must be ROME edits sharing " + ", ".join(BATCH_KEY))
    plans = editor.plan_trials(facts, hps, on_step=on_step)
    checkpoint()
    dropped = skip()
    kept = [i for i in range(len(hps)) if i not in dropped]
    out: list[list[EditResult] | None] = [None] * len(hps)
    if kept:
        scored = editor.evaluate_trials(facts, [hps[i] for i in kept], [plans[i] for i in kept])
        for i, results in zip(kept, scored):
            for r in results:
                r.metrics.update(mode="independent", memit_pass=False)
            out[i] = results
    return out


def _rome_deltas(editor: Editor, facts: Sequence[Any], hp: EditHParams,
                 on_step: OnStep | None) -> tuple[list[torch.Tensor], list[VResult], list[float]]:
    plans = editor.plan_many(facts, hp, on_step=on_step)
    return [p.delta_w for p in plans], [p.v for p in plans], [p.division_factor for p in plans]


def _independent(editor: Editor, facts: Sequence[Any], hp: EditHParams, scratch: _Scratch,
                 step_fn: Callable[[], OnStep | None]) -> list[EditResult]:
    """memit / hybrid, each fact alone on the original weights."""
    results = []
    if hp.method == "hybrid":  # ROME for all facts at once (each scored alone), MEMIT for the short ones
        plans = editor.plan_many(facts, hp, on_step=step_fn())
        first = editor.evaluate_many(  # a short fact is scored once, after its MEMIT pass
            facts, hp, plans, keep=lambda i, post: not _short(hp, float(post["rewrite"]["p_new"][0]), plans[i].v))
        for fact, plan, res in zip(facts, plans, first):
            if res is not None:
                res.metrics["memit_pass"] = False
                results.append(res)
                continue
            checkpoint()
            scratch.add({hp.layer: plan.delta_w})
            mp = _memit(editor, [fact], hp, step_fn())
            scratch.add(mp.deltas)
            results.append(_score(editor, [fact], hp, scratch, [plan.v], [plan.division_factor],
                                  memit_pass=[True])[0])
            scratch.reset()
        return results
    for fact in facts:  # memit
        checkpoint()
        mp = _memit(editor, [fact], hp, step_fn())
        scratch.add(mp.deltas)
        results.append(_score(editor, [fact], hp, scratch, mp.vs, [None])[0])
        scratch.reset()
    return results


def _accumulated(editor: Editor, facts: Sequence[Any], hp: EditHParams, scratch: _Scratch,
                 step_fn: Callable[[], OnStep | None], *, sequential: bool) -> list[EditResult]:
    """batch: every fact written at once; sequential: one after another on the edited model."""
    groups = [[f] for f in facts] if sequential else [list(facts)]
    vs: list[VResult] = []
    divisions: list[float | None] = []
    passes: list[bool] = []
    at_edit: list[dict[str, Any]] = []
    for group in groups:
        checkpoint()
        if hp.method == "memit":
            mp = _memit(editor, group, hp, step_fn())
            scratch.add(mp.deltas)
            vs += mp.vs
            divisions += [None] * len(group)
            passes += [True] * len(group)
        else:
            deltas, gvs, gdiv = _rome_deltas(editor, group, hp, step_fn())
            scratch.add({hp.layer: torch.stack([d.double() for d in deltas]).sum(0)})
            vs += gvs
            divisions += gdiv
            short = []
            if hp.method == "hybrid":
                probs = [s["rewrite"]["p_new"][0] for s in score_facts(editor.model, editor.tok, editor.adapter,
                                                                         group)]
                short = [i for i, (p, v) in enumerate(zip(probs, gvs)) if _short(hp, float(p), v)]
                if short:
                    checkpoint()
                    mp = _memit(editor, [group[i] for i in short], hp, step_fn())
                    scratch.add(mp.deltas)
            passes += [i in short for i in range(len(group))]
        if sequential:
            post = score_facts(editor.model, editor.tok, editor.adapter, group)[0]
            at_edit.append({"prob_at_edit": float(post["rewrite"]["p_new"][0]),
                            "efficacy_at_edit": float(post["rewrite"]["lp_new"][0] > post["rewrite"]["lp_true"][0])})
    checkpoint()
    results = _score(editor, facts, hp, scratch, vs, divisions, memit_pass=passes)
    for r, extra in zip(results, at_edit):
        r.metrics.update(extra)
    return results


def _score(editor: Editor, facts: Sequence[Any], hp: EditHParams, scratch: _Scratch, vs: Sequence[VResult],
           divisions: Sequence[float | None], memit_pass: Sequence[bool] | None = None) -> list[EditResult]:
    """Score ``facts`` on the model as it is now (the scratch's updates applied)."""
    pres = [editor.pre_scores(f) for f in facts]
    posts = score_facts(editor.model, editor.tok, editor.adapter, facts)
    entropies = generation_entropies(editor.model, editor.tok, editor.adapter, [fluency_prompts(f) for f in facts])
    norm = scratch.update_norm()
    templates = editor.context_templates(hp)
    out = []
    for i, (fact, v, div, pre, post, ent) in enumerate(zip(facts, vs, divisions, pres, posts, entropies)):
        res = editor.result(fact, hp, v, pre, post, ent, norm, division_factor=div, templates=templates, timings={})
        res.metrics["memit_pass"] = bool(memit_pass[i]) if memit_pass else hp.method == "memit"
        out.append(res)
    return out
