"""Best hyperparameters out of a study: the study's own YAML (search removed, best values
fixed) and an EasyEdit-compatible ROME hparams YAML, both under ``storage/best/<study>/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tuner.config import StudyConfig
from tuner.errors import StudyError
from tuner.paths import atomic_write_text, storage_root


def best_trial(study: Any) -> Any:
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        raise StudyError(f"study {study.study_name!r} has no completed trial yet")
    if len(study.directions) > 1:
        return max(study.best_trials, key=lambda t: t.values[0])
    return study.best_trial


def easyedit_hparams(cfg: StudyConfig, hp: dict[str, Any], adapter: Any, n_layers: int) -> dict[str, Any]:
    return {
        "alg_name": "ROME",
        "model_name": cfg.model.name,
        "stats_dir": "./data/stats",
        "device": 0,
        "layers": [hp["layer"]],
        "fact_token": hp["fact_token"],
        "v_num_grad_steps": hp["v_num_grad_steps"],
        "v_lr": hp["v_lr"],
        "v_loss_layer": n_layers - 1,
        "v_weight_decay": hp["v_weight_decay"],
        "clamp_norm_factor": hp["clamp_norm_factor"],
        "kl_factor": hp["kl_factor"],
        "mom2_adjustment": hp["mom2_adjustment"],
        "context_template_length_params": [list(p) for p in hp["context_template_length_params"]],
        "rewrite_module_tmp": adapter.rewrite,
        "layer_module_tmp": adapter.layer,
        "mlp_module_tmp": adapter.mlp,
        "attn_module_tmp": adapter.attn,
        "ln_f_module": adapter.final_norm,
        "lm_head_module": adapter.lm_head,
        "mom2_dataset": "wikipedia",
        "mom2_n_samples": hp["mom2_n_samples"],
        "mom2_dtype": "float32",
        "model_parallel": False,
        "fp16": cfg.model.dtype == "float16",
    }


def export_best(study: Any, cfg: StudyConfig, *, out_dir: Path | None = None) -> tuple[Path, Path]:
    from tuner.study.setup import model_adapter

    trial = best_trial(study)
    adapter, n_layers = model_adapter(cfg)
    hp = trial.user_attrs["hparams"]
    out = out_dir or storage_root() / "best" / study.study_name
    best_cfg = cfg.replace(hparams=hp, search={},
                           description=f"best of study {study.study_name!r}: trial {trial.number}, value {trial.values}")
    study_yaml = out / "study.yaml"
    atomic_write_text(study_yaml, best_cfg.to_yaml())
    easy = out / "rome_hparams.yaml"
    header = (f"# EasyEdit ROME hyperparameters from rome-tuner study {study.study_name!r}, trial {trial.number}.\n"
              f"# lr_schedule={hp['lr_schedule']} (EasyEdit has no such key: constant is its behaviour).\n")
    atomic_write_text(easy, header + yaml.safe_dump(easyedit_hparams(cfg, hp, adapter, n_layers), sort_keys=False))
    return study_yaml, easy
