"""Best hyperparameters out of a study: the study's own YAML (search removed, best values
fixed) and an EasyEdit-compatible ROME hparams YAML, both under ``storage/best/<study>/`` (written at the end of ``tuner launch``).

The EasyEdit keys come from the knob declarations (``Knob.easyedit``); knobs EasyEdit cannot
express are named, with their values, in the file's header comment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tuner.errors import StudyError
from tuner.paths import atomic_write_text, storage_root
from tuner.rome.adapters import Adapter
from tuner.rome.hparams import KNOBS, ROMEHyperParams
from tuner.study.config import StudyConfig
from tuner.study.space import SearchSpace


def best_trial(study: Any) -> Any:
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        raise StudyError(f"study {study.study_name!r} has no completed trial yet")
    if len(study.directions) > 1:
        return max(study.best_trials, key=lambda t: t.values[0])
    return study.best_trial


def easyedit_hparams(cfg: StudyConfig, hp: ROMEHyperParams, adapter: Adapter, n_layers: int) -> dict[str, Any]:
    """EasyEdit's ROME hparams: the knobs it has (by their EasyEdit names), then the model's."""
    values = hp.to_dict()
    knobs = {k.easyedit: values[name] for name, k in KNOBS.items() if k.easyedit}
    knobs["layers"] = [hp.layer]  # EasyEdit takes a list of layers (ROME uses one)
    return {
        "alg_name": "ROME",
        "model_name": cfg.model.name,
        "stats_dir": "./data/stats",
        "device": 0,
        **knobs,
        "v_loss_layer": n_layers - 1,
        "rewrite_module_tmp": adapter.rewrite,
        "layer_module_tmp": adapter.layer,
        "mlp_module_tmp": adapter.mlp,
        "attn_module_tmp": adapter.attn,
        "ln_f_module": adapter.final_norm,
        "lm_head_module": adapter.lm_head,
        "mom2_dataset": "wikipedia",
        "mom2_dtype": "float32",
        "model_parallel": False,
        "fp16": cfg.model.dtype == "float16",
    }


def not_expressible(hp: ROMEHyperParams) -> dict[str, Any]:
    """The knobs EasyEdit has no key for, with this setting's values."""
    return {name: getattr(hp, name) for name, k in KNOBS.items() if k.easyedit is None}


def export_best(study: Any, cfg: StudyConfig, *, out_dir: Path | None = None) -> tuple[Path, Path]:
    from tuner.models.load import model_adapter

    trial = best_trial(study)
    adapter, n_layers = model_adapter(cfg.model)
    hp = ROMEHyperParams.from_dict(trial.user_attrs["hparams"])
    out = out_dir or storage_root() / "best" / study.study_name
    best_cfg = cfg.replace(hparams=hp, search=SearchSpace(),
                           description=f"best of study {study.study_name!r}: trial {trial.number}, value {trial.values}")
    study_yaml = out / "study.yaml"
    atomic_write_text(study_yaml, best_cfg.to_yaml())
    easy = out / "rome_hparams.yaml"
    header = (f"# EasyEdit ROME hyperparameters from rome-tuner study {study.study_name!r}, trial {trial.number}.\n"
              "# Settings EasyEdit has no key for (its behaviour is the default in brackets):\n"
              + "".join(f"#   {name}: {value}  [{KNOBS[name].default}]\n" for name, value in not_expressible(hp).items()))
    atomic_write_text(easy, header + yaml.safe_dump(easyedit_hparams(cfg, hp, adapter, n_layers), sort_keys=False))
    return study_yaml, easy
