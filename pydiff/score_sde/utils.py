"""score_sde_pytorch's ``models/utils.py`` model wrappers: ``get_model_fn``, ``get_score_fn``, and the flat
NumPy conversions of its ODE sampler.

A score_sde model is called as ``model(x, labels)``. VP and sub-VP models predict the noise, so the score is
``-model(x, labels) / std``; VE models output the score directly. Labels and the score scale are
``pydiff.plans.score_sde``'s ``model_labels`` and ``score_scale`` (Song et al., arXiv:2011.13456, appendix B):
"""
from __future__ import annotations

import numpy as np
import torch

from ..ops import torch_randn
from ..plans import score_sde as plan
from . import sde_lib


def get_model_fn(model, train=False):
    """``model_fn(x, labels)``: the model in training mode (``train=True``) or evaluation mode. A plain
    callable without ``train``/``eval`` methods (not an ``nn.Module``) is called as it is."""
    if not callable(model):
        raise TypeError(f"model must be callable as model(x, labels), got {type(model).__name__}")
    set_mode = getattr(model, "train" if train else "eval", None)

    def model_fn(x, labels):
        """The model's output on ``x`` conditioned on ``labels`` (time steps, interpreted per model type)."""
        if callable(set_mode):
            set_mode()
        return model(x, labels)

    return model_fn


def check_sde(sde):
    """The SDE's schedule: TypeError for anything but an ``SDE``; ``UnsupportedSDE`` (a NotImplementedError,
    as the reference raises, and a ValueError) for an SDE other than a VPSDE, subVPSDE or VESDE."""
    if not isinstance(sde, sde_lib.SDE):
        raise TypeError(f"sde must be a pydiff.score_sde SDE (VPSDE, subVPSDE or VESDE), got {type(sde).__name__}")
    if not isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE, sde_lib.VESDE)):
        raise plan.UnsupportedSDE(f"sde must be a pydiff.score_sde VPSDE, subVPSDE or VESDE, got "
                                  f"{type(sde).__name__}")
    return sde._schedule


def check_model_output(out, x, what="the model"):
    """The model's output as a tensor shaped and typed like ``x`` (ValueError/TypeError otherwise)."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{what} must return a torch.Tensor, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(f"{what} returned shape {tuple(out.shape)}; expected the sample's shape {tuple(x.shape)}")
    return out


def get_score_fn(sde, model, train=False, continuous=False):
    """``score_fn(x, t)``: the model output as the score of ``p_t``.

    VP/sub-VP: ``-model(x, labels) / std`` with ``labels = 999 t`` and ``std`` the marginal std for continuous
    (and every sub-VP) model, ``labels = (N-1) t`` and ``std = sqrt(1 - alpha_bar_i)`` for a discrete (DDPM)
    model. VE: ``model(x, labels)`` with ``labels = sigma(t)`` (continuous) or ``round((T - t)(N - 1))``
    (discrete NCSN models: label 0 is the largest noise level).
    """
    schedule = check_sde(sde)
    model_fn = get_model_fn(model, train=train)
    kind = plan.sde_kind(schedule)

    def score_fn(x, t):
        labels = plan.model_labels(schedule, t, continuous)
        out = check_model_output(model_fn(x, labels), x)
        if kind == "ve":
            return out
        if continuous or kind == "subvp":
            std = sde.marginal_prob(torch.zeros_like(x), t)[1]
        else:
            std = sde.sqrt_1m_alphas_cumprod.to(labels.device)[labels.long()]
        return plan.score_from_eps(out, std)

    return score_fn


def to_flattened_numpy(x):
    """``x`` as a flat NumPy array (on the host)."""
    return x.detach().cpu().numpy().reshape((-1,))


def from_flattened_numpy(x, shape):
    """A tensor of ``shape`` from a flat NumPy array."""
    return torch.from_numpy(np.asarray(x).reshape(shape))


def randn_like(x):
    """``torch.randn_like(x)``: the same numbers from the same (global) generator, advanced alike; a contiguous
    CPU float32 ``x`` is drawn by ``pydiff.ops.torch_randn`` (~4x faster, equal to float32 rounding)."""
    if x.is_contiguous():
        return torch_randn(x.shape, dtype=x.dtype, device=x.device)
    return torch.randn_like(x)
