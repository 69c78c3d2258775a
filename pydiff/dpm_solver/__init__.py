"""DPM-Solver and DPM-Solver++ on pydiff's fused kernels, with the API of the authors' ``dpm_solver_pytorch.py``.

Change one import::

    from pydiff.dpm_solver import NoiseScheduleVP, model_wrapper, DPM_Solver

    ns = NoiseScheduleVP("discrete", betas=betas)
    model_fn = model_wrapper(unet, ns, model_type="noise", guidance_type="classifier-free",
                             condition=c, unconditional_condition=uc, guidance_scale=7.5)
    solver = DPM_Solver(model_fn, ns, algorithm_type="dpmsolver++")
    x0 = solver.sample(x_T, steps=20, order=2, skip_type="time_uniform", method="multistep")

Modules: ``schedule`` (NoiseScheduleVP), ``wrapper`` (model_wrapper), ``coefficients`` (the update rules
as float64 weights), ``plan`` (the plan compiler: time grids, step orders, stages), ``runtime`` (running a
plan on fused steps), ``adaptive`` (DPM-Solver-12/23), ``solver`` (DPM_Solver). See docs/dpm_solver.md.
"""
from .schedule import NoiseScheduleVP, expand_dims, interpolate_fn
from .solver import DPM_Solver
from .wrapper import model_wrapper

__all__ = ["DPM_Solver", "NoiseScheduleVP", "expand_dims", "interpolate_fn", "model_wrapper"]
