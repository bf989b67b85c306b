"""Search-space parsing: bounds and names are checked with one line naming the key."""

from __future__ import annotations

import pytest

from tuner.errors import ConfigError
from tuner.rome.hparams import ROMEHyperParams
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
        hp = space.suggest(study.ask(), ROMEHyperParams(**fixed))
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
