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
from tuner.rome.compute_v import compute_v
from tuner.rome.context import sample_context_templates
from tuner.rome.evaluate import edit_metrics, score_fact, stability_metrics
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

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (``tuner edit --json``)."""
        return {"case_id": self.case_id, "hparams": self.hparams.to_dict(), "metrics": self.metrics,
                "trajectory": self.trajectory, "timings": self.timings}


@dataclass
class EditPlan:
    """Everything an edit needs, computed before any weight is touched."""

    delta_w: torch.Tensor  # (d_model, d_ff)
    u: torch.Tensor  # (d_ff,)
    key: torch.Tensor  # (d_ff,)
    v_star: torch.Tensor  # (d_model,)
    trajectory: dict[str, list[float]]
    opt_final_prob: float  # mean target probability over the context prompts with the final δ
    early_stopped: bool
    timings: dict[str, float]


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
        self._mom2: dict[tuple[int, int], torch.Tensor] = {}
        self._pre: dict[Fact, dict[str, Any]] = {}

    # -- cached inputs -------------------------------------------------------------------
    def check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise ConfigError(
                f"hparams.layer {layer} is out of range: the model has {self.n_layers} layers (0-{self.n_layers - 1})"
            )

    def context_templates(self, hp: ROMEHyperParams) -> list[str]:
        key = (hp.seed, hp.context_template_length_params)
        if key not in self._contexts:
            self._contexts[key] = sample_context_templates(
                self.model, self.tok, hp.context_template_length_params, seed=hp.seed
            )
        return self._contexts[key]

    def mom2(self, layer: int, n_samples: int) -> torch.Tensor:
        key = (layer, n_samples)
        if not self.stats_texts:
            raise ConfigError(
                "mom2_adjustment needs a statistics corpus: set model.stats_corpus in the study "
                "YAML (a text file, one document per line) or set hparams.mom2_adjustment: false"
            )
        if key not in self._mom2:
            self._mom2[key] = second_moment(
                self.model, self.tok, self.adapter, layer, self.stats_texts,
                n_samples=n_samples, fingerprint=self.fingerprint, root=self.stats_root,
                progress=self.progress,
            ).to(next(self.model.parameters()).device)
        return self._mom2[key]

    def pre_scores(self, fact: Fact) -> dict[str, Any]:
        if fact not in self._pre:
            self._pre[fact] = score_fact(self.model, self.tok, self.adapter, fact)
        return self._pre[fact]

    # -- the edit ------------------------------------------------------------------------
    def plan(self, fact: Fact, hp: ROMEHyperParams) -> EditPlan:
        self.check_layer(hp.layer)
        timings = {}
        t0 = time.perf_counter()
        mom2 = self.mom2(hp.layer, hp.mom2_n_samples) if hp.mom2_adjustment else None
        contexts = self.context_templates(hp)
        timings["stats"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        k_star = compute_k(self.model, self.tok, self.adapter, hp.layer, fact.prompt, fact.subject, contexts, hp.fact_token)
        u = rank_one.left_vector(k_star, mom2, hp.mom2_ridge)
        timings["k_star"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        target = target_token_ids(self.tok, fact.rewrite_prompt, fact.target_new)
        v = compute_v(self.model, self.tok, self.adapter, hp, fact.prompt, fact.subject, target, contexts)
        timings["v_star"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        delta_w = rank_one.rank_one_delta(u, v.key, v.value_init, v.v_star)
        timings["update"] = time.perf_counter() - t0
        return EditPlan(delta_w, u, v.key, v.v_star, v.trajectory, v.opt_final_prob, v.early_stopped, timings)

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
            plan.timings["eval"] = time.perf_counter() - t0
        metrics = {**edit_metrics(pre, post), **stability_metrics(plan.trajectory, plan.opt_final_prob),
                   "early_stopped": plan.early_stopped}
        return EditResult(fact.case_id, hp, metrics, plan.trajectory, plan.timings)
