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
"""
