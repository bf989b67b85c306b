"""Search-space parsing: bounds and names are checked with one line naming the key."""

from __future__ import annotations

import pytest

from tuner.errors import ConfigError
from tuner.hparams import EditHParams
from tuner.study.space import SearchSpace


def parse_space(search, n_layers):
    space, fixed = SearchSpace.parse(search)
    return space.bind(n_layers), fixed


@pytest.mark.parametrize(
    "search, needle",
    [
        ({"v_lr": {"low": 1.0, "high": 0.1}}, "search.v_lr: low (1.0) > high (0.1)"),
        ({"v_lr": {"low": 0.0, "high": 1.0, "log": True}}, "search.v_lr: log scale needs low > 0"),
        ({"layer": {"low": 0, "high": 9}}, "exceeds the model's 4 layers"),
        ({"v_lrr": {"low": 0.1, "high": 1}}, "search.v_lrr: unknown hyperparameter"),
        ({"v_lr": {"low": 0.1}}, "search.v_lr: needs both low and high"),
        ({"lr_schedule": ["constant", "linear"]}, "lr_schedule"),
        ({"v_num_grad_steps": {"low": 1.5, "high": 5}}, "bounds must be integers"),
        ({"v_lr": {"low": 0.1, "high": 1, "scale": "log"}}, "unknown key scale"),
        ({"v_lr": {"low": 0.1, "high": 1, "log": "no"}}, "search.v_lr.log: expected true or false"),
        ({"v_lr": {"low": -1.0, "high": 1}}, "search.v_lr must be > 0"),
        ({"lr_schedule": {"low": 0, "high": 1}}, "a range needs a numeric hyperparameter"),
        ({"context_template_length_params": [[[5, 5]]]}, "search.context_template_length_params: unknown"),
    ],
)
def test_bad_space(search, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        parse_space(search, n_layers=4)


def test_space_suggests_within_bounds():
    import optuna

    space, fixed = parse_space({"layer": "all", "v_lr": {"low": 0.01, "high": 1, "log": True},
                                "lr_schedule": ["constant", "cosine"], "kl_factor": 0.5}, n_layers=4)
    assert fixed == {"kl_factor": 0.5} and space.names == ["layer", "v_lr", "lr_schedule"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        hp = space.suggest(study.ask(), EditHParams(**fixed))
        assert 0 <= hp.layer <= 3 and 0.01 <= hp.v_lr <= 1 and hp.kl_factor == 0.5
        assert hp.lr_schedule in ("constant", "cosine")


def test_storage_urls(monkeypatch, tmp_path):
    from tuner.errors import StorageError
    from tuner.study.storage import redact, resolve_url

    monkeypatch.delenv("TUNER_STORAGE", raising=False)
    monkeypatch.setenv("TUNER_HOME", str(tmp_path))
    assert resolve_url(None) == f"sqlite:///{tmp_path}/tuner.db"
    monkeypatch.setenv("TUNER_STORAGE", "postgresql://u:pw@h/db")
    assert resolve_url(None) == "postgresql+psycopg://u:pw@h/db"
    assert "pw" not in redact(resolve_url(None))
    with pytest.raises(StorageError, match="unsupported storage URL 'mysql://u:\\*\\*\\*@h/db'"):
        resolve_url("mysql://u:pw@h/db")


def test_textbook_and_easyedit_settings_are_the_first_trials(tmp_path, env):
    """Warm start: ROME's textbook values of the searched knobs (clipped into the space) are
    enqueued as trial 0 and the family's EasyEdit defaults as trial 1, before the seeded random draws."""
    import optuna

    from tests.conftest import run_cli
    from tests.study.conftest import write_study

    cfg = write_study(tmp_path / "s.yaml", search={"v_lr": {"low": 0.01, "high": 0.3, "log": True}})
    url = f"sqlite:///{tmp_path / 't.db'}"
    proc = run_cli("launch", "--config", str(cfg), "--create-only", "--storage", url, env=env)
    assert proc.returncode == 0, proc.stderr
    trials = sorted(optuna.load_study(study_name="small", storage=url).get_trials(deepcopy=False),
                    key=lambda t: t.number)
    first = trials[0].system_attrs["fixed_params"]
    assert first == {"layer": 1, "v_lr": 0.3, "v_weight_decay": 0.5, "v_num_grad_steps": 15,
                     "clamp_norm_factor": 4.0, "kl_factor": 0.0625, "lr_schedule": "constant"}, first
    # then EasyEdit's Llama defaults (layer 5 of 32 → 0 of 4; 25 steps, v_weight_decay 1e-3)
    second = trials[1].system_attrs["fixed_params"]
    assert second == {"layer": 0, "v_lr": 0.3, "v_weight_decay": 0.001, "v_num_grad_steps": 15,
                      "clamp_norm_factor": 4.0, "kl_factor": 0.0625, "lr_schedule": "constant"}, second
    assert all(t.system_attrs["fixed_params"] not in (first, second) for t in trials[2:])


def test_specificity_guards_relative_and_absolute():
    """By default specificity is judged against the references (the worse one, less a margin):
    the references themselves are feasible; the absolute guard (vs the unedited model) applies
    only when set; a setting that edits no more facts than the unedited model is infeasible."""
    from tuner.metrics.scoring import CONSTRAINT_NAMES, Thresholds, constraints
    from tuner.study.config import ObjectiveSpec

    def fact(spec: float, eff: float = 1.0) -> dict:
        return {"specificity_pre": 1.0, "specificity": spec, "efficacy": eff, "efficacy_pre": 0.0,
                "disabling_edit": False}

    refs = Thresholds(max_disabling=0, min_specificity=0.7, unedited_efficacy=0.0)
    names = dict(zip(CONSTRAINT_NAMES, range(4)))
    obj = ObjectiveSpec()
    assert obj.max_specificity_drop is None and obj.specificity_margin == 0.05
    ok = constraints([fact(0.7), fact(0.6)], obj, refs)  # mean 0.65: the worse reference less the margin
    assert ok[names["specificity"]] == pytest.approx(0.0) and all(c <= 0 for c in ok)
    low = constraints([fact(0.6)], obj, refs)
    assert low[names["specificity"]] == pytest.approx(0.05)
    # the absolute guard, when the user sets it: 0.3 below the unedited model is infeasible
    absolute = constraints([fact(0.7)], ObjectiveSpec(max_specificity_drop=0.05), refs)
    assert absolute[names["specificity_drop"]] == pytest.approx(0.25)
    assert constraints([fact(0.6)], ObjectiveSpec(specificity_margin=None), refs)[names["specificity"]] == 0.0
    # a non-edit: efficacy not above the unedited model's
    assert constraints([fact(1.0, eff=0.0)], obj, refs)[names["non_edit"]] > 0
    assert constraints([fact(1.0, eff=0.0), fact(1.0)], obj, refs)[names["non_edit"]] < 0


@pytest.mark.slow
def test_warm_start_from_another_study(tmp_path, env):
    """--warm-start-from enqueues the other study's best feasible trials (clipped into this
    space) right after the textbook setting; an unknown study is one line, exit 2."""
    import optuna

    from tests.conftest import run_cli
    from tests.study.conftest import write_study

    url = f"sqlite:///{tmp_path / 't.db'}"
    # long enough optimisations that the random draws edit something (a non-edit is infeasible)
    first = write_study(tmp_path / "a.yaml", name="a", facts={"per_trial": 2},
                        search={"v_lr": {"low": 1.0, "high": 5.0, "log": True}})
    proc = run_cli("launch", "--config", str(first), "--trials", "5", "--workers", "1", "--storage", url,
                   "--no-progress", env=env)
    assert proc.returncode == 0, proc.stderr
    donor = optuna.load_study(study_name="a", storage=url)
    ranked = sorted((t for t in donor.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                     if t.user_attrs["score"]["feasible"]), key=lambda t: -t.value)
    second = write_study(tmp_path / "b.yaml", name="b", search={"v_lr": {"low": 0.01, "high": 1.0, "log": True}})
    proc = run_cli("launch", "--config", str(second), "--create-only", "--warm-start-from", "a", "--storage", url,
                   env=env)
    assert proc.returncode == 0, proc.stderr
    queued = sorted(optuna.load_study(study_name="b", storage=url).get_trials(deepcopy=False), key=lambda t: t.number)
    references = [t.system_attrs["fixed_params"] for t in queued[:2]]  # textbook, EasyEdit
    expected = []
    for t in ranked:
        params = {**t.params, "v_lr": min(t.params["v_lr"], 1.0)}
        if params not in references and params not in expected:
            expected.append(params)
    assert expected and [t.system_attrs["fixed_params"] for t in queued[2:2 + len(expected)]] == expected
    bad = run_cli("launch", "--config", str(second), "--study", "c", "--create-only", "--warm-start-from", "nope",
                  "--storage", url, env=env)
    assert bad.returncode == 2 and "study 'nope' not found" in bad.stderr


def test_a_best_setting_on_a_bound_is_detected_and_widened():
    from tuner.study.space import SearchSpace

    space, _ = SearchSpace.parse({"v_lr": {"low": 0.01, "high": 5.0, "log": True}, "v_num_grad_steps": {"low": 5, "high": 50},
                                  "kl_factor": {"low": 0.001, "high": 1.0, "log": True}, "layer": {"low": 0, "high": 3}})
    hits = space.on_bounds({"v_lr": 4.9, "v_num_grad_steps": 50, "kl_factor": 0.03, "layer": 3})
    assert hits == [("v_lr", "high", 5.0), ("v_num_grad_steps", "high", 50)]  # the layer is the model's bound
    assert space.on_bounds({"v_lr": 3.0, "v_num_grad_steps": 49, "kl_factor": 0.0011}) == [("kl_factor", "low", 0.001)]
    wide = space.widen(hits).to_dict()
    assert wide["v_lr"] == {"low": 0.01, "high": 20.0, "log": True} and wide["v_num_grad_steps"] == {"low": 5, "high": 73}
    assert wide["kl_factor"] == space.to_dict()["kl_factor"]
    low = space.widen([("v_num_grad_steps", "low", 5)]).to_dict()["v_num_grad_steps"]
    assert low["low"] >= 1  # never below what the knob accepts


@pytest.mark.slow
def test_launch_warns_of_a_bound_and_widen_bounds_continues(tmp_path, env):
    import optuna

    from tests.conftest import run_cli
    from tests.study.conftest import write_study

    url = f"sqlite:///{tmp_path / 't.db'}"
    cfg = write_study(tmp_path / "a.yaml", facts={"per_trial": 2}, search={"v_num_grad_steps": {"low": 24, "high": 25}})  # every value on a bound; enough steps for an edit
    proc = run_cli("launch", "--config", str(cfg), "--trials", "3", "--workers", "1", "--storage", url,
                   "--no-progress", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "sits on a bound of the search space: v_num_grad_steps" in proc.stdout, proc.stdout
    proc = run_cli("launch", "--config", str(cfg), "--trials", "3", "--workers", "1", "--storage", url,
                   "--no-progress", "--widen-bounds", env=env)
    assert proc.returncode == 0, proc.stderr
    wide = optuna.load_study(study_name="small-wide", storage=url)
    steps = wide.user_attrs["config"]["search"]["v_num_grad_steps"]
    assert steps["high"] > 25 or steps["low"] < 24
    again = run_cli("launch", "--config", str(tmp_path / "a.yaml"), "--study", "nope", "--widen-bounds",
                    "--storage", url, env=env)
    assert again.returncode == 2 and "not found" in again.stderr
