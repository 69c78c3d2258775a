"""pydiff: fused kernels for the per-step arithmetic of diffusion-model samplers.

Schedules (``pydiff.schedules``) -> coefficient plans (``pydiff.plans``) -> one fused kernel per step
(``pydiff.ops``). Drop-in diffusers schedulers live in ``pydiff.diffusers``; ``pydiff.explain(scheduler)``
says what of a drop-in's work runs fused and what runs diffusers' own code, and why.
"""
__version__ = "0.1.0"

from . import ops  # noqa: E402
from .explain import explain  # noqa: E402

__all__ = ["explain", "ops", "__version__"]
