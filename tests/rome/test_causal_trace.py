"""Causal tracing on the trained default model, through the Python API and the CLI."""

from __future__ import annotations

import json

import optuna
import pytest

from tests.conftest import run_cli
from tuner.analysis.causal_trace import per_layer_effects, trace_facts
from tuner.errors import ConfigError


@pytest.fixture(scope="module")
def traces(default_model, facts):
    return trace_facts(default_model.model, default_model.tok, default_model.adapter, facts[:6], noise=3.0,
                       samples=8, seed=0, progress=False)


def test_corruption_lowers_and_restoration_recovers(traces, default_model):
    traced, skipped = traces
    assert len(traced) + skipped == 6 and len(traced) >= 4
    n_layers = default_model.n_layers
    for t in traced:
        assert t.clean_prob > 0.5
        # restoring the last layer's state at the last token restores the whole output exactly
        assert abs(t.scores["state"][n_layers - 1][-1] - t.clean_prob) < 1e-4
        assert len(t.scores["mlp"]) == n_layers and len(t.scores["attn"][0]) == len(t.tokens)
    assert sum(t.corrupt_prob for t in traced) / len(traced) < sum(t.clean_prob for t in traced) / len(traced) - 0.2
    effects = per_layer_effects(traced)
    assert set(effects) == {"state", "mlp", "attn"} and len(effects["mlp"]) == n_layers


def test_trace_is_deterministic(default_model, facts, traces):
    again, _ = trace_facts(default_model.model, default_model.tok, default_model.adapter, facts[:6], noise=3.0,
                           samples=8, seed=0, progress=False)
    assert [t.scores for t in again] == [t.scores for t in traces[0]]


def test_bad_noise_is_rejected(default_model, facts):
    with pytest.raises(ConfigError, match="noise must be > 0"):
        trace_facts(default_model.model, default_model.tok, default_model.adapter, facts[:1], noise=0.0)
    proc = run_cli("trace", "--noise", "-1")
    assert proc.returncode == 2 and "tuner: error: --noise must be > 0" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_trace_cli_writes_json_and_a_page_that_renders(tmp_path, default_model):
    from tests.report.browser import chromium, js_errors, wait_for_plots

    proc = run_cli("trace", "--facts", "4", "--samples", "4", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "trace.json").read_text())
    assert result["traced"] + result["skipped_wrong"] == 4 and len(result["effects"]["mlp"]) == 4
    with chromium() as driver:
        driver.get((tmp_path / "trace.html").as_uri())
        assert wait_for_plots(driver, 2) == 2
        assert js_errors(driver) == []


@pytest.mark.slow
def test_launch_seeded_from_trace(tmp_path, default_model):
    from tests.conftest import shared_home
    from tests.study.conftest import write_study

    cfg = write_study(tmp_path / "small.yaml")
    home = shared_home(tmp_path / "home")
    url = f"sqlite:///{tmp_path / 't.db'}"
    proc = run_cli("launch", "--config", str(cfg), "--trials", "20", "--seed-from-trace", "--storage", url,
                   "--no-progress", env={"TUNER_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="small", storage=url)
    seeded = study.user_attrs["trace"]["seeded_layers"]
    assert seeded and seeded == study.user_attrs["trace"]["top_mlp_layers"][: len(seeded)]
    # trials 0 and 1: the textbook setting and EasyEdit's defaults; then 20 // 5 - 2 seeded draws
    first = sorted(study.trials, key=lambda t: t.number)[2:4]
    assert [t.params["layer"] for t in first] == [seeded[i % len(seeded)] for i in range(2)]
    assert "Causal trace vs. search" in (home / "reports/small/index.html").read_text()


@pytest.mark.parametrize("model_type", ["gpt2", "gpt_neox", "llama", "glm"])
def test_trace_restoration_invariant_on_every_family(tiny_editor, facts, model_type):
    """Restoring the last layer's state at the last token gives back the clean output exactly,
    whatever the architecture (tuple or tensor block outputs, fused attention, ...)."""
    import torch

    from tuner.analysis.causal_trace import trace_fact

    ed = tiny_editor(model_type)
    f = facts[0]
    t = trace_fact(ed.model, ed.tok, ed.adapter, case_id=0, prompt=f.rewrite_prompt, subject=f.subject,
                   answer=f.target_true, noise=3.0, samples=3, window=1, generator=torch.Generator().manual_seed(0))
    assert abs(t.scores["state"][-1][-1] - t.clean_prob) < 1e-6
    assert t.corrupt_prob != t.clean_prob
