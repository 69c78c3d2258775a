"""Shared setup of the guided-diffusion face tests: a 2-class Gaussian mixture and the three implementations."""
import numpy as np
import torch

import pydiff.guided as pg
from pydiff.testing.guided import GuidedOracle, Mixture, MixtureClassifier, MixtureModel, beta_schedule

SHAPE = (5, 2, 3)  # (B, C, L): small, so that a 100-step loop stays a few milliseconds per step
LABELS = torch.tensor([0, 1, 1, 0, 1])
# means inside [-1, 1] with a spread that makes |x0| exceed 1 often: clip_denoised engages
MIX = Mixture(torch.tensor([[0.6, -0.3, 0.2], [0.1, 0.5, -0.7]]), torch.tensor([[-0.5, 0.2, -0.1], [0.4, -0.6, 0.3]]),
              0.45)


def make(sched="linear", n=100, spacing=None, mean="epsilon", var="fixed_small", rescale=False, scale=1.5):
    """``(ours, oracle, model, cond_fn)`` for one configuration (``spacing`` a section-count spec or None)."""
    betas = beta_schedule(sched, n)
    ts = set(range(n)) if spacing is None else pg.space_timesteps(n, spacing)
    ours = pg.SpacedDiffusion(ts, betas=betas, model_mean_type=getattr(pg.ModelMeanType, mean.upper()),
                              model_var_type=getattr(pg.ModelVarType, var.upper()), loss_type=pg.LossType.MSE,
                              rescale_timesteps=rescale)
    oracle = GuidedOracle(betas, mean_type=mean, var_type=var, rescale_timesteps=rescale, use_timesteps=ts)
    abar = np.cumprod(1.0 - betas)
    model = MixtureModel(MIX, abar, mean, var.startswith("learned"))
    return ours, oracle, model, MixtureClassifier(MIX, abar, scale)


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
