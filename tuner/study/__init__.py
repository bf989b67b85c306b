"""The tuning service: an Optuna study in a SQL storage, workers that run ROME edits per trial.

- ``config``     the study YAML as typed objects (``StudyConfig``), parsed once
- ``storage``    URL normalisation (``--storage`` / ``TUNER_STORAGE``), RDB storage with heartbeats
- ``space``      the search space from the study YAML → Optuna's ``suggest_*``
- ``objective``  one trial: edit K facts, score = final_prob − λ·rebound, prune on the running mean
- ``worker``     load the model once, run trials while the global budget allows
- ``setup``      create/resume a study (seeded first trials enqueued), samplers and pruners
- ``launch``     create/resume the study, start local workers, one progress bar
- ``notes``      the markdown note stored with each trial for optuna-dashboard
- ``trace``      causal tracing of the study's facts
- ``export``     best hyperparameters as a study YAML and an EasyEdit ROME hparams YAML
"""
