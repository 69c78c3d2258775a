"""The fused ops: ``fused_step``, ``sumsq``, ``langevin_step``, ``dynamic_threshold``, ``philox_normal``.

Each op is one module holding its plain-PyTorch reference (``*_reference``) and its public, validating function;
``columns`` is the coefficient row layout; ``backends`` the registry of implementations (reference, cpu, cuda,
triton) and their launchers. The contract is docs/ops.md.
"""
from ._validate import compute_dtype, int64_to_seed, seed_to_int64
from .backends import (BACKENDS, available_backends, backend_available, backend_report, runs_on,
                       unavailable_reason)
from .columns import COL, COLUMNS, K_MAX, NCOEF, coef_row, coef_table
from .dispatch import resolve_backend
from .dynamic_threshold import dynamic_threshold, quantile_rank
from .fused_step import fused_step
from .langevin_step import langevin_step
from .philox import philox_normal
from .sumsq import sumsq
from .torch_normal import torch_randn, torch_randn_fast

__all__ = [
    "BACKENDS", "COL", "COLUMNS", "K_MAX", "NCOEF", "available_backends", "backend_available", "backend_report",
    "coef_row", "coef_table", "compute_dtype", "dynamic_threshold", "fused_step", "int64_to_seed", "langevin_step",
    "philox_normal", "quantile_rank", "resolve_backend", "runs_on", "seed_to_int64", "sumsq", "torch_randn",
    "torch_randn_fast", "unavailable_reason",
]
