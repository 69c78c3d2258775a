"""Argument checks shared by the public entry points: each error names the argument it is about.

One rule for the int and bool arguments: ints are ints (Python or NumPy integers; not bools, not floats, not
even integral ones), bools are bools (Python or NumPy bools; not 0/1); anything else is a TypeError naming the
argument, raised before any model evaluation.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from .._checks import sample_tensor


def check_choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return value


def check_bool(name, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def check_int(name, value, low=None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def check_int_choice(name, value, choices, what=None) -> int:
    """An int (``check_int``'s rule) that is one of ``choices``; ``what`` words the choices in the error."""
    value = check_int(name, value)
    if value not in choices:
        raise ValueError(f"{name} must be {what or ' or '.join(str(c) for c in choices)}, got {value}")
    return value


def check_number(name, value, low=None, high=None, low_open=False, allow_inf=False):
    """A real number (a 1-element tensor is accepted and read once) within the given bounds."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def check_callable(name, value, allow_none=True):
    if value is None and allow_none:
        return None
    if not callable(value):
        raise TypeError(f"{name} must be callable{' or None' if allow_none else ''}, got {type(value).__name__}")
    return value


def check_sample_tensor(name, x):
    return sample_tensor(name, x)
