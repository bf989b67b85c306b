"""A ChatGLM3-interface model (tests/chatglm/*.py, loaded through trust_remote_code from a temp
directory) edited by the same engine: compatibility fixes, layout, invariants, success rate."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml

from tests.conftest import ROOT, run_cli


@pytest.fixture(scope="module")
def chatglm_dir(kb):
    from tests.chatglm.build import cached_tiny_chatglm

    return cached_tiny_chatglm(kb)


def _study(tmp_path, model_dir, trust=True):
    data = {"name": "glm-tiny", "model": {"name": str(model_dir), "trust_remote_code": trust,
                                           "stats_corpus": str(model_dir / "corpus.txt")},
            "facts": {"path": str(ROOT / "studies/facts/synthetic_edits.json")}}
    path = tmp_path / "glm.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def loaded(chatglm_dir, tmp_path_factory):
    from tuner.study.config import StudyConfig

    return StudyConfig.load(_study(tmp_path_factory.mktemp("cfg"), chatglm_dir)).load_model(device="cpu",
                                                                                         progress=False)


def test_loads_through_the_compatibility_path(chatglm_dir, loaded):
    from tuner.models.remote_compat import load_remote

    assert type(loaded.model).__name__ == "ChatGLMForConditionalGeneration"
    assert loaded.adapter.family == "chatglm" and loaded.adapter.seq_first
    assert loaded.tok.padding_side == "left"
    assert loaded.tok.convert_ids_to_tokens(loaded.tok("x")["input_ids"])[:2] == ["[gMASK]", "<sop>"]
    _, fixes = load_remote(chatglm_dir, dtype=torch.float32)
    assert any("max_length" in f for f in fixes) and any("use_cache" in f for f in fixes)
    assert any("post_init" in f for f in fixes)
    assert "max_length" not in json.loads((chatglm_dir / "config.json").read_text())  # user files untouched


def test_remote_code_needs_explicit_opt_in(chatglm_dir, tmp_path):
    proc = run_cli("edit", "--config", str(_study(tmp_path, chatglm_dir, trust=False)))
    assert proc.returncode == 2 and "set model.trust_remote_code: true" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_invariants_hold(loaded, facts):
    from tuner.hparams import EditHParams
    from tuner.plumbing.module_io import module_io_at

    ed = loaded.editor(progress=False)
    hp = EditHParams(layer=1, v_num_grad_steps=8, mom2_n_tokens=2000)
    before = {k: v.clone() for k, v in ed.model.state_dict().items()}
    fact = facts[0]
    with ed.edited(fact, hp) as plan:
        _, out = module_io_at(ed.model, ed.tok, ed.adapter, 1, [fact.rewrite_prompt], fact.subject, "subject_last")
        assert (out[0] - plan.v_star).norm() / plan.v_star.norm() < 1e-4
    assert all(torch.equal(before[k], v) for k, v in ed.model.state_dict().items())


def test_left_padded_batch_equals_one_at_a_time(loaded, facts):
    from tuner.hparams import EditHParams
    from tuner.plumbing.module_io import module_io_at

    ed = loaded.editor(progress=False)
    fact = facts[5]
    prompts = [fact.rewrite_prompt, "By profession , Someone Else is a pilot . " + fact.rewrite_prompt]
    batched, _ = module_io_at(ed.model, ed.tok, ed.adapter, 2, prompts, fact.subject, "subject_last")
    for i, p in enumerate(prompts):
        alone, _ = module_io_at(ed.model, ed.tok, ed.adapter, 2, [p], fact.subject, "subject_last")
        assert torch.allclose(batched[i], alone[0], atol=1e-4)
    hp = EditHParams(layer=1, v_num_grad_steps=6, mom2_adjustment=False)
    left = ed.plan(fact, hp).v_star
    right_ed = type(ed)(ed.model, ed.tok, dataclasses.replace(ed.adapter, padding_side="right"),
                        fingerprint=ed.fingerprint, stats_texts=ed.stats_texts, stats_root=ed.stats_root, progress=False)
    assert torch.allclose(left, right_ed.plan(fact, hp).v_star, atol=1e-4)


@pytest.mark.slow
def test_edit_success_comparable_to_llama_layout(loaded, default_model, facts):
    from tuner.hparams import EditHParams, preset

    def best_layer_efficacy(lm) -> tuple[float, list[float]]:
        ed = lm.editor(progress=False)
        per_layer = []
        for layer in range(lm.n_layers):
            hp = preset("verify", EditHParams(layer=layer))
            per_layer.append(sum(ed.edit(f, hp).metrics["efficacy"] for f in facts[:10]) / 10)
        return max(per_layer), per_layer

    glm, glm_layers = best_layer_efficacy(loaded)
    llama, llama_layers = best_layer_efficacy(default_model)
    print(f"efficacy per layer: chatglm-style {glm_layers}, llama {llama_layers}")
    assert glm >= 0.5 and glm >= llama - 0.3


def test_engine_equals_a_plain_rome_loop_on_chatglm(loaded, facts):
    """Sequence-first, left-padded, [gMASK] <sop>-prefixed: still exactly ROME's loop."""
    from tests.rome.test_rome_semantics import HP, assert_engine_is_rome

    ed = loaded.editor(progress=False)
    assert ed.adapter.seq_first and ed.adapter.padding_side == "left"
    assert_engine_is_rome(ed, facts[5], HP)


def test_batched_facts_and_replayed_prefix_on_chatglm(loaded, facts):
    """Sequence-first: the facts optimised together equal one by one, the replayed prefix
    equals the full forward pass, and K edits scored in shared batches equal each alone."""
    from tests.rome.test_batched import HP, _replay_equals_full, _requests, _vs, assert_same

    ed = loaded.editor(progress=False)
    hp = HP.replace(layer=2, v_num_grad_steps=12)
    requests = _requests(ed, facts[:4])
    assert_same(_vs(ed, hp, requests), [_vs(ed, hp, [r])[0] for r in requests])
    for layer in (1, 3):
        _replay_equals_full(ed.model, ed.adapter, ed.tok, layer)
    plans = ed.plan_many(facts[:3], hp)
    for fact, plan, together in zip(facts[:3], plans, ed.evaluate_many(facts[:3], hp, plans)):
        alone = ed.evaluate(fact, hp, plan)
        for k in ("final_prob", "efficacy", "specificity", "paraphrase", "gen_entropy"):
            assert together.metrics[k] == pytest.approx(alone.metrics[k], abs=1e-4), k


def test_inspect_reads_the_chatglm_layout(loaded):
    from tuner.models.inspect import inspect_model

    facts = inspect_model(loaded, trust_remote_code=True, ships_code=True)
    assert facts["activation_layout"].startswith("sequence-first")
    assert facts["prefix_tokens"] == ["[gMASK]", "<sop>"] and facts["padding_side"] == "left"
    assert facts["modules"]["rewrite"]["resolved"].endswith("mlp.dense_4h_to_h")
    assert facts["norm_before_mlp"]["module"].endswith("post_attention_layernorm")
