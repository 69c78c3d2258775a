"""DPM-Solver and DPM-Solver++ on pydiff's fused kernels, with the API of the authors' ``dpm_solver_pytorch.py``.

Change one import::

    from pydiff.dpm_solver import NoiseScheduleVP, model_wrapper, DPM_Solver

    ns = NoiseScheduleVP("discrete", betas=betas)
    model_fn = model_wrapper(unet, ns, model_type="noise", guidance_type="classifier-free",
                             condition=c, unconditional_condition=uc, guidance_scale=7.5)
    solver = DPM_Solver(model_fn, ns, algorithm_type="dpmsolver++")
    x0 = solver.sample(x_T, steps=20, order=2, skip_type="time_uniform", method="multistep")

This package only translates the authors' API: ``schedule`` (NoiseScheduleVP, over ``pydiff.schedules``),
``wrapper`` (model_wrapper), ``solver`` (DPM_Solver) and ``updates`` (its single-update methods). The maths
lives below it: the update rules and the plan compiler in ``pydiff.plans`` (``dpm_solver``,
``dpm_solver_plan``), running a plan (and the adaptive DPM-Solver-12/23) in ``pydiff.runtime``. See
docs/dpm_solver.md.
"""
from .schedule import NoiseScheduleVP, expand_dims, interpolate_fn
from .solver import DPM_Solver
from .wrapper import model_wrapper

__all__ = ["DPM_Solver", "NoiseScheduleVP", "expand_dims", "interpolate_fn", "model_wrapper"]
