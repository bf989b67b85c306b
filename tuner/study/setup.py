"""Create or load the study. The study carries its own config (user attr ``config``) and trial
budget, so a worker on another machine needs only the storage URL and the study name.

    tuner launch --create-only --storage URL      # create it (idempotent), run nothing"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from tuner.errors import ConfigError, StudyError
from tuner.study.config import StudyConfig
from tuner.study.space import SearchSpace
from tuner.study.storage import redact, study_names

N_STARTUP = 10  # seeded random trials enqueued at creation: the same first trials for any worker count


def config_hash(cfg: StudyConfig) -> str:
    d = cfg.to_dict()
    d.pop("base_dir")
    d.pop("trials")
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_study_name(name: str) -> None:
    """A study name becomes a directory under the storage root (reports, exports): only a safe
    pattern, so nothing is ever written outside it."""
    if not STUDY_NAME.match(name or ""):
        raise ConfigError(f"study name {name!r} is not allowed: use up to 100 letters, digits, '-', '_' or '.', "
                          "starting with a letter or digit")


def validate_study(cfg: StudyConfig, name: str) -> SearchSpace:
    """Everything a study needs, checked before anything is written: name, search space against
    the model's depth, the fact file and its records, the fact count, the model's files (cheap
    header reads), the statistics corpus when C⁻¹ may be used. Returns the bound search space."""
    from tuner.errors import ModelBuildError

    check_study_name(name)
    space = bound_space(cfg)
    cfg.select_facts()
    if cfg.model.is_default:
        from tuner.models.build import BuildSpec, check_cached, model_dir

        kb = cfg.resolve(cfg.model.kb)
        if not kb.is_file():
            raise ConfigError(f"model.kb not found: {kb}")
        cached = model_dir(BuildSpec(arch=cfg.model.arch, kb=str(kb)))
        if (cached / "meta.json").exists():
            check_cached(cached)
    else:
        from pathlib import Path

        from tuner.models.build import check_weights

        if Path(cfg.model.name).is_dir():
            try:
                check_weights(Path(cfg.model.name), "check the checkpoint's files")
            except ModelBuildError as exc:
                raise ConfigError(str(exc)) from None
        searched = next((d for d in space.dimensions if d.name == "mom2_adjustment"), None)
        uses_c = cfg.hparams.mom2_adjustment or (searched is not None and True in searched.choices)
        if uses_c and not cfg.model.stats_corpus:
            raise ConfigError("mom2_adjustment needs a statistics corpus: set model.stats_corpus (a text file, one "
                              "document per line) or hparams.mom2_adjustment: false")
    if cfg.model.stats_corpus:
        corpus = cfg.resolve(cfg.model.stats_corpus)
        if not corpus.is_file() or not corpus.stat().st_size:
            raise ConfigError(f"model.stats_corpus {corpus} is missing or empty")
    return space


def check_local_dirs(cfg: StudyConfig, name: str) -> None:
    """Every local directory a launch writes to after creating the study — the default model's
    cache and its lock file, the statistics cache (when C⁻¹ may be used), the exported setting and
    the report — must be writable, checked before any row is written (a read-only ``TUNER_HOME``
    with PostgreSQL storage otherwise left a study behind). Writes nothing: the probe is an
    unnamed temporary file in the nearest existing directory."""
    import tempfile
    from pathlib import Path

    from tuner.paths import storage_root

    root = storage_root()
    targets = [root / "best" / name, root / "reports" / name]
    if cfg.model.is_default:
        from tuner.models.build import BuildSpec, model_dir

        targets.append(model_dir(BuildSpec(arch=cfg.model.arch, kb=str(cfg.resolve(cfg.model.kb)))).parent)
    searched = next((d for d in cfg.search.dimensions if d.name == "mom2_adjustment"), None)
    if cfg.hparams.mom2_adjustment or (searched is not None and True in (searched.choices or ())):
        targets.append(root / "stats")
    for target in targets:
        existing = next((q for q in (target, *target.parents) if q.exists()), Path("."))
        try:
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as exc:
            raise ConfigError(f"cannot write {target} (for the model cache, statistics, exports and reports under "
                              f"TUNER_HOME={root}): {existing} is not writable ({exc.strerror}); set TUNER_HOME to a "
                              "writable directory") from None


def bound_space(cfg: StudyConfig) -> SearchSpace:
    """The study's search space checked against its model's depth (read without loading weights)."""
    from tuner.models.load import model_adapter

    depth = model_adapter(cfg.model)[1]
    space = cfg.search.bind(depth)
    if "layer" not in space.names and cfg.hparams.layer >= depth:
        raise ConfigError(f"hparams.layer {cfg.hparams.layer} exceeds the model's {depth} layers")
    hp = cfg.hparams
    if (hp.method != "rome" and "method" not in space.names and "layer" not in space.names
            and "window_size" not in space.names and hp.layer + hp.window_size > depth):
        raise ConfigError(f"hparams.layer {hp.layer} + window_size {hp.window_size} exceeds the model's {depth} "
                          f"layers (MEMIT's window must end at layer {depth - 1} or below)")
    return space


def make_sampler(cfg: StudyConfig, seed: int | None = None) -> Any:
    import optuna

    from tuner.study.objective import constraints

    seed = cfg.seed if seed is None else seed
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # Trials with a disabling edit are infeasible: the sampler learns to avoid them. Optuna 5 reads
    # the constraint the objective sets on the trial; older versions need constraints_func.
    extra = {} if int(optuna.__version__.split(".")[0]) >= 5 else {"constraints_func": constraints}
    if cfg.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, **extra)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=N_STARTUP, **extra)


def make_pruner(cfg: StudyConfig) -> Any:
    import optuna

    if cfg.pruner == "none" or cfg.objective.multi_objective:
        return optuna.pruners.NopPruner()
    from tuner.study.objective import PRUNE_EVERY

    # the resource is optimisation steps (intermediate values every PRUNE_EVERY steps)
    steps = next((d.high for d in cfg.search.dimensions if d.name == "v_num_grad_steps"), None)
    max_steps = int(steps or cfg.hparams.v_num_grad_steps)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=PRUNE_EVERY, max_resource=max(PRUNE_EVERY, max_steps))
    if cfg.pruner == "wilcoxon":  # per-fact P(new) at one checkpoint, paired with the best trial's facts
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=cfg.facts.per_trial // 2)
    warmup = cfg.pruner_warmup - 1  # Optuna prunes at steps > n_warmup_steps: the first check is at pruner_warmup
    if cfg.pruner == "percentile":  # looser than the median: only a trial below the 25th percentile stops
        return optuna.pruners.PercentilePruner(25.0, n_startup_trials=N_STARTUP, n_warmup_steps=warmup)
    return optuna.pruners.MedianPruner(n_startup_trials=N_STARTUP, n_warmup_steps=warmup)


def directions(cfg: StudyConfig) -> list[str]:
    return ["maximize", "maximize"] if cfg.objective.multi_objective else ["maximize"]


def metric_names(cfg: StudyConfig) -> list[str]:
    if cfg.objective.multi_objective:
        return ["efficacy_minus_rebound", "specificity"]
    return ["score"]


def startup_params(cfg: StudyConfig, space: SearchSpace, budget: int,
                   layer_seeds: list[int] | None = None, warm: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The first trials, identical whatever the number of workers: ROME's textbook setting and
    the model family's EasyEdit defaults (their searched values, clipped into the space), the ``warm`` trials (another study's best), then draws by Optuna's RandomSampler (seeded with
    the study's seed) through the same ``suggest`` as every trial, all enqueued at creation. At
    most a fifth of the budget, so retried trials (queued behind them) still run."""
    import optuna

    from tuner.hparams import easyedit_preset_name, preset
    from tuner.models.load import model_adapter

    out = []
    if space.dimensions:  # warm start: the settings users start from come first, so the sampler learns from them
        adapter, depth = model_adapter(cfg.model)
        for name in ("textbook", easyedit_preset_name(adapter.family)):
            clipped = space.clip(preset(name, cfg.hparams, n_layers=depth))
            if clipped not in out:
                out.append(clipped)
        for params in warm or []:  # --warm-start-from: another study's best trials
            clipped = space.clip(params)
            if clipped and clipped not in out:
                out.append(clipped)
    draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=cfg.seed))
    for i in range(min(N_STARTUP, max(1, budget // 5)) - len(out) if space.dimensions else 0):
        trial = draws.ask()
        space.suggest(trial, cfg.hparams)
        params = dict(trial.params)
        if layer_seeds and "layer" in params:  # causal-trace seeding: the draws start at the top MLP layers
            params["layer"] = layer_seeds[i % len(layer_seeds)]
        out.append(params)
    return out


def warm_start_params(storage: Any, url: str, name: str, top: int = 5) -> list[dict[str, Any]]:
    """The parameters of study ``name``'s ``top`` best complete feasible trials (best first)."""
    import optuna

    if name not in study_names(storage):
        raise StudyError(f"--warm-start-from: study {name!r} not found in {redact(url)}")
    from tuner.study.export import ranked_trials

    study = optuna.load_study(study_name=name, storage=storage)
    return [dict(t.params) for t in ranked_trials(study)[:top]]


def create_or_resume(storage: Any, url: str, cfg: StudyConfig, name: str, budget: int,
                     trace: dict[str, Any] | None = None, top_k: int = 2,
                     warm: list[dict[str, Any]] | None = None) -> tuple[Any, bool]:
    """(study, created). Refuses to resume a study made from a different config."""
    import optuna

    space = bound_space(cfg)
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
            layer = next((d for d in space.dimensions if d.name == "layer"), None)
            if layer is not None:
                allowed = layer.choices if layer.kind == "categorical" else range(int(layer.low), int(layer.high) + 1)
                seeds = [n for n in trace["top_mlp_layers"] if n in allowed][:top_k]
            study.set_user_attr("trace", {**{k: trace[k] for k in ("effects", "top_mlp_layers", "traced", "noise")},
                                          "seeded_layers": seeds or []})
        for params in startup_params(cfg, space, budget, seeds, warm):
            study.enqueue_trial(params, skip_if_exists=False)
    except BaseException:
        optuna.delete_study(study_name=name, storage=storage)  # never leave a half-made study
        raise
    return study, True


def load_existing(storage: Any, url: str, name: str) -> tuple[Any, StudyConfig]:
    import optuna

    check_study_name(name)
    names = study_names(storage)
    if name not in names:
        listing = ", ".join(names) if names else "none"
        raise StudyError(f"study {name!r} not found in {redact(url)} (existing: {listing}); create it with tuner launch")
    study = optuna.load_study(study_name=name, storage=storage)
    if "config" not in study.user_attrs:
        raise StudyError(f"study {name!r} was not created by tuner (no config attribute)")
    cfg = StudyConfig.from_dict(study.user_attrs["config"])
    return study, cfg
