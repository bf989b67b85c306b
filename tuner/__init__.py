"""rome-tuner: Bayesian hyperparameter search for ROME knowledge editing.

Heavy dependencies (torch, transformers, optuna, plotly) are imported lazily by the
modules that need them so that ``tuner --help`` stays instant.
"""

from tuner.errors import TunerError

__all__ = ["TunerError", "__version__"]
__version__ = "0.1.0"
