"""Drop-in replacements for diffusers schedulers whose ``step`` runs as fused kernels.

``from pydiff.diffusers import DDIMScheduler`` and ``pipe.scheduler = DDIMScheduler.from_config(
pipe.scheduler.config)``: same config, same outputs, one kernel per step. Requires ``diffusers``.
"""
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .dpmsolver_multistep import DPMSolverMultistepScheduler
from .dpmsolver_singlestep import DPMSolverSinglestepScheduler

__all__ = ["DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler"]
