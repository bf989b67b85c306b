"""The exported best setting: never an infeasible trial, EasyEdit's exact field names and types,
and the best trial EasyEdit can reproduce beside the overall best."""

from __future__ import annotations

import dataclasses
import typing
from typing import List

import optuna
import pytest
import yaml

from tuner.errors import StudyError
from tuner.hparams import EditHParams
from tuner.study.config import StudyConfig
from tuner.study.export import best_trial, export_best
from tuner.study.objective import CONSTRAINTS


@dataclasses.dataclass
class EasyEditROMEHyperParams:
    """EasyEdit's ROME hyperparameters, field names and types as its documentation lists them
    (``hparams/ROME/*.yaml``); written here, not imported."""

    layers: List[int]
    fact_token: str
    v_num_grad_steps: int
    v_lr: float
    v_loss_layer: int
    v_weight_decay: float
    clamp_norm_factor: float
    kl_factor: float
    mom2_adjustment: bool
    context_template_length_params: List[List[int]]
    rewrite_module_tmp: str
    layer_module_tmp: str
    mlp_module_tmp: str
    attn_module_tmp: str
    ln_f_module: str
    lm_head_module: str
    mom2_dataset: str
    mom2_n_samples: int
    mom2_dtype: str
    alg_name: str
    device: int
    model_name: str
    stats_dir: str
    max_length: int = 40
    batch_size: int = 1
    model_parallel: bool = False
    fp16: bool = False


@dataclasses.dataclass
class EasyEditMEMITHyperParams:
    """EasyEdit's MEMIT hyperparameters (``hparams/MEMIT/*.yaml``), written here, not imported."""

    layers: List[int]
    layer_selection: str
    fact_token: str
    v_num_grad_steps: int
    v_lr: float
    v_loss_layer: int
    v_weight_decay: float
    clamp_norm_factor: float
    kl_factor: float
    mom2_adjustment: bool
    mom2_update_weight: float
    rewrite_module_tmp: str
    layer_module_tmp: str
    mlp_module_tmp: str
    attn_module_tmp: str
    ln_f_module: str
    lm_head_module: str
    mom2_dataset: str
    mom2_n_samples: int
    mom2_dtype: str
    alg_name: str
    device: int
    model_name: str
    stats_dir: str
    max_length: int = 40
    batch_size: int = 1
    model_parallel: bool = False
    fp16: bool = False


def _load_strict(path, kind=None):
    kind = kind or EasyEditROMEHyperParams
    data = yaml.safe_load(path.read_text())
    hints = typing.get_type_hints(kind)
    assert set(data) <= set(hints), set(data) - set(hints)
    for key, value in data.items():
        hint = hints[key]
        origin = typing.get_origin(hint) or hint
        assert isinstance(value, origin) and not (origin in (int, float) and isinstance(value, bool)), (key, value)
    return kind(**data)


def _study(trials: list[tuple[float, EditHParams, int]]) -> optuna.Study:
    study = optuna.create_study(direction="maximize", study_name="exp")
    for value, hp, n_disabling in trials:
        study.add_trial(optuna.trial.create_trial(
            params={"v_lr": hp.v_lr}, distributions={"v_lr": optuna.distributions.FloatDistribution(0.01, 5)},
            value=value, user_attrs={"hparams": hp.to_dict(), CONSTRAINTS: [float(n_disabling)]}))
    return study


def test_infeasible_trial_is_never_best_or_exported(tmp_path):
    base = EditHParams()
    study = _study([(0.9, base.replace(v_lr=4.0), 2), (0.7, base.replace(v_lr=1.0), 0), (0.5, base, 0)])
    assert study.best_trial.number == 0  # Optuna alone would pick the disabled model
    assert best_trial(study).number == 1
    paths = export_best(study, StudyConfig(), out_dir=tmp_path)
    exported = StudyConfig.load(paths[0]).hparams
    assert exported.v_lr == 1.0
    with pytest.raises(StudyError, match="no completed feasible trial"):
        best_trial(_study([(0.9, base, 1)]))


def test_export_loads_as_easyedit_and_names_what_it_cannot_express(tmp_path):
    base = EditHParams()
    study = _study([(0.9, base.replace(v_select="best", v_lr=3.0), 0), (0.6, base.replace(v_lr=0.7), 0)])
    paths = export_best(study, StudyConfig(), out_dir=tmp_path)
    assert [p.name for p in paths] == ["study.yaml", "rome_hparams_rome_tuner_only.yaml", "rome_hparams.yaml"]
    best, twin = paths[1], paths[2]
    best_hp, twin_hp = _load_strict(best), _load_strict(twin)
    assert best_hp.v_lr == 3.0 and twin_hp.v_lr == 0.7  # rome_hparams.yaml: the best EasyEdit reproduces
    header = best.read_text().split("\nalg_name")[0]
    assert "CANNOT reproduce" in header and "v_select: best  [last] *" in header
    assert "reproduces this setting" in twin.read_text()
    assert best_hp.layers == [base.layer] and best_hp.v_loss_layer == 3 and best_hp.mom2_n_samples == 100000


def test_memit_and_hybrid_export_as_easyedit_memit(tmp_path):
    """A MEMIT best setting is exported as EasyEdit MEMIT hparams (the window as `layers`, λ as
    mom2_update_weight); a hybrid one as both files, each saying EasyEdit cannot run the hybrid."""
    base = EditHParams()
    memit = base.replace(method="memit", layer=1, window_size=3, mom2_update_weight=250.0)
    paths = export_best(_study([(0.9, memit, 0), (0.5, base, 0)]), StudyConfig(), out_dir=tmp_path / "m")
    assert [p.name for p in paths] == ["study.yaml", "memit_hparams.yaml"]
    hp = _load_strict(paths[1], EasyEditMEMITHyperParams)
    assert hp.alg_name == "MEMIT" and hp.layers == [1, 2, 3] and hp.mom2_update_weight == 250.0
    assert hp.v_lr == memit.v_lr and hp.clamp_norm_factor == memit.clamp_norm_factor
    assert "EasyEdit reproduces this setting" in paths[1].read_text()
    hybrid = base.replace(method="hybrid", window_size=2, clamp_norm_factor=9.0, hybrid_clamp_norm_factor=1.5)
    paths = export_best(_study([(0.9, hybrid, 0)]), StudyConfig(), out_dir=tmp_path / "h")
    assert [p.name for p in paths] == ["study.yaml", "rome_hparams_rome_tuner_only.yaml", "memit_hparams.yaml"]
    for path in paths[1:]:
        assert "CANNOT reproduce" in path.read_text() and "method: hybrid" in path.read_text()
    assert _load_strict(paths[2], EasyEditMEMITHyperParams).layers == [1, 2]
    # each pass with its own clamp, as MEMIT and ROME measure it
    assert _load_strict(paths[1]).clamp_norm_factor == 9.0
    assert _load_strict(paths[2], EasyEditMEMITHyperParams).clamp_norm_factor == 1.5
