"""Every shipped study YAML loads strictly and its search space parses."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT
from tuner.study.config import StudyConfig


@pytest.mark.parametrize("path", sorted((ROOT / "studies").glob("*.yaml")), ids=lambda p: p.stem)
def test_study_file_loads(path):
    cfg = StudyConfig.load(path)
    assert cfg.search.dimensions and cfg.trials >= 1
    if cfg.model.name != "default":
        steps = next(d for d in cfg.search.dimensions if d.name == "v_num_grad_steps")
        assert steps.high >= 500  # real checkpoints get the long budgets
    if cfg.model.family == "chatglm":
        assert cfg.model.trust_remote_code is True


@pytest.mark.parametrize("path", sorted((ROOT / "studies").glob("*.yaml")), ids=lambda p: p.stem)
def test_study_round_trips(path):
    cfg = StudyConfig.load(path)
    again = StudyConfig.from_dict(cfg.to_dict())
    assert again == cfg
