"""All facts of a trial in one optimisation equal the facts one by one; the replayed prefix
equals the full forward pass; a CUDA out-of-memory error halves the chunk instead of failing."""

from __future__ import annotations

import logging

import pytest
import torch

from tests.conftest import FAMILIES
from tuner.hparams import EditHParams

# lr and steps chosen so that on the default model some facts stop early, at different steps
HP = EditHParams(layer=1, v_num_grad_steps=25, v_lr=1.0, v_weight_decay=0.001, clamp_norm_factor=12.0,
                     kl_factor=0.01, early_stop_loss=0.1, mom2_adjustment=False)


def _requests(editor, facts):
    from tuner.plumbing.tokens import target_token_ids
    from tuner.rome.compute_v import VRequest

    return [VRequest(f.prompt, f.subject, tuple(target_token_ids(editor.tok, f.rewrite_prompt, f.target_new)))
            for f in facts]


def _vs(editor, hp, requests, **kwargs):
    from tuner.rome.compute_v import compute_vs

    return compute_vs(editor.model, editor.tok, editor.adapter, hp, requests, editor.context_templates(hp), **kwargs)


def assert_same(batched, alone, tol=1e-4):
    """Same step counts and selections; v*, keys and trajectories equal to ``tol`` relative to
    v*'s norm (float32 batches of different padding differ by round-off only, which 25 Adam
    steps grow to 2.4e-5 on the model built on an AMD EPYC: in float64 the two paths agree to
    1e-10, see ``test_batched_equals_one_by_one``)."""
    assert len(batched) == len(alone)
    for b, a in zip(batched, alone):
        assert b.selected_step == a.selected_step and b.early_stopped == a.early_stopped
        assert len(b.trajectory["loss"]) == len(a.trajectory["loss"])
        assert float((b.v_star - a.v_star).norm()) <= tol * float(a.v_star.norm())
        assert float((b.key - a.key).norm()) <= tol * float(a.key.norm())
        for k in ("loss", "prob", "delta_norm"):
            assert b.trajectory[k] == pytest.approx(a.trajectory[k], abs=tol, rel=max(tol * 10, 1e-9 if tol < 1e-6 else 1e-3)), k


@pytest.fixture(scope="module")
def editor(default_model):
    return default_model.editor(progress=False)


@pytest.fixture(scope="module")
def editor64(default_model):
    """The default model in float64: batching must change nothing but float32 round-off."""
    import copy

    from tuner.edit.editor import Editor

    model = copy.deepcopy(default_model.model).double()
    return Editor(model, default_model.tok, default_model.adapter, fingerprint="f64", stats_texts=[], progress=False)


@pytest.mark.parametrize("overrides", [{}, {"layer": 0}, {"layer": 2, "v_select": "best", "lr_schedule": "cosine"}])
def test_batched_equals_one_by_one(editor, editor64, facts, overrides):
    hp = HP.replace(**overrides)
    requests = _requests(editor, facts[:6])
    batched = _vs(editor, hp, requests)
    alone = [_vs(editor, hp, [r])[0] for r in requests]
    assert_same(batched, alone)
    assert_same(_vs(editor64, hp, requests), [_vs(editor64, hp, [r])[0] for r in requests], tol=1e-10)
    steps = {len(v.trajectory["loss"]) for v in batched}
    if not overrides:  # the case that matters: facts stop at different steps, the rest go on
        assert any(v.early_stopped for v in batched) and len(steps) > 1, steps


@pytest.mark.parametrize("model_type", ["default", "gpt2"])
def test_edits_scored_together_equal_each_alone(editor, tiny_editor, facts, model_type):
    """K edits scored in shared batches, each row under its own fact's rank-one update, give
    the metrics of each edit written into the weight and scored alone (GPT-2: Conv1D layout)."""
    ed = editor if model_type == "default" else tiny_editor(model_type)
    hp = HP.replace(mom2_adjustment=model_type == "default", layer=1)
    plans = ed.plan_many(facts[:4], hp)
    for fact, plan, result in zip(facts[:4], plans, ed.evaluate_many(facts[:4], hp, plans)):
        alone = ed.evaluate(fact, hp, plan)  # ΔW written into the weight, scored, restored
        for k in ("final_prob", "true_prob", "efficacy", "paraphrase_prob", "specificity", "neighborhood_drop",
                  "rebound", "n_steps", "update_norm", "gen_entropy"):
            assert result.metrics[k] == pytest.approx(alone.metrics[k], abs=1e-4), k


def test_out_of_memory_halves_the_chunk(editor, facts, caplog):
    """A forward pass over more than two facts' rows raises CUDA's out-of-memory error: the
    engine retries with smaller chunks and gets the same result."""
    requests = _requests(editor, facts[:5])
    expected = _vs(editor, HP, requests)
    rows_per_fact = len(editor.context_templates(HP)) + 1
    real_forward = editor.model.forward
    seen = []

    def forward(*args, **kwargs):
        rows = kwargs["input_ids"].shape[0]
        seen.append(rows)
        if rows > 2 * rows_per_fact:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real_forward(*args, **kwargs)

    editor.model.forward = forward
    try:
        with caplog.at_level(logging.WARNING, logger="tuner.rome.compute_v"):
            got = _vs(editor, HP, requests)
    finally:
        del editor.model.forward
    assert_same(got, expected)
    assert max(seen) > 2 * rows_per_fact and any(r <= 2 * rows_per_fact for r in seen)
    assert "out of memory with 5 facts per forward pass; retrying with 2" in caplog.text


def _replay_equals_full(model, adapter, tok, layer):
    from tuner.plumbing.prefix import PrefixReplay
    from tuner.plumbing.tokens import encode, make_batch, pad_id_of

    texts = ["Danielle Darrieux is a native speaker of", "The Eiffel Tower is in", "Paris", "x y z w v u t s r q"]
    batch = make_batch([encode(tok, t) for t in texts], pad_id=pad_id_of(tok), side="left",
                       device=next(model.parameters()).device)
    kwargs = batch.model_kwargs(model)
    replay = PrefixReplay(model, adapter, layer)
    with torch.no_grad():
        with replay.recording(torch.arange(len(texts))):
            full = model(**kwargs).logits
        rows = torch.tensor([3, 1])
        with replay.replaying(rows):
            replayed = model(**{k: v[rows] for k, v in kwargs.items()}).logits
        plain = model(**{k: v[rows] for k, v in kwargs.items()}).logits  # blocks restored
    assert replay.active == (layer > 0)
    mask = kwargs["attention_mask"][rows].bool()
    torch.testing.assert_close(replayed[mask], full[rows][mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain[mask], full[rows][mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_replayed_prefix_equals_full_forward(tiny_models, tiny_tok, model_type):
    from tuner.plumbing.adapters import detect_adapter

    model = tiny_models(model_type)
    for layer in (0, 1, 2):
        _replay_equals_full(model, detect_adapter(model.config), tiny_tok, layer)


def test_replay_skips_the_blocks_below(tiny_models, tiny_tok):
    """The replayed blocks do not run: their MLPs are never called."""
    from tuner.plumbing.adapters import detect_adapter
    from tuner.plumbing.prefix import PrefixReplay
    from tuner.plumbing.tokens import encode, make_batch, pad_id_of

    model = tiny_models("llama")
    adapter = detect_adapter(model.config)
    batch = make_batch([encode(tiny_tok, "Paris is a city")], pad_id=pad_id_of(tiny_tok), side="left", device="cpu")
    calls = []
    handles = [model.get_submodule(adapter.mlp.format(i)).register_forward_pre_hook(
        lambda _m, _a, i=i: calls.append(i)) for i in range(3)]
    replay = PrefixReplay(model, adapter, 2)
    try:
        with torch.no_grad():
            with replay.recording(torch.arange(1)):
                model(**batch.model_kwargs(model))
            assert calls == [0, 1, 2]
            calls.clear()
            with replay.replaying():
                model(**batch.model_kwargs(model))
    finally:
        for h in handles:
            h.remove()
    assert calls == [2]


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_one_pass_statistics_equal_per_layer(tiny_editor, stats_texts, model_type):
    """Every layer's C from one pass (token-budgeted batches, stopped after the top layer)
    equals C built document by document from each layer's own keys; the layer above the
    top is never run."""
    from tuner.plumbing.hooks import Trace
    from tuner.plumbing.tokens import encode
    from tuner.rome.layer_stats import compute_second_moments

    ed = tiny_editor(model_type)
    n = 1500
    calls = []
    above = ed.model.get_submodule(ed.adapter.mlp.format(2)).register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        got = compute_second_moments(ed.model, ed.tok, ed.adapter, [1, 0], stats_texts, n_samples=n,
                                     tokens_per_batch=700, progress=False)
    finally:
        above.remove()
    assert calls == [] and sorted(got) == [0, 1]
    for layer in (0, 1):
        keys = []
        for text in stats_texts:
            ids = encode(ed.tok, text)[:256]
            with torch.no_grad(), Trace(ed.model, ed.adapter.rewrite.format(layer), retain_input=True) as tr:
                ed.model(input_ids=torch.tensor([ids]))
            keys.append(tr.input[0].double())
        k = torch.cat(keys)[:n]
        mom2, count = got[layer]
        assert count == n
        torch.testing.assert_close(mom2, (k.T @ k / n).float(), rtol=1e-4, atol=1e-6)


# settings as different as a study's trials: every knob a row carries on its own
SETTINGS = [HP, HP.replace(v_lr=0.3, v_weight_decay=0.5, clamp_norm_factor=4.0, kl_factor=0.0625, v_num_grad_steps=12),
            HP.replace(v_lr=2.0, lr_schedule="cosine", v_select="best", early_stop_loss=None, v_num_grad_steps=18),
            HP.replace(v_lr=0.7, kl_factor=0.001, early_stop_loss=0.5, v_num_grad_steps=30)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_several_settings_in_one_batch_equal_each_setting_alone(editor, editor64, facts, dtype):
    """Trials batched together (each fact repeated under every setting, as a worker's batch of
    trials is): every setting's v*, steps, early stops and trajectories are those it gets alone."""
    ed, tol = (editor, 1e-4) if dtype == "float32" else (editor64, 1e-10)
    requests = _requests(ed, facts[:3])
    knobs = [hp for hp in SETTINGS for _ in requests]
    batched = _vs(ed, HP, requests * len(SETTINGS), knobs=knobs)
    alone = [v for hp in SETTINGS for v in _vs(ed, hp, requests)]
    assert_same(batched, alone, tol=tol)
    lengths = {len(v.trajectory["loss"]) for v in batched}
    assert len(lengths) > 2, lengths  # the settings stop at different steps
    assert [v.trajectory["lr"][0] for v in batched[::len(requests)]] == [hp.v_lr for hp in SETTINGS]


def test_a_batch_refuses_settings_that_cannot_share_a_forward_pass(editor, facts):
    requests = _requests(editor, facts[:2])
    with pytest.raises(ValueError, match="must share layer"):
        _vs(editor, HP, requests, knobs=[HP, HP.replace(layer=0)])


def test_on_step_can_stop_some_requests(editor, facts):
    """A pruned trial's facts leave the batch; the others go on exactly as before."""
    requests = _requests(editor, facts[:2])
    hp = HP.replace(early_stop_loss=None)
    knobs = [hp, hp.replace(v_lr=0.5)]
    full = _vs(editor, hp, requests[:1] * 2, knobs=knobs)
    cut = _vs(editor, hp, requests[:1] * 2, knobs=knobs, on_step=lambda step, probs: [1] if step == 4 else [])
    assert len(cut[1].trajectory["loss"]) == 5 and len(cut[0].trajectory["loss"]) == hp.v_num_grad_steps
    assert_same(cut[:1], full[:1])


def test_k_star_comes_from_the_first_pass(editor64, facts):
    """An edit's k* is read from ``compute_vs``'s first pass (no pass of its own): it equals
    ``compute_k`` on the same rows (float64, 1e-12), and planning K facts runs the model exactly
    once per v* forward pass — the first pass plus one per optimisation step."""
    from tuner.rome.compute_k import compute_k

    facts = facts[:4]
    hp = HP.replace(v_num_grad_steps=4, early_stop_loss=None)
    templates = editor64.context_templates(hp)  # sampled from the model once, before counting
    calls = []
    handle = editor64.model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        plans = editor64.plan_many(facts, hp)
    finally:
        handle.remove()
    assert len(calls) == 1 + 4
    for fact, plan in zip(facts, plans):
        k = compute_k(editor64.model, editor64.tok, editor64.adapter, hp.layer, fact.prompt, fact.subject, templates,
                      hp.fact_token)
        assert float((plan.v.k_star - k).norm()) <= 1e-12 * float(k.norm())
