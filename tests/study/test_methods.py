"""A study searching ``method`` runs its conditional space (MEMIT's window only for memit and
hybrid) end to end, on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["sqlite", "postgresql"])
def test_searched_method_runs_the_conditional_space(tmp_path, env, storage):
    import contextlib

    import optuna

    from tests.conftest import run_cli
    from tests.pg import postgres_server
    from tests.study.conftest import write_study

    cfg = write_study(tmp_path / "m.yaml", name="methods", search={
        "method": ["rome", "memit", "hybrid"], "window_size": {"low": 1, "high": 2},
        "mom2_update_weight": {"low": 10.0, "high": 1000.0, "log": True}, "v_num_grad_steps": {"low": 5, "high": 10}},
        facts={"per_trial": 2, "mode": "batch"}, pruner="none")
    server = postgres_server() if storage == "postgresql" else contextlib.nullcontext(f"sqlite:///{tmp_path / 't.db'}")
    with server as url:
        proc = run_cli("launch", "--config", str(cfg), "--trials", "12", "--workers", "1", "--storage", url,
                       "--no-progress", env=env)
        assert proc.returncode == 0, proc.stderr
        trials = optuna.load_study(study_name="methods", storage=url).get_trials(deepcopy=False)
    assert len([t for t in trials if t.state.name == "COMPLETE"]) == 12
    methods = {t.params["method"] for t in trials}
    assert methods >= {"rome", "memit"} or methods >= {"rome", "hybrid"}, methods
    for t in trials:
        window = {"window_size", "mom2_update_weight"} <= set(t.params)
        assert window == (t.params["method"] != "rome"), t.params  # the window exists only for memit/hybrid
        hp = t.user_attrs["hparams"]
        assert hp["method"] == t.params["method"] and hp["layer"] + hp["window_size"] <= 4
        assert all(m["memit_pass"] == (hp["method"] == "memit") for m in t.user_attrs["per_fact"]) or \
            hp["method"] == "hybrid"
