"""The ``reference`` backend: the plain-PyTorch twins of the ops (``pydiff/ops/*.py``), on any device.

It is the oracle every other backend is tested against and the fallback where nothing compiled runs. It makes
no host sync either (Philox keys from ``rng`` are read with tensor ops), so it can run inside a CUDA graph.
"""
from __future__ import annotations

from ..dynamic_threshold import dynamic_threshold_reference as dynamic_threshold
from ..fused_step import fused_step_reference as fused_step
from ..philox import philox_normal_reference as philox_normal
from ..langevin_step import langevin_step_reference as langevin_step
from ..sumsq import sumsq_reference as sumsq

__all__ = ["available", "unavailable_reason", "fused_step", "sumsq", "dynamic_threshold", "philox_normal",
           "langevin_step"]


def available() -> bool:
    return True


def unavailable_reason():
    return None


from ..fused_step_backward import fused_step_backward_reference as fused_step_backward  # noqa: E402

__all__ += ["fused_step_backward"]
