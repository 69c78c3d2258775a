"""The fused ops: ``fused_step``, ``sumsq``, ``dynamic_threshold``, ``philox_normal``.

Each op is one module holding its plain-PyTorch reference (``*_reference``) and its public, validating
dispatcher; the compiled kernels live in ``pydiff._backend_cpu``/``_backend_cuda`` (C++/CUDA) and
``pydiff.kernels`` (Triton). The contract is docs/ops.md.
"""
from ._dispatch import BACKENDS, available_backends, backend_available, resolve_backend
from .dynamic_threshold import dynamic_threshold
from .fused_step import COL, COLUMNS, NCOEF, coef_row, fused_step
from .philox import philox_normal
from .sumsq import sumsq

__all__ = [
    "BACKENDS", "COL", "COLUMNS", "NCOEF", "available_backends", "backend_available", "coef_row",
    "dynamic_threshold", "fused_step", "philox_normal", "resolve_backend", "sumsq",
]
