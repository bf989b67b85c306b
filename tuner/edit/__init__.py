"""Edits orchestrated: ``Editor`` holds one loaded model and its caches (statistics, solvers,
context templates, scores before the edit) and plans and scores edits; ``modes`` writes a trial's
facts by method (ROME, MEMIT, the hybrid) and mode (independent, batch, sequential)."""
