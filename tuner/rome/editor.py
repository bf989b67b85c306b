"""``Editor``: a model loaded once, then many ROME edits, each on a clean copy of the weights.

    editor = Editor(model, tok, adapter, fingerprint=fp, stats_texts=corpus)
    result = editor.edit(fact, hp)   # model restored afterwards, bit-exactly
    with editor.edited(fact, hp) as plan:   # the edited model inside the block
        ...
    print(result.metrics["final_prob"], result.metrics["rebound"])

Context templates, covariance statistics and pre-edit scores are cached per editor: they do
not depend on the hyperparameters a trial varies (or only on the layer)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tuner.errors import ConfigError
from tuner.facts.schema import Fact
from tuner.paths import storage_root
from tuner.rome import rank_one
from tuner.rome.adapters import Adapter
from tuner.rome.compute_k import compute_k
from tuner.rome.compute_v import VResult, compute_v
from tuner.rome.context import context_templates
from tuner.rome.evaluate import edit_metrics, score_fact, stability_metrics
from tuner.rome.fluency import fluency_prompts, generation_entropy, is_disabling
from tuner.rome.module_io import module_output
from tuner.rome.hparams import ROMEHyperParams
from tuner.rome.layer_stats import second_moment
from tuner.rome.tokens import target_token_ids


@dataclass
class EditResult:
    case_id: int
    hparams: ROMEHyperParams
    metrics: dict[str, Any]
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
    ) -> None:
        model.eval()
        model.requires_grad_(False)  # only δ is optimised
        self.model, self.tok, self.adapter = model, tok, adapter
        self.fingerprint = fingerprint
        self.stats_texts = list(stats_texts)
        self.stats_root = stats_root or storage_root()
        self.progress = progress
        self.n_layers = adapter.n_layers(model.config)
        self._contexts: dict[tuple, list[str]] = {}
        self._solvers: dict[tuple[int, int, float], rank_one.SecondMomentSolver] = {}
        self._pre: dict[Fact, dict[str, Any]] = {}

    # -- cached inputs -------------------------------------------------------------------
    def check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise ConfigError(
                f"hparams.layer {layer} is out of range: the model has {self.n_layers} layers (0-{self.n_layers - 1})"
            )

    def context_templates(self, hp: ROMEHyperParams) -> list[str]:
        key = (hp.seed, hp.context_templates, hp.context_template_length_params)
        if key not in self._contexts:
            self._contexts[key] = context_templates(self.model, self.tok, hp.context_templates,
                                                    hp.context_template_length_params, seed=hp.seed)
        return self._contexts[key]

    def mom2(self, layer: int, n_tokens: int) -> torch.Tensor:
        """C = E[kkᵀ] at ``layer`` over ``n_tokens`` tokens of the statistics corpus (cached on disk)."""
        if not self.stats_texts:
            raise ConfigError(
                "mom2_adjustment needs a statistics corpus: set model.stats_corpus in the study "
                "YAML (a text file, one document per line) or set hparams.mom2_adjustment: false"
            )
        return second_moment(
            self.model, self.tok, self.adapter, layer, self.stats_texts,
            n_samples=n_tokens, fingerprint=self.fingerprint, root=self.stats_root, progress=self.progress,
        ).to(next(self.model.parameters()).device)

    def solver(self, hp: ROMEHyperParams) -> rank_one.SecondMomentSolver | None:
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

    # -- the edit ------------------------------------------------------------------------
    def plan(self, fact: Fact, hp: ROMEHyperParams) -> EditPlan:
        self.check_layer(hp.layer)
        timings = {}
        t0 = time.perf_counter()
        solver = self.solver(hp)
        templates = self.context_templates(hp)
        timings["stats"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        k_star = compute_k(self.model, self.tok, self.adapter, hp.layer, fact.prompt, fact.subject, templates,
                           hp.fact_token)
        u = rank_one.left_vector(k_star, solver)
        timings["k_star"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        target = target_token_ids(self.tok, fact.rewrite_prompt, fact.target_new)
        v = compute_v(self.model, self.tok, self.adapter, hp, fact.prompt, fact.subject, target, templates)
        timings["v_star"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        key, value, v_star = v.key, v.value_init, v.v_star
        if hp.key_mode == "r-rome":  # the same key in u and Λ: Ŵk* = W k* + δ
            key = k_star
            value = module_output(self.model, self.adapter, hp.layer, k_star)
            v_star = value + (v.v_star - v.value_init)
        delta_w = rank_one.rank_one_delta(u, key, value, v_star)
        timings["update"] = time.perf_counter() - t0
        return EditPlan(delta_w, u, key, v_star, v, templates, timings)

    @contextmanager
    def edited(self, fact: Fact, hp: ROMEHyperParams) -> Iterator[EditPlan]:
        """The model with the edit applied inside the block; the original weights after it."""
        plan = self.plan(fact, hp)
        t0 = time.perf_counter()
        with rank_one.weight_update(self.model, self.adapter, hp.layer, plan.delta_w):
            plan.timings["update"] += time.perf_counter() - t0
            yield plan

    def edit(self, fact: Fact, hp: ROMEHyperParams) -> EditResult:
        pre = self.pre_scores(fact)
        with self.edited(fact, hp) as plan:
            t0 = time.perf_counter()
            post = score_fact(self.model, self.tok, self.adapter, fact)
            entropy = generation_entropy(self.model, self.tok, self.adapter, fluency_prompts(fact))
            plan.timings["eval"] = time.perf_counter() - t0
        weight = rank_one.rewrite_weight(self.model, self.adapter, hp.layer)
        update_norm = float(plan.delta_w.norm() / weight.detach().double().norm())
        metrics = {**edit_metrics(pre["scores"], post), **stability_metrics(plan.v.trajectory, plan.v.selected_step),
                   "early_stopped": plan.v.early_stopped, "update_norm": update_norm,
                   "division_factor": plan.division_factor, "gen_entropy_pre": pre["gen_entropy"],
                   "gen_entropy": entropy, "gen_entropy_drop": pre["gen_entropy"] - entropy}
        metrics["disabling_edit"] = is_disabling(metrics)
        return EditResult(fact.case_id, hp, metrics, plan.v.trajectory, plan.timings, plan.templates)
