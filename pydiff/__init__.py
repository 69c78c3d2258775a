"""pydiff: fused kernels for the per-step arithmetic of diffusion-model samplers.

Schedules (``pydiff.schedules``) -> coefficient plans (``pydiff.plans``) -> one fused kernel per step
(``pydiff.ops``). Drop-in diffusers schedulers live in ``pydiff.diffusers``.
"""
__version__ = "0.1.0"

from . import ops  # noqa: E402

__all__ = ["ops", "__version__"]
