"""Best hyperparameters out of a study: the study's own YAML (search removed, best values
fixed) and an EasyEdit-compatible ROME hparams YAML, both under ``storage/best/<study>/`` (written at the end of ``tuner launch``).

The EasyEdit keys come from the knob declarations (``Knob.easyedit``); knobs EasyEdit cannot
express are named, with their values, in the file's header comment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tuner.errors import StudyError
from tuner.hparams import ANY, KNOBS, EditHParams
from tuner.paths import atomic_write_text, storage_root
from tuner.plumbing.adapters import Adapter
from tuner.study.config import StudyConfig
from tuner.study.space import SearchSpace


def ranked_trials(study: Any, *, where: Any = None) -> list[Any]:
    """The complete, feasible trials (``tuner.study.objective.feasible``), best first by the first
    objective, ties to the earlier trial: the one ranking the export, the validation's top-K and
    a warm start use. ``where(trial)`` narrows the candidates further."""
    from optuna.trial import TrialState

    from tuner.study.objective import best_first, feasible

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values is not None and feasible(t) and (where is None or where(t))]
    return best_first(done, lambda t: t.values[0], lambda t: t.number,
                      maximize=study.directions[0].name == "MAXIMIZE")


def best_trial(study: Any, *, where: Any = None) -> Any:
    """The best complete, feasible trial; multi-objective: the best first objective."""
    done = ranked_trials(study, where=where)
    if not done:
        raise StudyError(f"study {study.study_name!r} has no completed feasible trial yet")
    return done[0]


def easyedit_hparams(cfg: StudyConfig, hp: EditHParams, adapter: Adapter, n_layers: int) -> dict[str, Any]:
    """EasyEdit's ROME hparams: the knobs it has (by their EasyEdit names), then the model's."""
    values = hp.to_dict()
    knobs = {k.easyedit: values[name] for name, k in KNOBS.items() if k.easyedit}
    knobs["layers"] = [hp.layer]  # EasyEdit takes a list of layers (ROME uses one)
    # EasyEdit's mom2_n_samples counts Wikipedia documents; rome-tuner's C counts corpus tokens
    # (mom2_n_tokens, named in the header). ROME's published setting:
    knobs["mom2_n_samples"] = EASYEDIT_MOM2_N_SAMPLES
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


EASYEDIT_MOM2_N_SAMPLES = 100000
MEMIT_ONLY = ("method", "window_size", "mom2_update_weight")
"""Knobs the MEMIT file expresses itself (``layers`` is the window, λ has EasyEdit MEMIT's key)."""


def easyedit_memit_hparams(cfg: StudyConfig, hp: EditHParams, adapter: Adapter, n_layers: int) -> dict[str, Any]:
    """EasyEdit's MEMIT hparams: the v* knobs as for ROME, the window as ``layers``, λ; a hybrid's
    MEMIT pass with its own clamp (``hybrid_clamp_norm_factor``)."""
    from tuner.memit.window import window

    hp = hp.memit_pass()
    d = easyedit_hparams(cfg, hp, adapter, n_layers)
    d.pop("context_template_length_params", None)  # EasyEdit's MEMIT has no such field
    return {**d, "alg_name": "MEMIT", "layers": window(hp, n_layers), "layer_selection": "all",
            "mom2_update_weight": hp.mom2_update_weight}


def not_expressible(hp: EditHParams) -> dict[str, Any]:
    """The knobs EasyEdit has no key for, with this setting's values."""
    return {name: getattr(hp, name) for name, k in KNOBS.items() if k.easyedit is None}


@dataclass(frozen=True)
class Choice:
    """A setting chosen for export: a trial or a reference, and how it was chosen."""

    label: str
    hp: EditHParams
    what: str
    trial: int | None = None


def _write_easyedit(path: Path, study: Any, choice: Choice, cfg: StudyConfig, adapter: Adapter, n_layers: int,
                    alg: str = "ROME") -> None:
    memit, hp = alg == "MEMIT", choice.hp
    # the file's algorithm stands for `method` (a hybrid none of EasyEdit's files can run)
    expressible = hp.method != "hybrid" and hp.replace(method="rome").reproducible_in_easyedit()
    lines = [f"# EasyEdit {alg} hyperparameters from rome-tuner study {study.study_name!r}: {choice.label}, "
             f"{choice.what}.",
             "# EasyEdit " + ("reproduces this setting." if expressible else
                              "CANNOT reproduce this setting: it has no key for the starred knobs below."),
             "# rome-tuner knobs EasyEdit has no key for (EasyEdit's behaviour in brackets):"]
    if hp.method == "hybrid":
        lines.append(f"#   method: hybrid  [no such method] * — ROME at layer {hp.layer} (rome_hparams.yaml), then "
                     "MEMIT (memit_hparams.yaml) for the facts whose ROME edit falls short: P(new) < "
                     f"{hp.hybrid_min_prob} or rebound > {hp.hybrid_max_rebound}; the MEMIT pass's clamp is "
                     "hybrid_clamp_norm_factor")
    for name, value in not_expressible(hp).items():
        if memit and name in MEMIT_ONLY or name.startswith("hybrid_") or name == "method":
            continue
        k = KNOBS[name]
        behaves = "any value" if k.easyedit_behaviour is ANY else k.easyedit_behaviour
        star = "" if k.easyedit_behaviour is ANY or value == k.easyedit_behaviour else " *"
        lines.append(f"#   {name}: {value}  [{behaves}]{star}")
    lines.append(f"# mom2_n_samples below is ROME's Wikipedia document count; rome-tuner's C used "
                 f"{hp.mom2_n_tokens} tokens of its own corpus.")
    make = easyedit_memit_hparams if memit else easyedit_hparams
    body = yaml.safe_dump(make(cfg, hp, adapter, n_layers), sort_keys=False)
    atomic_write_text(path, "\n".join(lines) + "\n" + body)


def _figures(row: dict[str, Any], n: int) -> str:
    return (f"held-out S {row['S']:.3f} on {n} facts (efficacy {row['efficacy']:.3f}, paraphrase "
            f"{row['paraphrase'] if row['paraphrase'] is None else round(row['paraphrase'], 3)}, specificity "
            f"{row['specificity'] if row['specificity'] is None else round(row['specificity'], 3)}, value "
            f"{row['value']:.4f})")


def choices(study: Any) -> tuple[Choice, Choice | None]:
    """(the exported setting, the best one EasyEdit reproduces): chosen on the held-out facts when
    the study was validated (``tuner.study.validate``: a reference when one beats every tuned
    setting), else the best feasible trials on the tuning facts."""
    record = study.user_attrs.get(HOLDOUT)
    if record and record.get("winner") is not None:
        rows = {r["label"]: r for r in record["rows"]}
        n = len(record["facts"])

        def pick(label: str, how: str) -> Choice:
            row = rows[label]
            return Choice(label, EditHParams.from_dict(row["hparams"]), f"{how}: {_figures(row, n)}", row["trial"])

        main = pick(record["winner"], f"the best of the top {record['top']} trials and the references on the "
                                      "held-out facts")
        twin = record.get("easyedit_winner")
        return main, (pick(twin, "the best setting EasyEdit reproduces on the held-out facts") if twin else None)
    trial = best_trial(study)
    main = Choice(f"trial #{trial.number}", EditHParams.from_dict(trial.user_attrs["hparams"]),
                  f"the best trial on the tuning facts (value {trial.values[0]:.4f})", trial.number)
    try:
        t = best_trial(study, where=lambda t: EditHParams.from_dict(t.user_attrs["hparams"])
                       .reproducible_in_easyedit())
    except StudyError:
        return main, None
    return main, Choice(f"trial #{t.number}", EditHParams.from_dict(t.user_attrs["hparams"]),
                        f"the best trial EasyEdit reproduces on the tuning facts (value {t.values[0]:.4f})", t.number)


ROME_TUNER_ONLY = "rome_hparams_rome_tuner_only.yaml"
STALE = ("rome_hparams.yaml", ROME_TUNER_ONLY, "memit_hparams.yaml", "rome_hparams_easyedit.yaml")


def export_best(study: Any, cfg: StudyConfig, *, out_dir: Path | None = None) -> list[Path]:
    """``study.yaml`` (the exported setting fixed), ``rome_hparams.yaml`` (the best setting
    EasyEdit reproduces), ``rome_hparams_rome_tuner_only.yaml`` (the exported setting, when
    EasyEdit cannot reproduce it) and ``memit_hparams.yaml`` (MEMIT and the hybrid)."""
    from tuner.models.load import model_adapter

    main, twin = choices(study)
    adapter, n_layers = model_adapter(cfg.model)
    out = out_dir or storage_root() / "best" / study.study_name
    best_cfg = cfg.replace(hparams=main.hp, search=SearchSpace(),
                           description=f"{main.label} of study {study.study_name!r}: {main.what}")
    written = [out / "study.yaml"]
    atomic_write_text(written[0], best_cfg.to_yaml())
    for name in STALE:  # an earlier export's files must not be mistaken for this one's
        (out / name).unlink(missing_ok=True)
    if main.hp.method in ("rome", "hybrid"):
        reproducible = main.hp.method == "rome" and main.hp.reproducible_in_easyedit()
        if not reproducible:
            written.append(out / ROME_TUNER_ONLY)
            _write_easyedit(written[-1], study, main, cfg, adapter, n_layers)
        ee = main if reproducible else twin
        if ee is not None and ee.hp.method == "rome":
            written.append(out / "rome_hparams.yaml")
            _write_easyedit(written[-1], study, ee, cfg, adapter, n_layers)
    if main.hp.method in ("memit", "hybrid"):
        written.append(out / "memit_hparams.yaml")
        _write_easyedit(written[-1], study, main, cfg, adapter, n_layers, alg="MEMIT")
    return written


HOLDOUT = "holdout"
"""The study user attribute holding the last held-out validation (``tuner.study.validate``)."""
