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


_OUTPUTS = ("out", "w_out")  # the keyword arguments the ops write into


def _to_torch(obj, seen: dict, name: str = "x", output: bool = False):
    """A DLPack array as a tensor view of its memory. Checked first, because DLPack carries neither: an array
    with a negative stride (``a[:, ::-1]``) makes torch's importer throw a C++ error that ends the process, so an
    input is copied and an output refused; a read-only array (NumPy's ``writeable`` flag) would be written
    through, so an output must be writable."""
    if _is_array(obj):
        strides = getattr(obj, "strides", None)
        if strides is not None and any(s < 0 for s in strides):
            if output:
                raise ValueError(f"{name} has a negative stride {tuple(strides)}: an output is written in place "
                                 "and must be a plain strided view (pass a copy)")
            obj = obj.copy()
        flags = getattr(obj, "flags", None)
        if output and flags is not None and not getattr(flags, "writeable", True):
            raise ValueError(f"{name} is a read-only array (flags.writeable is False): it cannot be written")
        t = torch.from_dlpack(obj)
        seen[id(t)] = obj
        return t
    if isinstance(obj, (list, tuple)) and any(_is_array(o) for o in obj):
        return type(obj)(_to_torch(o, seen, f"{name}[{k}]") for k, o in enumerate(obj))
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
    in_place = any(kwargs.get(k) is x for k in _OUTPUTS)
    tx = _to_torch(x, seen, "x", output=in_place)
    targs = [_to_torch(a, seen, f"argument {k + 2}") for k, a in enumerate(args)]
    tkw = {}
    for k, v in kwargs.items():
        if v is x:
            tkw[k] = tx  # out=x: the same view (a copy of a negative-stride x was refused above)
        else:
            tkw[k] = _to_torch(v, seen, k, output=k in _OUTPUTS)
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
