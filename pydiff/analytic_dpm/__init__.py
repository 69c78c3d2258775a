"""Analytic-DPM (Bao, Li, Zhu, Zhang, ICLR 2022, arXiv:2201.06503) with the authors' function names and arguments
(baofff/Analytic-DPM, ``core/inference/sampler``), each step one fused pass.

* ``reverse_ddpm_ms_eps``, ``reverse_ddim_ms_eps``: Analytic-DDPM / Analytic-DDIM (the optimal variance);
* ``reverse_ddpm_naive``, ``reverse_ddim_naive``: the same trajectories with the fixed variances;
* ``estimate_ms_eps``, ``save_ms_eps``, ``load_ms_eps``: the statistic the optimal variance needs.

The mathematics (rows, variances, step choices and the DP optimal trajectory) is in
``pydiff.plans.analytic_dpm``; docs/analytic_dpm.md has the formulas, the parity and the measurements.
"""
from .ms_eps import estimate_ms_eps, load_ms_eps, save_ms_eps
from .samplers import NOISE_SOURCES, reverse_ddim_ms_eps, reverse_ddim_naive, reverse_ddpm_ms_eps, reverse_ddpm_naive

__all__ = ["NOISE_SOURCES", "estimate_ms_eps", "load_ms_eps", "reverse_ddim_ms_eps", "reverse_ddim_naive",
           "reverse_ddpm_ms_eps", "reverse_ddpm_naive", "save_ms_eps"]
