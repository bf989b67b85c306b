"""Reports: Plotly figures of a study (loss surface, trajectories, rebound map, importance,
history, per-worker timeline) as one self-contained HTML file and as optuna-dashboard figures.

- ``records``    the study's trials as plain rows (params, value, per-fact means, trajectories)
- ``surface``    the interpolated loss surface over two hyperparameters (2-D contour and 3-D)
- ``figures``    trajectories, rebound map, worker timeline, importance
- ``html``       the self-contained page (plotly.js embedded once)
- ``dashboard``  figures and per-trial notes stored in the study for optuna-dashboard
"""
