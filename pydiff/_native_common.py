"""Helpers shared by the native launchers (``_backend_cpu``, ``_backend_cuda``)."""
from __future__ import annotations

import torch


def ptr(t) -> int:
    """``data_ptr()`` as an int, 0 for None (the ABI's null)."""
    return 0 if t is None else t.data_ptr()


def batch_and_numel(x: torch.Tensor):
    """``(B, N)``: samples and elements per sample of a batch tensor."""
    B = x.shape[0]
    return B, (x.numel() // B if B else 0)


def dtype_code(codes: dict, dtype: torch.dtype, backend: str) -> int:
    try:
        return codes[dtype]
    except KeyError:
        raise TypeError(f"the {backend} backend does not take {dtype}") from None


def check_coef_columns(module, coef: torch.Tensor) -> None:
    """Guard against a stale build whose compiled column layout differs from ``pydiff.ops.COLUMNS``."""
    if coef.shape[-1] != module.NCOEF:
        raise RuntimeError(f"{module.__name__} was built for {module.NCOEF} coefficient columns, got "
                           f"{coef.shape[-1]}; rebuild the extension (pip install -e .)")
