"""Test oracles, importable by tests and benchmarks: numbers derived independently of the plan layer.

Nothing here uses ``pydiff.ops``, ``pydiff.schedules`` or ``pydiff.plans``: each module restates published
formulas in plain Python/torch float64, so that the fused implementations are checked against numbers
derived separately.

* ``dpm_solver``: a literal float64 transcription of DPM-Solver (Lu et al., arXiv:2206.00927) and
  DPM-Solver++ (arXiv:2211.01095) with the step-selection rules of the authors' ``dpm_solver_pytorch.py``.
* ``gaussian``: closed-form Gaussian data: exact model predictions of every parameterization and the exact
  probability-flow ODE solution.
* ``score_sde``: a literal float64 transcription of score_sde_pytorch's predictors, correctors and
  predictor-corrector loop (Song et al., arXiv:2011.13456), drawing noise in the reference's order.
* ``guided``: a literal float64 transcription of guided-diffusion's update rules (Nichol & Dhariwal 2021,
  Dhariwal & Nichol 2021), the two-class Gaussian mixture's exact eps and noisy-classifier gradient, and the
  exact law of the guided samplers along the class axis at any guidance scale.
* ``analytic_dpm``: a literal float64 transcription of the Analytic-DPM authors' samplers and step choices (Bao
  et al., arXiv:2201.06503) and the Gaussian closed forms (exact eps model, exact ms_eps, output moments).
"""
