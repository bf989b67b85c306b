"""Every shipped study YAML loads strictly and its search space parses."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT
from tuner.config import StudyConfig
from tuner.study.space import parse_space


@pytest.mark.parametrize("path", sorted((ROOT / "studies").glob("*.yaml")), ids=lambda p: p.stem)
def test_study_file_loads(path):
    cfg = StudyConfig.load(path)
    knobs, _ = parse_space(cfg.search)
    assert knobs and cfg.trials >= 1
    if cfg.model.name != "default":
        steps = next(k for k in knobs if k.name == "v_num_grad_steps")
        assert steps.high >= 500  # real checkpoints get the long budgets
    if cfg.model.family == "chatglm":
        assert cfg.model.trust_remote_code is True
