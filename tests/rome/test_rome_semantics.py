"""ROME's step semantics, v_select, r-ROME keys and the collapse metrics."""

from __future__ import annotations

import pytest
import torch

from tests.rome.reference_rome import reference_v_star
from tuner.hparams import EditHParams

HP = EditHParams(layer=1, v_num_grad_steps=8, v_lr=0.5, v_weight_decay=0.01, kl_factor=0.0625,
                     mom2_adjustment=False, context_template_length_params=((3, 3),))


def engine_and_reference(ed, fact, hp):
    from tuner.plumbing.tokens import target_token_ids
    from tuner.rome.compute_v import compute_v

    templates = ed.context_templates(hp)
    target = target_token_ids(ed.tok, fact.rewrite_prompt, fact.target_new)
    v = compute_v(ed.model, ed.tok, ed.adapter, hp, fact.prompt, fact.subject, target, templates)
    ref, forwards = reference_v_star(ed.model, ed.tok, ed.adapter.rewrite.format(hp.layer), ed.adapter.seq_first, hp,
                                     fact.prompt, fact.subject, fact.target_new, templates)
    return v, ref, forwards


def assert_engine_is_rome(ed, fact, hp):
    """v* to 1e-5 and the same number of forward passes, without and with an early stop."""
    v, ref, forwards = engine_and_reference(ed, fact, hp.replace(early_stop_loss=None))
    assert len(v.trajectory["loss"]) == forwards == hp.v_num_grad_steps
    assert (v.v_star - ref).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max())), (v.v_star - ref).abs().max()
    # an early stop halfway: the threshold just above the 4th loss
    losses = v.trajectory["loss"]
    threshold = losses[3] * 1.000001
    stop_at = next(i for i, loss in enumerate(losses) if loss < threshold)
    v2, ref2, forwards2 = engine_and_reference(ed, fact, hp.replace(early_stop_loss=threshold))
    assert v2.early_stopped and len(v2.trajectory["loss"]) == forwards2 == stop_at + 1
    assert (v2.v_star - ref2).abs().max() <= 1e-5 * max(1.0, float(ref2.abs().max()))


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_engine_equals_a_plain_rome_loop(tiny_editor, facts, model_type):
    ed = tiny_editor(model_type)
    assert ed.tok.padding_side == "left"  # the engine batches left-padded rows
    assert_engine_is_rome(ed, facts[5], HP)


def test_last_step_takes_no_optimiser_step(tiny_editor, facts):
    """N forward passes: the last recorded δ norm is the one v* uses (no step after it)."""
    ed = tiny_editor("llama")
    from tuner.plumbing.tokens import target_token_ids
    from tuner.rome.compute_v import compute_v

    hp = HP.replace(early_stop_loss=None, v_num_grad_steps=5, v_lr=0.05, clamp_norm_factor=100.0)  # no clamping
    target = target_token_ids(ed.tok, facts[0].rewrite_prompt, facts[0].target_new)
    v = compute_v(ed.model, ed.tok, ed.adapter, hp, facts[0].prompt, facts[0].subject, target, ed.context_templates(hp))
    assert len(v.trajectory["loss"]) == 5 and v.selected_step == 4
    assert (v.v_star - v.value_init).norm().item() == pytest.approx(v.trajectory["delta_norm"][-1], rel=1e-5)
    assert v.trajectory["delta_norm"][0] == 0.0


@pytest.mark.slow
def test_v_select_best_returns_the_peak_iterate(default_model, facts):
    """On the rebound setting the last iterate falls back; ``best`` keeps the peak. The fact is
    the one of the first 12 that rebounds most (which one depends on the built model)."""
    ed = default_model.editor(progress=False)
    hp = EditHParams(layer=0, v_lr=2.0, v_weight_decay=3.0, v_num_grad_steps=40, kl_factor=0.01,
                         clamp_norm_factor=12.0)
    fact = max(facts[:12], key=lambda f: ed.edit(f, hp).metrics["rebound"])
    last = ed.edit(fact, hp)
    best = ed.edit(fact, hp.replace(v_select="best"))
    probs = best.trajectory["prob"]
    assert best.metrics["selected_step"] == probs.index(max(probs))
    assert best.metrics["opt_final_prob"] == max(probs) and best.metrics["rebound"] == 0.0
    assert last.metrics["rebound"] > 0.1  # the peak-then-fall this knob remedies
    assert best.metrics["final_prob"] > last.metrics["final_prob"]


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_r_rome_maps_k_star_to_v_star(tiny_editor, facts, model_type):
    from tuner.plumbing.hooks import get_module
    from tuner.rome.compute_k import compute_k

    ed = tiny_editor(model_type)
    hp = HP.replace(key_mode="r-rome", mom2_adjustment=True, mom2_n_tokens=600)
    fact = facts[2]
    k_star = compute_k(ed.model, ed.tok, ed.adapter, hp.layer, fact.prompt, fact.subject, ed.context_templates(hp),
                       hp.fact_token)
    module = get_module(ed.model, ed.adapter.rewrite.format(hp.layer))
    with ed.edited(fact, hp) as plan, torch.no_grad():
        out = module(k_star[None])[0]
    assert torch.equal(plan.key, k_star)
    assert (out - plan.v_star).norm() / plan.v_star.norm() < 1e-4
    # ROME's own key mode maps the bare prompt's key instead, so k* misses v*
    with ed.edited(fact, hp.replace(key_mode="rome")) as rome_plan, torch.no_grad():
        out_rome = module(k_star[None])[0]
    assert (out_rome - rome_plan.v_star).norm() / rome_plan.v_star.norm() > 1e-3


@pytest.mark.slow
def test_collapse_metrics_flag_a_destroyed_edit_not_a_good_one(default_model, facts):
    ed = default_model.editor(progress=False)
    good = EditHParams(layer=1, v_num_grad_steps=60, v_lr=0.5, v_weight_decay=1e-3, kl_factor=0.01,
                           clamp_norm_factor=12.0)
    destroyed = good.replace(v_lr=5.0, clamp_norm_factor=1000.0, v_weight_decay=0.0, kl_factor=0.0)
    fact = next(f for f in facts[:8] if ed.edit(f, good).metrics["efficacy"] == 1.0)  # one the good setting edits
    fine = ed.edit(fact, good).metrics
    broken = ed.edit(fact, destroyed).metrics
    for m in (fine, broken):
        assert {"update_norm", "division_factor", "gen_entropy", "gen_entropy_drop", "disabling_edit"} <= set(m)
        assert m["division_factor"] > 0
    assert not fine["disabling_edit"] and fine["efficacy"] == 1.0
    assert broken["disabling_edit"] and broken["update_norm"] > 25 > fine["update_norm"]


def test_context_template_modes(tiny_editor):
    ed = tiny_editor("llama")
    sampled = ed.context_templates(HP)
    easy = ed.context_templates(HP.replace(context_templates="easyedit", context_template_length_params=((4, 10),)))
    explicit = ed.context_templates(HP.replace(context_templates=("A b . {}", "{}")))
    assert sampled[0] == easy[0] == explicit[0] == "{}"
    assert len(sampled) == 1 + 3 and len(easy) == 1 + 10 and explicit == ["{}", "A b . {}"]
    starts = [t.split()[0] for t in easy[1:]]
    assert len(set(starts)) >= 2  # from several start words, two rows each
