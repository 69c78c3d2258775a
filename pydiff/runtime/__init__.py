"""Running a plan, independent of any face: buffers, the model call, history, corrections, the adaptive loop.

* ``runner``: ``Runner`` executes a compiled stage list (``pydiff.plans.dpm_solver_plan``) on fused steps,
  with the ``x0`` corrections (fused dynamic thresholding, or a user callable between two fused steps);
* ``adaptive``: the adaptive step size DPM-Solver-12/23 loop (one host sync per attempt);
* ``rk45``: a device-resident Dormand-Prince 5(4) integrator with scipy's RK45 step control, its stage
  combinations and error estimate as fused steps (one host sync per attempt; the score-SDE ODE sampler uses it);
* ``layout``: the memory layout a reference's sample would have, so that a face draws its ``randn_like`` in it.

The runtime asks its ``solver`` (any object) for ``_stage_model(x, t)``, ``_guidance()`` (a classifier-free
guidance scale when ``_stage_model`` returns an output pair, else None), ``correcting_x0_fn``,
``correcting_xt_fn``, ``dynamic_thresholding_ratio`` and ``backend``; the authors'-API face provides them.
"""
from .adaptive import run_adaptive
from .runner import (MODE_CALLABLE, MODE_NONE, MODE_THRESHOLD, Runner, correction_tables, device_tables,
                     dynamic_thresholding, thresholded_step)

__all__ = ["MODE_CALLABLE", "MODE_NONE", "MODE_THRESHOLD", "Runner", "correction_tables", "device_tables",
           "dynamic_thresholding", "run_adaptive", "thresholded_step"]
