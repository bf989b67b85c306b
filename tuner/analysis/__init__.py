"""Where a model recalls a fact: causal tracing (``causal_trace``, ``tuner trace``), whose
per-layer effects can seed a search's layer range."""
