"""openai/guided-diffusion's ``respace.py`` on pydiff: ``space_timesteps`` and ``SpacedDiffusion``.

A ``SpacedDiffusion`` keeps the timesteps ``use_timesteps`` of a base diffusion: its betas are
``1 - abar_{t_k} / abar_{t_{k-1}}`` (``pydiff.plans.guided.spaced_betas``), so its ``alphas_cumprod`` are the base's
at the kept steps; the model and ``cond_fn`` see the base's timesteps (``timestep_map[k]``, scaled by
``1000 / original_num_steps`` with ``rescale_timesteps``), as guided-diffusion's ``_WrappedModel`` maps them.
"""
from __future__ import annotations

import torch

from ..plans import guided as plan
from .gaussian_diffusion import GaussianDiffusion


def space_timesteps(num_timesteps, section_counts):
    """The set of timesteps to keep: ``"ddimN"`` (DDIM's integer stride) or section counts (a list of ints or a
    comma-separated string), with guided-diffusion's rounding (``pydiff.plans.guided.space_timesteps``)."""
    return plan.space_timesteps(num_timesteps, section_counts)


class SpacedDiffusion(GaussianDiffusion):
    """A diffusion that skips steps of a base one.

    :param use_timesteps: the timesteps of the base diffusion to keep (any collection of ints).
    :param kwargs: the base ``GaussianDiffusion``'s keyword arguments.
    """

    def __init__(self, use_timesteps, **kwargs):
        if "betas" not in kwargs:
            raise TypeError("SpacedDiffusion needs the base diffusion's betas= keyword argument")
        self.use_timesteps = set(use_timesteps)
        base = plan.diffusion_tables(kwargs["betas"])
        self.original_num_steps = base["num_timesteps"]
        bad = sorted(t for t in self.use_timesteps if not 0 <= t < self.original_num_steps)
        if bad or not self.use_timesteps:
            raise ValueError(f"use_timesteps must be a non-empty set of steps in [0, {self.original_num_steps}), "
                             f"got {sorted(self.use_timesteps)[:5]}...")
        betas, self.timestep_map = plan.spaced_betas(base["alphas_cumprod"], self.use_timesteps)
        super().__init__(**{**kwargs, "betas": betas})

    def _scale_timesteps(self, t):
        return t  # the mapping to the base's timesteps scales them (_model_timesteps)

    def _model_timesteps(self, t):
        key = (t.device, t.dtype)
        maps = self.__dict__.setdefault("_map_tensors", {})
        if key not in maps:  # one copy per device, not one per step
            maps[key] = torch.tensor(self.timestep_map, device=t.device, dtype=t.dtype)
        mapped = maps[key][t]
        return mapped.float() * (1000.0 / self.original_num_steps) if self.rescale_timesteps else mapped
