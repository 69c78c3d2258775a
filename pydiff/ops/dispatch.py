"""Choosing the backend for a call: ``backend=``, else ``PYDIFF_BACKEND``, else the registry's automatic order.

The choice is cached per (argument, environment, device type, dtype): the eager step pays ~1 us here instead of
~10 us of availability probes and environment reads, and it is on every step's path.
"""
from __future__ import annotations

import os

import torch

from . import backends as reg

_RESOLVED: dict = {}
_IMPLS: dict = {}


def resolve_backend(backend: str | None, tensor: torch.Tensor, op: str = "fused_step") -> str:
    """The backend that runs ``op`` on ``tensor`` (see ``pydiff.ops.backends``).

    A backend that does not implement ``op`` (an op that has not reached every backend yet) is skipped by the
    automatic choice and refused, with that reason, when named explicitly."""
    # TRITON_INTERPRET is not in the key: triton reads it once, at import, so it cannot change later
    key = (backend, os.environ.get("PYDIFF_BACKEND"), tensor.device.type, tensor.dtype, op)
    hit = _RESOLVED.get(key)
    if hit is None:
        hit = _RESOLVED[key] = _resolve(backend, tensor, op)
    return hit


def _resolve(backend, tensor, op):
    source = "backend"
    if backend is None:
        backend, source = os.environ.get("PYDIFF_BACKEND") or None, "PYDIFF_BACKEND"
    dev, dtype = tensor.device.type, tensor.dtype
    if backend is not None:
        reg.check_name(backend, source)
        if not reg.runs_on(backend, dev):
            raise ValueError(f"{source}={backend!r} cannot run on {dev} tensors")
        if not reg.runs_on(backend, dev, dtype):
            raise TypeError(f"{source}={backend!r} does not take {dtype} tensors "
                            f"(it takes {', '.join(str(d) for d in reg.INFO[backend].dtypes)}); "
                            "use backend='reference' or 'cpu' for float64")
        why = reg.unavailable_reason(backend)
        if why is not None:
            raise RuntimeError(f"{source}={backend!r} is not available here: {why}; "
                               f"available: {reg.available_backends()}")
        if not reg.implements(backend, op):
            raise NotImplementedError(f"{source}={backend!r} does not implement {op} yet; backends that do: "
                                      f"{[b for b in reg.available_backends() if reg.implements(b, op)]}")
        return backend
    for name in reg.AUTOMATIC_ORDER.get(dev, ()):
        if reg.runs_on(name, dev, dtype) and reg.backend_available(name) and reg.implements(name, op):
            return name
    return "reference"


def dispatch(op: str, backend: str):
    """The normalized implementation of ``op`` for ``backend`` (looked up once, then cached)."""
    impl = _IMPLS.get((op, backend))
    if impl is None:
        impl = _IMPLS[(op, backend)] = reg.implementation(backend, op)
    return impl
