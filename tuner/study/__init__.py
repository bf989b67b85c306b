"""The tuning service: an Optuna study in a SQL storage, workers that run ROME edits per trial.

- ``storage``    URL normalisation (``--storage`` / ``TUNER_STORAGE``), RDB storage with heartbeats
- ``space``      the search space from the study YAML → Optuna distributions
- ``objective``  one trial: edit K facts, score = final_prob − λ·rebound, prune on the running mean
- ``worker``     load the model once, run trials while the global budget allows
- ``launch``     create/resume the study, start local workers, one progress bar
- ``export``     best hyperparameters as a study YAML and an EasyEdit ROME hparams YAML
"""
