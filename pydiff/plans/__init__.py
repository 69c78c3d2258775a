"""Coefficient plans: a sampler's per-step scalars, computed once, in float64, before the loop.

Schedules (``pydiff.schedules``) -> plans (this package: float64 ``(R, NCOEF)`` tables, one row per step or
per timestep value) -> one fused kernel per step (``pydiff.ops``). The table is copied to the device once;
the sampling loop only selects rows (by a Python int, or by a device tensor through ``fused_step(index=)``),
so it performs no ``.item()``, no host sync and no host-to-device copy per step.

* ``rows``: the row builder and the finiteness check;
* ``conversions``: x0 / eps / v / score as each other;
* ``ddim_ddpm``: DDIM and DDPM rows;
* ``dpm_solver``: the DPM-Solver(++) update rules (both faces use them);
* ``dpm_solver_plan``: the authors'-API plan compiler (grids, orders, stages);
* ``dpm_solver_diffusers``: the rows of diffusers' DPM-Solver schedulers;
* ``score_sde``: the score-SDE time grid, model labels, predictor and Langevin rows;
* ``guided``: guided-diffusion's spacing, tables, ancestral and DDIM rows with classifier guidance, learned-range
  variances and classifier-free guidance;
* ``analytic_dpm``: Analytic-DPM's rows, optimal variance, step choices and DP optimal trajectory.
"""
from .ddim_ddpm import (DDPM_VARIANCE_TYPES, PREDICTION_TYPES, ddim_rows, ddim_rows_from, ddim_scalars, ddpm_rows,
                        ddpm_rows_from, ddpm_scalars)
from .rows import RowBuilder, check_finite, finite_rows

__all__ = ["DDPM_VARIANCE_TYPES", "PREDICTION_TYPES", "RowBuilder", "check_finite", "ddim_rows", "ddim_rows_from",
           "ddim_scalars", "ddpm_rows", "ddpm_rows_from", "ddpm_scalars", "finite_rows"]
