"""openai/guided-diffusion's ``gaussian_diffusion.py`` and ``respace.py`` faces on pydiff's fused step.

A user of guided-diffusion changes one import::

    from pydiff.guided import gaussian_diffusion as gd
    from pydiff.guided.respace import SpacedDiffusion, space_timesteps

``ClassifierFreeGuidance`` is the classifier-free guidance hook (docs/guided.md).
"""
from .cfg import ClassifierFreeGuidance
from .gaussian_diffusion import (NOISE_SOURCES, GaussianDiffusion, LossType, ModelMeanType, ModelVarType,
                                 get_named_beta_schedule)
from .respace import SpacedDiffusion, space_timesteps

__all__ = ["ClassifierFreeGuidance", "GaussianDiffusion", "LossType", "ModelMeanType", "ModelVarType",
           "NOISE_SOURCES", "SpacedDiffusion", "get_named_beta_schedule", "space_timesteps"]
