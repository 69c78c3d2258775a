"""Arrays of other libraries (NumPy, CuPy, JAX: anything with ``__dlpack__``) in and out of the ops, zero-copy.

``torch.from_dlpack`` views the caller's memory as a tensor (no copy); the op runs on it; the result goes back
through the ``from_dlpack`` of the library the ``x`` argument came from (``numpy.from_dlpack``,
``cupy.from_dlpack``), again a view. An output given by the caller (``out=``) is returned as the caller's object.
"""
from __future__ import annotations

import importlib

import torch


def _is_array(obj) -> bool:
    return not isinstance(obj, torch.Tensor) and hasattr(obj, "__dlpack__")


def _to_torch(obj, seen: dict):
    if _is_array(obj):
        t = torch.from_dlpack(obj)
        seen[id(t)] = obj
        return t
    if isinstance(obj, (list, tuple)) and any(_is_array(o) for o in obj):
        return type(obj)(_to_torch(o, seen) for o in obj)
    return obj


def from_arrays(fn, x, *args, **kwargs):
    """``fn(x, *args, **kwargs)`` with DLPack arrays as tensors; the result in ``x``'s library.

    Objects that are neither tensors nor DLPack arrays are passed through unchanged (``fn`` then rejects them
    with its usual TypeError).
    """
    if not _is_array(x):
        return fn(x, *args, **kwargs)
    seen: dict = {}
    lib = importlib.import_module(type(x).__module__.split(".")[0])
    tx = _to_torch(x, seen)
    targs = [_to_torch(a, seen) for a in args]
    tkw = {k: _to_torch(v, seen) for k, v in kwargs.items()}
    res = fn(tx, *targs, **tkw)

    def back(t):
        if not isinstance(t, torch.Tensor):
            return t
        if id(t) in seen:
            return seen[id(t)]
        return lib.from_dlpack(t)

    if isinstance(res, tuple):
        return tuple(back(t) for t in res)
    return back(res)
