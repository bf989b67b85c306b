"""ROME (Meng et al. 2022) in files named after the paper's steps, and MEMIT on top of them.

- ``hparams``      every hyperparameter declared once (``KNOBS``), named presets
- ``hooks``        read or edit a module's input/output; hooks always removed
- ``module_io``    a module's input and output at one token per prompt
- ``adapters``     per-family module-name templates and tensor layout, as data
- ``tokens``       prompt batching that is correct for left padding and prefix tokens
- ``layer_stats``  second-moment statistics C = E[k kᵀ], every layer in one pass, cached as safetensors
- ``context``      seeded context templates sampled from the model
- ``compute_k``    k*: the key at the subject's last token, averaged over contexts
- ``compute_v``    v*: the optimised value vector, with the full per-step trajectory; many facts in one batch
- ``prefix``       the blocks below the edit layer run once and are replayed at every step
- ``rank_one``     the rank-one update, restored bit-exactly on exit; per-row updates for batched scoring
- ``memit``        MEMIT (Meng et al. 2023): many facts in one update per layer over a window of layers
- ``evaluate``     CounterFact metrics and stability measures
- ``fluency``      generation entropy and the disabling-edit rule
- ``editor``       ``Editor``: one model loaded once, many edits
- ``causal_trace`` where the model recalls a fact (``tuner trace``)
"""

from tuner.rome.hparams import ROMEHyperParams

__all__ = ["ROMEHyperParams"]
