"""ROME's algebraic invariants on a tiny random model of every supported family."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.conftest import FAMILIES
from tuner.errors import ConfigError, EditError
from tuner.hparams import EditHParams
from tuner.plumbing.hooks import get_module
from tuner.plumbing.module_io import module_io_at

HP = EditHParams(layer=1, v_num_grad_steps=6, v_lr=0.5, v_weight_decay=0.01, mom2_n_tokens=600,
                     context_template_length_params=((3, 3),))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("model_type", FAMILIES)
def test_update_maps_key_to_v_star_and_restores_bit_exactly(tiny_editor, facts, model_type):
    ed = tiny_editor(model_type)
    fact = facts[0]
    before = _state(ed.model)
    with ed.edited(fact, HP) as plan:
        _, out = module_io_at(ed.model, ed.tok, ed.adapter, HP.layer, [fact.rewrite_prompt], fact.subject, "subject_last")
        rel = (out[0] - plan.v_star).norm() / plan.v_star.norm()
        assert rel < 1e-4
        assert not torch.equal(get_module(ed.model, ed.adapter.rewrite.format(HP.layer)).weight,
                               before[ed.adapter.rewrite.format(HP.layer) + ".weight"])
    after = _state(ed.model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len(plan.v.trajectory["loss"]) == HP.v_num_grad_steps
    assert all(len(v) == HP.v_num_grad_steps for v in plan.v.trajectory.values())


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_mom2_update_leaves_c_inverse_orthogonal_keys_unchanged(tiny_editor, facts, model_type):
    """ROME's guarantee: a key k' with k'ᵀ C⁻¹ k* = 0 keeps its output. k' is built here from C
    and k* alone (not from the plan's u), and is far from orthogonal to k*: were C⁻¹ dropped
    (u ∝ k*), the edit would move its output and this test would fail."""
    from tuner.rome.compute_k import compute_k

    hp = HP.replace(mom2_ridge=0.0)  # u ∝ C⁻¹k* exactly
    ed = tiny_editor(model_type)
    fact = facts[1]
    module = get_module(ed.model, ed.adapter.rewrite.format(hp.layer))
    c = ed.mom2(hp.layer, hp.mom2_n_tokens).double()
    k_star = compute_k(ed.model, ed.tok, ed.adapter, hp.layer, fact.prompt, fact.subject,
                       ed.context_templates(hp), hp.fact_token).double()
    c_inv_k = torch.linalg.solve(c, k_star)
    torch.manual_seed(1)
    r = torch.randn_like(k_star) * k_star.norm()
    k_other = r - (r @ c_inv_k) / (k_star @ c_inv_k) * k_star  # k_otherᵀ C⁻¹ k* = 0
    assert abs(k_other @ k_star) / (k_other.norm() * k_star.norm()) > 0.05  # not Euclidean-orthogonal to k*
    k_other = k_other.float()[None]
    fact_key = ed.plan(fact, hp).key[None]  # the bare prompt's key
    with torch.no_grad():
        plain, plain_bare = module(k_other), module(fact_key)
    with ed.edited(fact, hp), torch.no_grad():
        edited, edited_bare = module(k_other), module(fact_key)
    scale = plain.norm()
    assert (edited - plain).norm() / scale < 1e-4
    assert (edited_bare - plain_bare).norm() / plain_bare.norm() > 1e-2  # the fact's own key does move


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_weights_restored_when_the_edit_raises(tiny_editor, facts, model_type):
    ed = tiny_editor(model_type)
    before = _state(ed.model)
    with pytest.raises(RuntimeError, match="boom"):
        with ed.edited(facts[2], HP):
            raise RuntimeError("boom")
    after = _state(ed.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("model_type", ["llama", "gpt_neox", "gpt2"])
def test_left_padded_batch_equals_one_by_one(tiny_editor, facts, model_type):
    """Keys and v* from a left-padded batch of prompts of different lengths match running
    each prompt alone / a right-padded batch."""
    ed = tiny_editor(model_type)
    fact = facts[3]
    prompts = [fact.rewrite_prompt, "The job of Someone is a pilot . " + fact.rewrite_prompt,
               "x . y . z . w . " + fact.rewrite_prompt]
    batched, _ = module_io_at(ed.model, ed.tok, ed.adapter, HP.layer, prompts, fact.subject, "subject_last")
    for i, p in enumerate(prompts):
        alone, _ = module_io_at(ed.model, ed.tok, ed.adapter, HP.layer, [p], fact.subject, "subject_last")
        assert torch.allclose(batched[i], alone[0], atol=1e-4), i
    left = ed.plan(fact, HP).v_star
    right_adapter = dataclasses.replace(ed.adapter, padding_side="right")
    ed_right = type(ed)(ed.model, ed.tok, right_adapter, fingerprint=ed.fingerprint, stats_texts=ed.stats_texts,
                        stats_root=ed.stats_root, progress=False)
    right = ed_right.plan(fact, HP).v_star
    assert torch.allclose(left, right, atol=1e-4)


def test_batched_scores_equal_single_scores(tiny_editor, facts):
    from tuner.metrics.counterfact import target_logprobs

    ed = tiny_editor("llama")
    pairs = [(p, facts[4].target_new) for p in (facts[4].rewrite_prompt, *facts[4].neighborhood_prompts)]
    batched, _ = target_logprobs(ed.model, ed.tok, ed.adapter, pairs)
    single = torch.cat([target_logprobs(ed.model, ed.tok, ed.adapter, [p])[0] for p in pairs])
    assert torch.allclose(batched, single, atol=1e-4)


def test_layer_out_of_range_is_a_config_error(tiny_editor, facts):
    ed = tiny_editor("llama")
    with pytest.raises(ConfigError, match="out of range"):
        ed.edit(facts[0], HP.replace(layer=99))


def test_subject_not_in_prompt_is_an_edit_error(tiny_tok):
    from tuner.plumbing.tokens import subject_token_index

    with pytest.raises(EditError, match="not found in prompt"):
        subject_token_index(tiny_tok, "Someone Else speaks the language", "Nobody Atall", "subject_last")


def test_unknown_architecture_is_named():
    from transformers import OPTConfig

    from tuner.errors import ArchitectureError
    from tuner.plumbing.adapters import detect_adapter

    with pytest.raises(ArchitectureError, match="unknown architecture 'opt'"):
        detect_adapter(OPTConfig())


def test_stats_cache_is_reused_and_atomic(tiny_editor, tmp_path, stats_texts):
    from tuner.rome.layer_stats import second_moment

    ed = tiny_editor("llama")
    kw = dict(n_samples=300, fingerprint="fp", root=tmp_path, progress=False)
    c1 = second_moment(ed.model, ed.tok, ed.adapter, 0, stats_texts, **kw)
    files = list((tmp_path / "stats").rglob("*.safetensors"))
    assert len(files) == 1 and not list((tmp_path / "stats").rglob("*.tmp"))
    mtime = files[0].stat().st_mtime_ns
    c2 = second_moment(ed.model, ed.tok, ed.adapter, 0, stats_texts, **kw)
    assert torch.equal(c1, c2) and files[0].stat().st_mtime_ns == mtime
    assert torch.allclose(c1, c1.T) and torch.linalg.eigvalsh(c1.double()).min() > -1e-6
