"""Classifier-free guidance (Ho & Salimans, arXiv:2207.12598) for the guided-diffusion face.

``ClassifierFreeGuidance(model, guidance_scale, null_kwargs)`` wraps a conditional model. Passed as the ``model`` of
any ``GaussianDiffusion`` / ``SpacedDiffusion`` loop, its ``pair`` returns the (unconditional, conditional)
outputs and the loop's fused step combines them, ``m_e = (1 - s) m_uncond + s m_cond`` (columns ``M1 = 1 - s``,
``M2 = s``), inside the same pass that converts to x0, clips and updates. Called like a model (for instance by
``p_mean_variance``), it returns the combined output.
"""
from __future__ import annotations


import torch

from .._checks import real_number
from ..ops import fused_step
from ..plans import guided as plan


class ClassifierFreeGuidance:
    """A conditional model guided without a classifier: ``eps = (1 - s) eps(x, null) + s eps(x, c)``.

    :param model: the model, called ``model(x, t, **model_kwargs)`` for the conditional output.
    :param guidance_scale: ``s >= 0`` (``s = 1``: the conditional model alone; ``s = 0``: the unconditional one;
        GLIDE's ``1 + w`` convention).
    :param null_kwargs: the keyword arguments of the unconditional call: a dict laid over ``model_kwargs`` (e.g.
        ``{'y': null_label}``), or a callable ``null_kwargs(model_kwargs) -> dict``.

    With a learned variance the guided mean channels are combined and the variance channels are the conditional
    call's (both halves of GLIDE's batch keep their own; the conditional half is the one sampled).
    """

    def __init__(self, model, guidance_scale, null_kwargs):
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        guidance_scale = real_number("guidance_scale", guidance_scale, minimum=0.0)
        if not (isinstance(null_kwargs, dict) or callable(null_kwargs)):
            raise TypeError(f"null_kwargs must be a dict or a callable, got {type(null_kwargs).__name__}")
        self.model, self.guidance_scale, self.null_kwargs = model, float(guidance_scale), null_kwargs

    def parameters(self):
        return self.model.parameters()

    def _null(self, kwargs):
        if callable(self.null_kwargs):
            out = self.null_kwargs(dict(kwargs))
            if not isinstance(out, dict):
                raise TypeError(f"null_kwargs must return a dict, got {type(out).__name__}")
            return out
        return {**kwargs, **self.null_kwargs}

    def pair(self, x, t, **kwargs):
        """``(model(x, t, **null), model(x, t, **kwargs))``."""
        return self.model(x, t, **self._null(kwargs)), self.model(x, t, **kwargs)

    @staticmethod
    def combine(uncond, cond, scale):
        """``(1 - s) uncond + s cond`` in one fused pass."""
        cond = cond.to(uncond.dtype).contiguous()
        row = torch.as_tensor(plan.cfg_row(scale), dtype=torch.float64 if uncond.dtype == torch.float64
                              else torch.float32, device=uncond.device)
        return fused_step(uncond.contiguous(), uncond.contiguous(), row, m2=cond)

    def __call__(self, x, t, **kwargs):
        u, c = self.pair(x, t, **kwargs)
        if u.shape[1] == 2 * x.shape[1] and x.dim() > 1 and u.shape != x.shape:  # learned variance channels
            C = x.shape[1]
            return torch.cat([self.combine(u[:, :C], c[:, :C], self.guidance_scale), c[:, C:]], dim=1)
        return self.combine(u, c, self.guidance_scale)
