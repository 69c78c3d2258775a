"""Argument checks shared by the faces and the plans (one wording of each error across pydiff)."""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch


def real_number(name: str, value, *, minimum: float | None = None, strict: bool = False,
                tensors: bool = False) -> float:
    """``value`` as a finite float, else TypeError / ValueError naming ``name``.

    Python and NumPy real numbers (not bools); with ``tensors``, a one-element real tensor too (read on the
    host, as diffusers multiplies by whatever it is given). ``minimum``: the value must be ``>= minimum``
    (``> minimum`` with ``strict``).
    """
    if tensors and isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype != torch.bool \
            and not value.is_complex():
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    low = minimum is not None and (value <= minimum if strict else value < minimum)
    # comparisons, not math.isfinite: under torch.compile a float argument may be symbolic (a SymFloat, after a
    # recompile with another value), where a comparison becomes a guard and math.isfinite a graph break
    if not -math.inf < value < math.inf or low:
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return value


def sample_tensor(name: str, x) -> torch.Tensor:
    """``x`` if it is a floating-point tensor of shape ``(B, ...)`` with ``B >= 1``, else TypeError / ValueError."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, ...), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (B, ...) with B >= 1, got {tuple(x.shape)}")
    return x
