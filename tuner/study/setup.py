"""Create or load the study. The study carries its own config (user attr ``config``) and trial
budget, so a worker on another machine needs only the storage URL and the study name."""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

from tuner.config import StudyConfig
from tuner.errors import ConfigError, StudyError
from tuner.study.space import Knob, parse_space
from tuner.study.storage import redact, study_names

N_STARTUP = 10  # seeded random trials enqueued at creation: the same first trials for any worker count


def config_hash(cfg: StudyConfig) -> str:
    d = cfg.to_dict()
    d.pop("base_dir")
    d.pop("trials")
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def model_adapter(cfg: StudyConfig) -> tuple[Any, int]:
    """(adapter, number of layers) of the study's model, read without loading weights."""
    from tuner.rome.adapters import detect_adapter

    overrides = cfg.model.adapter or None
    if cfg.model.name == "default":
        from tuner.models.build import BuildSpec

        return detect_adapter(None, family=cfg.model.family or cfg.model.arch, overrides=overrides), BuildSpec().n_layers
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code,
                                            local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the config of model {cfg.model.name!r}: {str(exc).splitlines()[0]}") from None
    adapter = detect_adapter(config, family=cfg.model.family, overrides=overrides)
    return adapter, adapter.n_layers(config)


def model_depth(cfg: StudyConfig) -> int:
    return model_adapter(cfg)[1]


def validated_space(cfg: StudyConfig) -> tuple[list[Knob], dict[str, Any]]:
    depth = model_depth(cfg)
    knobs, fixed = parse_space(cfg.search, n_layers=depth)
    if "layer" not in cfg.search and cfg.base_hparams.layer >= depth:
        raise ConfigError(f"hparams.layer {cfg.base_hparams.layer} exceeds the model's {depth} layers")
    return knobs, fixed


def make_sampler(cfg: StudyConfig, seed: int | None = None) -> Any:
    import optuna

    seed = cfg.seed if seed is None else seed
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=N_STARTUP)


def make_pruner(cfg: StudyConfig) -> Any:
    import optuna

    if cfg.pruner == "none" or cfg.objective.multi_objective:
        return optuna.pruners.NopPruner()
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=cfg.facts.per_trial)
    return optuna.pruners.MedianPruner(n_startup_trials=N_STARTUP, n_warmup_steps=1)


def directions(cfg: StudyConfig) -> list[str]:
    return ["maximize", "maximize"] if cfg.objective.multi_objective else ["maximize"]


def metric_names(cfg: StudyConfig) -> list[str]:
    if cfg.objective.multi_objective:
        return ["efficacy_minus_rebound", "specificity"]
    return ["score"]


def startup_params(cfg: StudyConfig, knobs: list[Knob], budget: int,
                   layer_seeds: list[int] | None = None) -> list[dict[str, Any]]:
    """The first trials: seeded random draws, identical whatever the number of workers. At most a
    fifth of the budget, so retried trials (queued behind them) still run within it."""
    rng = random.Random(cfg.seed)
    out = []
    for _ in range(min(N_STARTUP, max(1, budget // 5)) if knobs else 0):
        params: dict[str, Any] = {}
        for k in knobs:
            if k.kind == "categorical":
                params[k.name] = rng.choice(list(k.choices))
            elif k.log:
                import math

                v = math.exp(rng.uniform(math.log(k.low), math.log(k.high)))
                params[k.name] = int(round(v)) if k.kind == "int" else v
            else:
                params[k.name] = rng.randint(int(k.low), int(k.high)) if k.kind == "int" else rng.uniform(k.low, k.high)
        if layer_seeds and "layer" in params:  # causal-trace seeding: start at the top MLP layers
            params["layer"] = layer_seeds[len(out) % len(layer_seeds)]
        out.append(params)
    return out


def create_or_resume(storage: Any, url: str, cfg: StudyConfig, name: str, budget: int,
                     trace: dict[str, Any] | None = None, top_k: int = 2) -> tuple[Any, bool]:
    """(study, created). Refuses to resume a study made from a different config."""
    import optuna

    knobs, _ = validated_space(cfg)
    if name in study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        stored = study.user_attrs.get("config_hash")
        if stored != config_hash(cfg):
            raise StudyError(
                f"study {name!r} already exists in {redact(url)} with a different config; "
                "rerun with the same --config to resume, or pick a new --study NAME"
            )
        if study.user_attrs.get("budget") != budget:
            study.set_user_attr("budget", budget)
        return study, False
    study = optuna.create_study(study_name=name, storage=storage, directions=directions(cfg),
                                sampler=make_sampler(cfg), pruner=make_pruner(cfg))
    try:
        study.set_metric_names(metric_names(cfg))
        study.set_user_attr("config", json.loads(json.dumps(cfg.to_dict())))
        study.set_user_attr("config_hash", config_hash(cfg))
        study.set_user_attr("budget", budget)
        seeds = None
        if trace is not None:
            layer_knob = next((k for k in knobs if k.name == "layer"), None)
            if layer_knob is not None:
                seeds = [l for l in trace["top_mlp_layers"] if layer_knob.low <= l <= layer_knob.high][:top_k]
            study.set_user_attr("trace", {**{k: trace[k] for k in ("effects", "top_mlp_layers", "traced", "noise")},
                                          "seeded_layers": seeds or []})
        for params in startup_params(cfg, knobs, budget, seeds):
            study.enqueue_trial(params, skip_if_exists=False)
    except BaseException:
        optuna.delete_study(study_name=name, storage=storage)  # never leave a half-made study
        raise
    return study, True


def load_existing(storage: Any, url: str, name: str) -> tuple[Any, StudyConfig]:
    import optuna

    names = study_names(storage)
    if name not in names:
        listing = ", ".join(names) if names else "none"
        raise StudyError(f"study {name!r} not found in {redact(url)} (existing: {listing}); create it with tuner launch")
    study = optuna.load_study(study_name=name, storage=storage)
    if "config" not in study.user_attrs:
        raise StudyError(f"study {name!r} was not created by tuner (no config attribute)")
    cfg = StudyConfig.from_dict(study.user_attrs["config"])
    return study, cfg
