"""Helpers shared by the native launchers (``cpu``: ``pydiff._C``, ``cuda``: ``pydiff._C_cuda``).

Both modules take tensors as ``data_ptr()`` integers (0 = None), sizes and a dtype code (csrc/README.md)
and export ``COLUMNS``/``NCOEF``/``K_MAX``, which must match ``pydiff.ops.columns`` name by name: a build
from older sources would read the wrong coefficient columns, so it is reported unavailable instead.
"""
from __future__ import annotations

import importlib

import torch

from ..columns import COLUMNS, K_MAX


def load(name: str):
    """Import native module ``name``; returns ``(module, None)`` or ``(None, reason)``."""
    try:
        mod = importlib.import_module(name)
    except ModuleNotFoundError:
        return None, f"{name} not built (PYDIFF_BUILD_CUDA=0 python setup.py build_ext --inplace)"
    except ImportError as e:  # e.g. PYDIFF_CPU_ISA names a level this CPU or build lacks
        return None, f"{name} failed to import: {e}"
    return mod, layout_mismatch(mod)


def layout_mismatch(mod) -> str | None:
    """Why ``mod``'s compiled column layout cannot be used, or None when it matches ``pydiff.ops.columns``."""
    built = tuple(getattr(mod, "COLUMNS", ()))
    if built != COLUMNS or getattr(mod, "K_MAX", None) != K_MAX:
        return (f"stale build: columns differ ({mod.__name__} has {built}, K_MAX={getattr(mod, 'K_MAX', None)}; "
                f"pydiff.ops.columns has {COLUMNS}, K_MAX={K_MAX}); rebuild with "
                f"python setup.py build_ext --inplace")
    return None


def ptr(t) -> int:
    """``data_ptr()`` as an int, 0 for None (the ABI's null)."""
    return 0 if t is None else t.data_ptr()


def batch_and_numel(x: torch.Tensor):
    """``(B, N)``: samples and elements per sample of a batch tensor."""
    B = x.shape[0]
    return B, (x.numel() // B if B else 0)


def dtype_codes(mod, float64: bool) -> dict:
    codes = {torch.float32: mod.FLOAT32, torch.float16: mod.FLOAT16, torch.bfloat16: mod.BFLOAT16}
    if float64:
        codes[torch.float64] = mod.FLOAT64
    return codes


def dtype_code(codes: dict, dtype: torch.dtype, backend: str) -> int:
    try:
        return codes[dtype]
    except KeyError:
        raise TypeError(f"the {backend} backend does not take {dtype}") from None


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def seed_arg(seed):
    return None if seed is None else int(seed)


def num_sources(b, seed, rng) -> int:
    """Rows of sumsq's result: a, then b or the Philox noise."""
    return 1 + (b is not None or seed is not None or rng is not None)
