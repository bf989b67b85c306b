"""One trial: edit the study's K facts with the suggested hyperparameters and score them
(``tuner.metrics.scoring``: by default CounterFact's harmonic mean of efficacy — with the
stability term final_prob − λ·rebound — paraphrase and neighbourhood terms; constraints
against the model's own references). The K facts' v* are optimised together in one batch
(``Editor.plan_many``); every ``PRUNE_EVERY`` steps their mean P(new) is reported, so the
pruner can stop a hopeless trial before it pays for the rest of the optimisation. Each edit is
then scored alone (``Editor.evaluate_many``) — or, with ``facts.mode`` batch or sequential,
every fact on the final model (``tuner.edit.modes``).
Everything needed to reproduce the trial lands in its user attributes."""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from tuner.errors import EditError
from tuner.facts.schema import Fact
from tuner.metrics.record import AT_EDIT, MEANS, STORED
from tuner.metrics.scoring import Thresholds
from tuner.signals import checkpoint
from tuner.study.config import StudyConfig
from tuner.study.space import SearchSpace


def feasible(trial: Any) -> bool:
    """Every constraint ≤ 0 (``tuner.metrics.scoring``: disabling edits, specificity against the
    references, the absolute guard when set, a non-edit)."""
    return all(c <= 0 for c in trial.user_attrs.get(CONSTRAINTS, [0]))


def best_first(items: Any, value: Callable[[Any], float], number: Callable[[Any], int], *,
               maximize: bool = True) -> list[Any]:
    """The one "best" order of trials (or their records): by value, best first, ties to the
    earlier trial. The export, the validation's top-K, a warm start, the progress bar's best and
    the report all rank with it (feasibility is filtered by the caller: ``feasible``)."""
    sign = -1 if maximize else 1
    return sorted(items, key=lambda x: (sign * value(x), number(x)))


def constraints(trial: Any) -> list[float]:
    """The sampler's ``constraints_func`` (Optuna < 5)."""
    return list(trial.user_attrs.get(CONSTRAINTS, [0.0]))


CONSTRAINTS = "constraints"
PRUNE_EVERY = 5
"""Optimisation steps between two intermediate values reported to the pruner."""


def _rounded(x: Any) -> Any:
    return round(x, 5) if isinstance(x, float) else x


def _still_running(trial: Any) -> bool:
    """The trial is still RUNNING in the storage (not failed as stale by another worker, not
    deleted with its study): only then are its attributes written."""
    from optuna.trial import TrialState

    try:
        return trial.study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING
    except KeyError:  # the study was deleted
        return False


class Objective:
    def __init__(self, cfg: StudyConfig, editor: Any, facts: list[Fact], space: SearchSpace, *,
                 fingerprint: str, device: str, thresholds: Thresholds | None = None) -> None:
        self.cfg, self.editor, self.facts, self.space = cfg, editor, facts, space
        if editor.disabling != cfg.disabling_rule():
            raise ValueError("the editor judges disabling edits with other thresholds than the study's "
                             "(edit with cfg.load_model(), whose editors carry them)")
        self.thresholds = thresholds
        """The references' measures the relative guards compare with (``tuner.study.references``)."""
        self.fingerprint, self.device = fingerprint, device
        self.worker = {"host": socket.gethostname(), "pid": os.getpid(), "device": device}
        self.current: int | None = None  # number of the trial being run, for interrupt handling

    def _on_step(self, trial: Any, step: int, probs: list[float], n_steps: int) -> None:
        """After every forward pass of the v* optimisation: the interrupt checkpoint, then the
        pruner's intermediate values (``_report``)."""
        checkpoint()  # Ctrl-C / SIGTERM take effect here
        self._report(trial, step, probs, n_steps)

    def _report(self, trial: Any, step: int, probs: list[float], n_steps: int) -> None:
        """The pruner's intermediate values: every ``PRUNE_EVERY`` steps the mean P(new) so far
        (step = forward passes), or for ``pruner: wilcoxon`` each fact's P(new) once, after
        ``pruner_warmup`` forward passes (step = the fact's index: facts are its paired
        instances). Raises ``optuna.TrialPruned`` when the pruner says so."""
        import optuna

        done = step + 1
        if self.cfg.objective.multi_objective or self.cfg.pruner == "none" or done > n_steps:
            return
        if self.cfg.pruner == "wilcoxon":
            if done != min(self.cfg.pruner_warmup, n_steps):
                return
            for i, p in enumerate(probs):
                trial.report(p, step=i)
        elif done % PRUNE_EVERY:
            return
        else:
            trial.report(sum(probs) / len(probs), step=done)
        if trial.should_prune():
            raise optuna.TrialPruned(f"mean P(new) {sum(probs) / len(probs):.4f} after {done} steps")

    def start(self, trial: Any) -> Any:
        """The trial's setting, suggested and stored with the worker and the facts."""
        hp = self.space.suggest(trial, self.cfg.hparams)
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("hparams", hp.to_dict())
        trial.set_user_attr("fingerprint", self.fingerprint)
        trial.set_user_attr("facts", [f.case_id for f in self.facts])
        return hp

    def __call__(self, trial: Any) -> float | tuple[float, float]:
        self.current = trial.number
        hp = self.start(trial)
        return self.finish(trial, hp, lambda: self.alone(trial, hp))

    def alone(self, trial: Any, hp: Any) -> list[Any]:
        """The trial's edit results, computed on their own: v* of all K facts in one
        optimisation, pruned on its trajectory; then every edit scored alone (in shared batches)."""
        from tuner.study.references import edit_metrics

        return edit_metrics(self.editor, self.cfg, self.facts, hp,
                            on_step=lambda step, probs: self._on_step(trial, step, probs, hp.v_num_grad_steps))

    def batch(self, trials: list[Any], hps: list[Any]) -> list[Callable[[], list[Any]]]:
        """Several started trials run as one batch (``tuner.edit.modes.run_trials``: one v*
        optimisation and one scoring pass for all trials sharing a layer; a trial MEMIT, the
        hybrid or a non-independent mode needs runs alone). Returns, per trial, what ``finish``
        computes: its results, or raises its ``optuna.TrialPruned``. A signal aborts the whole
        batch (``Interrupted``); any other error too, and the caller runs the trials alone."""
        from tuner.edit.modes import batch_key

        outcome: dict[int, Any] = {}
        groups: dict[Any, list[int]] = {}
        for i, hp in enumerate(hps):
            key = batch_key(hp, self.cfg.facts.mode)
            groups.setdefault(key if key is not None else ("alone", i), []).append(i)
        for key, members in groups.items():
            if key[0] == "alone":
                outcome[members[0]] = self.alone(trials[members[0]], hps[members[0]])
            else:
                outcome.update(self._group(trials, hps, members))

        def result_of(i: int) -> Callable[[], list[Any]]:
            def get() -> list[Any]:
                if isinstance(outcome[i], Exception):
                    raise outcome[i]
                return outcome[i]
            return get

        return [result_of(i) for i in range(len(trials))]

    def _group(self, trials: list[Any], hps: list[Any], members: list[int]) -> dict[int, Any]:
        """``members`` (indices into ``trials``, one ``batch_key``) in one ``run_trials`` batch:
        each trial's results, or its ``optuna.TrialPruned`` (its facts left the batch then)."""
        import optuna

        from tuner.edit.modes import run_trials

        K = len(self.facts)
        pruned: dict[int, Exception] = {}

        def on_step(step: int, probs: list[float]) -> list[int]:
            checkpoint()
            stop = []
            for slot, i in enumerate(members):
                if i in pruned:
                    continue
                try:
                    self._report(trials[i], step, probs[slot * K:(slot + 1) * K], hps[i].v_num_grad_steps)
                except optuna.TrialPruned as exc:
                    pruned[i] = exc
                    stop += range(slot * K, (slot + 1) * K)
            return stop

        results = run_trials(self.editor, self.facts, [hps[i] for i in members], on_step=on_step,
                             skip=lambda: {slot for slot, i in enumerate(members) if i in pruned})
        out: dict[int, Any] = {}
        for slot, i in enumerate(members):
            if i in pruned:
                out[i] = pruned[i]
            else:
                out[i] = results[slot]
        return out

    def finish(self, trial: Any, hp: Any, compute: Callable[[], list[Any]], seconds: float | None = None
               ) -> float | tuple[float, float]:
        """Run ``compute`` (the trial's edit results), store everything a trial records and
        return its value; on an error the reason is stored and the error raised. ``seconds``:
        the trial's share of a batch's wall time (default: the time ``compute`` took)."""
        from tuner.metrics.scoring import score_metrics

        per_fact: list[dict[str, Any]] = []
        trajectories: list[dict[str, list[float]]] = []
        score = None
        t0 = time.perf_counter()
        try:
            self._collect(trial, compute(), per_fact, trajectories)
        except BaseException as exc:
            _record_failure(trial, exc)
            raise
        finally:
            if per_fact:
                score = score_metrics(per_fact, self.cfg.objective, self.thresholds)
            # a trial failed elsewhere meanwhile (judged stale while this worker was frozen or cut
            # off) gets nothing more: its retry is another trial, and run_trial drops this result
            if _still_running(trial):
                _store(trial, hp, per_fact, trajectories, score,
                       round(seconds if seconds is not None else time.perf_counter() - t0, 3))
        if score is None:  # no fact was edited (an empty fact list is refused at launch)
            raise EditError("no fact was edited")
        return self._value(score, per_fact)

    def _collect(self, trial: Any, results: list[Any], per_fact: list[dict[str, Any]],
                 trajectories: list[dict[str, list[float]]]) -> None:
        """Each fact's stored metrics and rounded trajectory, appended as they are read (a
        failure on a later fact keeps the earlier ones)."""
        for i, (fact, result) in enumerate(zip(self.facts, results)):
            if i == 0:
                trial.set_user_attr("context_templates", result.context_templates)
            m = {k: _rounded(result.metrics[k]) for k in STORED}
            m.update({k: _rounded(result.metrics[k]) for k in AT_EDIT if k in result.metrics})
            m["case_id"] = fact.case_id
            m["seconds"] = m["compute_seconds"] = round(sum(result.timings.values()), 4)  # its share
            if not math.isfinite(result.metrics["final_prob"]):
                raise EditError(f"non-finite probability on fact {fact.case_id}")
            per_fact.append(m)
            trajectories.append({"prob": [round(p, 4) for p in result.trajectory["prob"]],
                                 "loss": [round(v, 4) for v in result.trajectory["loss"]]})

    def _value(self, score: Any, per_fact: list[dict[str, Any]]) -> float | tuple[float, float]:
        obj = self.cfg.objective
        if obj.multi_objective:
            from tuner.metrics.scoring import RESOLUTION, stability_value

            stability = sum(stability_value(m, obj) for m in per_fact) / len(per_fact)
            return (round(stability, RESOLUTION),
                    round(score.specificity, RESOLUTION) if score.specificity is not None else 1.0)
        return score.value


def _record_failure(trial: Any, exc: BaseException) -> None:
    """The one-line reason of a failed trial, on the trial (not for a pruned one, nor one that
    another worker finished meanwhile: that error is raised as it is)."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError

    if isinstance(exc, UpdateFinishedTrialError):
        return  # the trial was finished elsewhere: nothing more can be recorded on it
    if not isinstance(exc, optuna.TrialPruned) and _still_running(trial):
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "out of memory" in reason.lower():
            reason = f"out of memory: {reason}"
        trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {reason}"[:500])


def _store(trial: Any, hp: Any, per_fact: list[dict[str, Any]], trajectories: list[dict[str, list[float]]],
           score: Any, seconds: float) -> None:
    """Everything a trial records: per-fact metrics, trajectories, timings, and with a score
    its constraints (for tuner and for Optuna's samplers), note and means."""
    from tuner.metrics.scoring import CONSTRAINT_NAMES
    from tuner.study.notes import save_trial_note

    trial.set_user_attr("per_fact", per_fact)
    trial.set_user_attr("trajectory", trajectories)
    trial.set_user_attr("seconds", seconds)
    trial.set_user_attr("compute_seconds", round(sum(m["compute_seconds"] for m in per_fact), 3))
    if score is None:
        return
    trial.set_user_attr("score", score.to_dict())
    constraint = list(score.constraints)
    trial.set_user_attr(CONSTRAINTS, constraint)  # what tuner's own best-trial logic reads
    if hasattr(trial, "set_constraint"):  # Optuna ≥ 5: what its samplers read
        for name, value in zip(CONSTRAINT_NAMES, constraint):
            trial.set_constraint(name, value)
    save_trial_note(trial, per_fact, hp)
    n = len(per_fact)
    mean = {k: _rounded(sum(m[k] or 0.0 for m in per_fact) / n) for k in MEANS}
    kept = [m["efficacy"] for m in per_fact if m.get("efficacy_at_edit")]
    if kept:  # sequential: of the facts edited successfully, the share still edited at the end
        mean["retention"] = _rounded(sum(kept) / len(kept))
    trial.set_user_attr("mean", mean)
