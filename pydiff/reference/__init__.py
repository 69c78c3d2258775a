"""Independent, literal float64 transcriptions of published sampler formulas, used as test oracles.

Nothing here uses ``pydiff.ops`` or the plan compilers: each module restates the papers' update rules in
plain Python/torch float64, one function per rule, so that the fused implementations are checked against
numbers derived separately.

* ``dpm_solver``: DPM-Solver (Lu et al., arXiv:2206.00927) and DPM-Solver++ (arXiv:2211.01095) with the
  step-selection rules of the authors' ``dpm_solver_pytorch.py``.
"""
