"""``Editor``: a model loaded once, then many ROME edits, each on a clean copy of the weights.

    editor = Editor(model, tok, adapter, fingerprint=fp, stats_texts=corpus)
    result = editor.edit(fact, hp)   # model restored afterwards, bit-exactly
    results = editor.edit_many(facts, hp)   # v* of all facts optimised together, each edit alone
    with editor.edited(fact, hp) as plan:   # the edited model inside the block
        ...
    print(result.metrics["final_prob"], result.metrics["rebound"])

Context templates, covariance statistics and pre-edit scores are cached per editor: they do
not depend on the hyperparameters a trial varies (or only on the layer)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tuner.errors import ConfigError
from tuner.facts.schema import Fact
from tuner.hparams import EditHParams
from tuner.metrics.counterfact import edit_metrics, score_fact, score_facts
from tuner.metrics.fluency import DisablingRule, fluency_prompts, generation_entropies, generation_entropy
from tuner.metrics.record import EditMetrics
from tuner.metrics.row_updates import RowUpdates
from tuner.metrics.stability import stability_metrics
from tuner.paths import storage_root
from tuner.plumbing.adapters import Adapter
from tuner.plumbing.module_io import module_output, rewrite_weight
from tuner.plumbing.tokens import target_token_ids
from tuner.rome import rank_one
from tuner.rome.compute_v import VRequest, VResult, compute_vs
from tuner.rome.context import context_templates
from tuner.rome.layer_stats import second_moment


@dataclass
class EditResult:
    case_id: int
    hparams: EditHParams
    metrics: EditMetrics  # every key declared in tuner.metrics.record
    trajectory: dict[str, list[float]]
    timings: dict[str, float] = field(default_factory=dict)
    context_templates: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (``tuner edit --json``)."""
        return {"case_id": self.case_id, "hparams": self.hparams.to_dict(), "metrics": self.metrics,
                "trajectory": self.trajectory, "timings": self.timings, "context_templates": self.context_templates}


@dataclass
class EditPlan:
    """Everything an edit needs, computed before any weight is touched."""

    delta_w: torch.Tensor  # (d_model, d_ff)
    u: torch.Tensor  # (d_ff,) unit vector ∝ C⁻¹k*
    key: torch.Tensor  # (d_ff,) the key Λ is computed at (bare prompt's; k* with key_mode r-rome)
    v_star: torch.Tensor  # (d_model,) the output the rewrite module gives for ``key`` after the edit
    v: VResult
    templates: list[str]
    timings: dict[str, float]

    @property
    def division_factor(self) -> float:
        """uᵀk: Λ = (v* − Wk)/(uᵀk) explodes when it is tiny."""
        return float(torch.dot(self.u.double(), self.key.double()))


class Editor:
    def __init__(
        self,
        model: Any,
        tok: Any,
        adapter: Adapter,
        *,
        fingerprint: str,
        stats_texts: Sequence[str],
        stats_root: Path | None = None,
        progress: bool = True,
        max_facts_per_chunk: int | None = None,
        stats_layers: Sequence[int] = (),
        disabling: DisablingRule = DisablingRule(),
    ) -> None:
        model.eval()
        model.requires_grad_(False)  # only δ is optimised
        self.model, self.tok, self.adapter = model, tok, adapter
        self.n_layers = adapter.n_layers(model.config)
        self.fingerprint = fingerprint
        self.stats_texts = list(stats_texts)
        self.stats_root = stats_root or storage_root()
        self.progress = progress
        self.stats_layers = [layer for layer in stats_layers if 0 <= layer < self.n_layers]
        self.max_facts_per_chunk = max_facts_per_chunk  # None: all facts in one forward pass (OOM halves it)
        self.disabling = disabling  # the study's thresholds for ``disabling_edit``
        self._contexts: dict[tuple, list[str]] = {}
        self._solvers: dict[tuple[int, int, float], rank_one.SecondMomentSolver] = {}
        self._pre: dict[Fact, dict[str, Any]] = {}

    # -- cached inputs -------------------------------------------------------------------
    def check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise ConfigError(
                f"hparams.layer {layer} is out of range: the model has {self.n_layers} layers (0-{self.n_layers - 1})"
            )

    def context_templates(self, hp: EditHParams) -> list[str]:
        key = (hp.seed, hp.context_templates, hp.context_template_length_params)
        if key not in self._contexts:
            self._contexts[key] = context_templates(self.model, self.tok, hp.context_templates,
                                                    hp.context_template_length_params, seed=hp.seed)
        return self._contexts[key]

    def mom2(self, layer: int, n_tokens: int) -> torch.Tensor:
        """C = E[kkᵀ] at ``layer`` over ``n_tokens`` tokens of the statistics corpus (cached on
        disk). The first call computes every layer in ``stats_layers`` too, in the same pass."""
        if not self.stats_texts:
            raise ConfigError(
                "mom2_adjustment needs a statistics corpus: set model.stats_corpus in the study "
                "YAML (a text file, one document per line) or set hparams.mom2_adjustment: false"
            )
        return second_moment(
            self.model, self.tok, self.adapter, layer, self.stats_texts, n_samples=n_tokens,
            fingerprint=self.fingerprint, root=self.stats_root, also=self.stats_layers, progress=self.progress,
        ).to(next(self.model.parameters()).device)

    def solver(self, hp: EditHParams) -> rank_one.SecondMomentSolver | None:
        """C factorised once per (layer, tokens, ridge); ``None`` without mom2_adjustment."""
        if not hp.mom2_adjustment:
            return None
        key = (hp.layer, hp.mom2_n_tokens, hp.mom2_ridge)
        if key not in self._solvers:
            self._solvers[key] = rank_one.SecondMomentSolver(self.mom2(hp.layer, hp.mom2_n_tokens), hp.mom2_ridge)
        return self._solvers[key]

    def pre_scores(self, fact: Fact) -> dict[str, Any]:
        """Scores and generation entropy of the unedited model (they do not depend on hparams)."""
        if fact not in self._pre:
            self._pre[fact] = {
                "scores": score_fact(self.model, self.tok, self.adapter, fact),
                "gen_entropy": generation_entropy(self.model, self.tok, self.adapter, fluency_prompts(fact)),
            }
        return self._pre[fact]

    def requests(self, facts: Sequence[Fact]) -> list[VRequest]:
        """What v* is optimised for, per fact: its prompt, subject and new target's token ids."""
        return [VRequest(f.prompt, f.subject, tuple(target_token_ids(self.tok, f.rewrite_prompt, f.target_new)))
                for f in facts]

    # -- the edit ------------------------------------------------------------------------
    def plan(self, fact: Fact, hp: EditHParams) -> EditPlan:
        return self.plan_many([fact], hp)[0]

    def plan_many(self, facts: Sequence[Fact], hp: EditHParams, *,
                  on_step: Callable[[int, list[float]], None] | None = None) -> list[EditPlan]:
        """One plan per fact; v* of all of them optimised in one batch (``compute_vs``).
        Shared work (statistics, v*, the left vectors) is timed once and split evenly over the
        facts. ``plan_trials`` with one setting."""
        return self.plan_trials(facts, [hp], on_step=on_step)[0]

    def plan_trials(self, facts: Sequence[Fact], hps: Sequence[EditHParams], *,
                    on_step: Callable[[int, list[float]], Any] | None = None) -> list[list[EditPlan]]:
        """The plans of several settings at one layer (a worker's batch of trials): the v*
        of every (setting, fact) pair optimised in one batch, each setting with its own knobs
        (``compute_vs(knobs=...)``); ``on_step`` sees every pair's P(new), setting by setting,
        and may return pairs to stop (index ``setting * len(facts) + fact``). One list of plans
        per setting, each what ``plan_many(facts, hp)`` gives."""
        hp0 = hps[0]
        self.check_layer(hp0.layer)
        shared = [(h.layer, h.mom2_adjustment, h.mom2_n_tokens, h.mom2_ridge, h.key_mode) for h in hps]
        if len(set(shared)) != 1:
            raise ValueError("plan_trials: the settings must share the layer, the statistics and the key mode")
        n = len(facts) * len(hps)
        t0 = time.perf_counter()
        solver = self.solver(hp0)
        templates = self.context_templates(hp0)
        t_stats = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        requests = self.requests(facts)
        vs = compute_vs(self.model, self.tok, self.adapter, hp0, requests * len(hps), templates,
                        max_facts_per_chunk=self.max_facts_per_chunk, on_step=on_step,
                        knobs=[h for h in hps for _ in facts])
        t_v = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        keys = [v.k_star for v in vs[:len(facts)]]  # k* depends on the layer only: the first setting's rows
        us = [rank_one.left_vector(k, solver) for k in keys]
        t_k = (time.perf_counter() - t0) / n
        out = []
        for i, hp in enumerate(hps):
            plans = []
            for j, (k_star, u) in enumerate(zip(keys, us)):
                t0 = time.perf_counter()
                plan = self._plan(hp, vs[i * len(facts) + j], u, k_star, templates)
                plan.timings.update(stats=t_stats, k_star=t_k, v_star=t_v, update=time.perf_counter() - t0)
                plans.append(plan)
            out.append(plans)
        return out

    def _plan(self, hp: EditHParams, v: VResult, u: torch.Tensor, k_star: torch.Tensor,
              templates: list[str]) -> EditPlan:
        """The rank-one update that writes ``v`` (ROME's key, or k* with key_mode r-rome)."""
        key, value, v_star = v.key, v.value_init, v.v_star
        if hp.key_mode == "r-rome":  # the same key in u and Λ: Ŵk* = W k* + δ
            key = k_star
            value = module_output(self.model, self.adapter, hp.layer, k_star)
            v_star = value + (v.v_star - v.value_init)
        return EditPlan(rank_one.rank_one_delta(u, key, value, v_star), u, key, v_star, v, templates, {})

    def evaluate_trials(self, facts: Sequence[Fact], hps: Sequence[EditHParams],
                        plans: Sequence[Sequence[EditPlan]]) -> list[list[EditResult]]:
        """``evaluate_many`` for several settings' plans at one layer, every edit in the same
        shared batches (each row under its own rank-one update)."""
        flat = [p for ps in plans for p in ps]
        results = self.evaluate_many(list(facts) * len(hps), hps[0], flat)
        out = []
        for i, hp in enumerate(hps):
            mine = results[i * len(facts):(i + 1) * len(facts)]
            for r in mine:
                r.hparams = hp
            out.append(mine)
        return out

    @contextmanager
    def edited(self, fact: Fact, hp: EditHParams) -> Iterator[EditPlan]:
        """The model with the edit applied inside the block; the original weights after it."""
        plan = self.plan(fact, hp)
        t0 = time.perf_counter()
        with rank_one.weight_update(self.model, self.adapter, hp.layer, plan.delta_w):
            plan.timings["update"] += time.perf_counter() - t0
            yield plan

    def edit(self, fact: Fact, hp: EditHParams) -> EditResult:
        return self.edit_many([fact], hp)[0]

    def edit_many(self, facts: Sequence[Fact], hp: EditHParams, *,
                  on_step: Callable[[int, list[float]], None] | None = None) -> list[EditResult]:
        """Each fact edited alone on the original weights and scored; their v* are optimised
        together. ``on_step(step, probs)`` runs after every forward pass of the optimisation
        (``compute_vs``)."""
        return self.evaluate_many(facts, hp, self.plan_many(facts, hp, on_step=on_step))

    def evaluate_many(self, facts: Sequence[Fact], hp: EditHParams, plans: Sequence[EditPlan], *,
                      keep: Callable[[int, dict[str, Any]], bool] | None = None) -> list[EditResult | None]:
        """``evaluate`` for every fact at once: each batch row sees its own fact's rank-one
        update (``RowUpdates``), so K edits are scored in the batches of one. ``keep(i, post)``
        (the hybrid's test on fact i's scores): only the kept facts get their fluency measured and
        a result; the others are ``None``."""
        pres = [self.pre_scores(f) for f in facts]
        t0 = time.perf_counter()
        posts = score_facts(self.model, self.tok, self.adapter, facts, edits=self._row_updates(hp, plans))
        kept = [i for i, post in enumerate(posts) if keep is None or keep(i, post)]
        entropies = dict(zip(kept, generation_entropies(
            self.model, self.tok, self.adapter, [fluency_prompts(facts[i]) for i in kept],
            edits=self._row_updates(hp, [plans[i] for i in kept])))) if kept else {}
        t_eval = (time.perf_counter() - t0) / len(facts)
        weight_norm = rewrite_weight(self.model, self.adapter, hp.layer).detach().double().norm()
        results: list[EditResult | None] = [None] * len(facts)
        for i in kept:
            plans[i].timings["eval"] = t_eval
            results[i] = self._result(facts[i], hp, plans[i], pres[i], posts[i], entropies[i],
                                      float(plans[i].delta_w.norm() / weight_norm))
        return results

    def _row_updates(self, hp: EditHParams, plans: Sequence[EditPlan]) -> RowUpdates:
        lams = torch.stack([rank_one.lambda_of(p.delta_w, p.u) for p in plans])
        return RowUpdates(self.model, self.adapter, hp.layer, lams, torch.stack([p.u for p in plans]))

    def evaluate(self, fact: Fact, hp: EditHParams, plan: EditPlan) -> EditResult:
        """Apply ``plan``, score the edited model, restore the weights."""
        pre = self.pre_scores(fact)
        t0 = time.perf_counter()
        with rank_one.weight_update(self.model, self.adapter, hp.layer, plan.delta_w):
            plan.timings["update"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            post = score_fact(self.model, self.tok, self.adapter, fact)
            entropy = generation_entropy(self.model, self.tok, self.adapter, fluency_prompts(fact))
            plan.timings["eval"] = time.perf_counter() - t0
        weight = rewrite_weight(self.model, self.adapter, hp.layer)
        update_norm = float(plan.delta_w.norm() / weight.detach().double().norm())
        return self._result(fact, hp, plan, pre, post, entropy, update_norm)

    def _result(self, fact: Fact, hp: EditHParams, plan: EditPlan, pre: dict[str, Any], post: dict[str, Any],
                entropy: float, update_norm: float) -> EditResult:
        return self.result(fact, hp, plan.v, pre, post, entropy, update_norm, division_factor=plan.division_factor,
                           templates=plan.templates, timings=plan.timings)

    def result(self, fact: Fact, hp: EditHParams, v: VResult, pre: dict[str, Any], post: dict[str, Any],
               entropy: float, update_norm: float, *, division_factor: float | None, templates: list[str],
               timings: dict[str, float]) -> EditResult:
        """An edit's metrics from its scores before (``pre_scores``) and after, its optimisation
        and the size of the update (``tuner.edit.modes`` builds them for every method and mode)."""
        metrics: EditMetrics = {**edit_metrics(pre["scores"], post), **stability_metrics(v.trajectory, v.selected_step),
                   "early_stopped": v.early_stopped, "update_norm": update_norm,
                   "division_factor": division_factor, "gen_entropy_pre": pre["gen_entropy"],
                   "gen_entropy": entropy, "gen_entropy_drop": pre["gen_entropy"] - entropy}
        metrics["disabling_edit"] = self.disabling(metrics)
        return EditResult(fact.case_id, hp, metrics, v.trajectory, timings, templates)
