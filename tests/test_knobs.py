"""Each ROME knob is declared once (``tuner.hparams.KNOBS``) and shows up everywhere it
must: YAML validation, the search space, ``tuner edit --help``, trial notes and the export."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli
from tuner.errors import ConfigError
from tuner.hparams import EASYEDIT_DEFAULTS, KNOBS, PRESETS, EditHParams, preset
from tuner.study.config import StudyConfig
from tuner.study.export import easyedit_hparams, not_expressible
from tuner.study.notes import trial_note
from tuner.study.space import SearchSpace


@pytest.fixture(scope="module")
def edit_help() -> str:
    proc = run_cli("edit", "--help")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("name", list(KNOBS))
def test_every_knob_is_everywhere(name, edit_help):
    k = KNOBS[name]
    hp = EditHParams()
    # validation: an unknown sibling is rejected, the knob itself is accepted with its default
    assert getattr(EditHParams.from_dict({name: hp.to_dict()[name]}), name) == getattr(hp, name)
    # notes
    assert f"`{name}`" in trial_note([{"case_id": 0, "final_prob": 0.5}], hp)
    # export: an EasyEdit key, or named in the header as something EasyEdit cannot express
    from tuner.plumbing.adapters import ADAPTERS

    exported = easyedit_hparams(StudyConfig(), hp, ADAPTERS["llama"], 4)
    assert (k.easyedit in exported) if k.easyedit else (name in not_expressible(hp))
    # tuner edit --help
    if k.cli_flag:
        assert k.cli_flag in edit_help
    # the search space
    if k.searchable:
        spec = list(k.choices) if k.kind == "categorical" else {"low": 1, "high": 2}
        space, _ = SearchSpace.parse({name: spec})
        assert space.names == [name]
    else:
        with pytest.raises(ConfigError, match=f"search.{name}: unknown hyperparameter"):
            SearchSpace.parse({name: [[1, 1]]})


def test_bounds_come_from_the_declaration():
    for name, k in KNOBS.items():
        if k.min is None:
            continue
        bad = k.min if k.min_open else k.min - 1
        with pytest.raises(ConfigError, match=f"hparams.{name} must be"):
            EditHParams.from_dict({name: int(bad) if k.kind == "int" else float(bad)})
    with pytest.raises(ConfigError, match="unknown key hparams.v_lrr"):
        EditHParams.from_dict({"v_lrr": 1.0})


def test_presets_are_valid_settings():
    """Every preset (ours and EasyEdit's per family) sets exactly the values it declares, and the
    result survives the strict round trip a study file and a trial's attributes go through."""
    names = [*PRESETS, *(f"easyedit-{family}" for family in EASYEDIT_DEFAULTS)]
    base = EditHParams()
    for name in names:
        declared = (EASYEDIT_DEFAULTS[name.removeprefix("easyedit-")] if name.startswith("easyedit-")
                    else PRESETS[name]).values
        hp = preset(name, base, n_layers=48)
        assert {k: getattr(hp, k) for k in declared} == declared, name
        untouched = set(KNOBS) - set(declared) - {"layer"}
        assert {k: getattr(hp, k) for k in untouched} == {k: getattr(base, k) for k in untouched}, name
        assert EditHParams.from_dict(hp.to_dict()) == hp, name
    assert preset("textbook", n_layers=48).layer == 17  # ROME's GPT-2 XL layer
    assert preset("textbook", n_layers=4).v_num_grad_steps == 20


def test_search_fixed_value_lands_in_typed_hparams():
    cfg = StudyConfig.from_dict({"hparams": {"v_lr": 0.3}, "search": {"kl_factor": 0.5, "v_lr": {"low": 0.1, "high": 1}}})
    assert cfg.hparams.kl_factor == 0.5 and cfg.hparams.v_lr == 0.3
    assert cfg.search.names == ["v_lr"]


def test_early_stop_knob_stops_the_optimisation(tiny_editor, facts):
    """The knob added through the declaration alone: a loss threshold above the first loss
    stops after one forward pass; none runs every step."""
    ed = tiny_editor("llama")
    hp = EditHParams(layer=1, v_num_grad_steps=6, mom2_adjustment=False, context_template_length_params=((3, 2),))
    full = ed.edit(facts[0], hp)
    assert len(full.trajectory["loss"]) == 6 and full.metrics["early_stopped"] is False
    stopped = ed.edit(facts[0], hp.replace(early_stop_loss=1e6))
    assert len(stopped.trajectory["loss"]) == 1 and stopped.metrics["early_stopped"] is True
