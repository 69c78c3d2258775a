"""pydiff.kernels -- the Triton kernels of pydiff's fused ops (device code, one op per module).

* ``fused_step``        (``fused_step.py``): the fused sampler update (DDIM / DDPM / DPM-Solver(++), guidance,
  learned variances).
* ``sumsq``             (``sumsq.py``): per-sample sums of squares of one or two sources.
* ``dynamic_threshold`` (``dynamic_threshold.py``): Imagen's dynamic-thresholding scale.
* ``langevin_step``     (``langevin_step.py``): the step-size rows of the Langevin corrector (between its
  ``sumsq`` and ``fused_step`` passes).
* ``philox``            (``philox.py``): Philox4x32-10 normals, the counter layout of docs/ops.md.
* ``_common``           the column constants (from ``pydiff.ops.columns``), the index rule, seed packing.

The host side (argument packing, grids, availability) is ``pydiff.ops.backends.triton``, which loads this
package from the same checkout or install as the ``pydiff`` it serves. Importing this package itself needs
neither triton nor a GPU; its submodules need triton.
"""
