"""MEMIT (Meng et al. 2023) on ROME's steps: the window of layers (``window``), the keys and the
residual stream at the window's top (``keys``), one layer's least-squares update (``solve``) and
the plan that spreads the residual over the window (``plan``)."""
