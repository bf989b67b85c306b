"""Models: the embedded default model (trained here, deterministically) and loading of real
checkpoints from a local path or the user's HF cache."""
