"""score_sde_pytorch's training objectives (``losses.py``), in plain torch with autograd.

* ``get_sde_loss_fn``: denoising score matching over continuous time (Song et al., arXiv:2011.13456, eq. 7):
  ``t ~ U(eps, T)``, ``x_t = m(t) x0 + std(t) z``, per sample
  ``lambda(t) || s(x_t, t) + z/std ||^2`` with ``lambda = std^2`` (``|| s std + z ||^2``, the paper's
  weighting) or ``lambda = g(t)^2`` (``likelihood_weighting``: Song, Durkan, Murray, Ermon, arXiv:2101.09258).
* ``get_smld_loss_fn``: NCSN's (Song & Ermon 2019) ``sigma^2 || s(x0 + sigma z, i) + z/sigma ||^2`` over the
  discrete sigmas, label ``i`` counting from the largest.
* ``get_ddpm_loss_fn``: DDPM's (Ho et al. 2020) ``|| eps(sqrt(abar_i) x0 + sqrt(1 - abar_i) z, i) - z ||^2``.

``reduce_mean=True`` averages over the data dimensions, ``False`` takes half their sum; the loss is the batch
mean. Random draws use torch's generator in the reference's order (``t`` or the labels, then ``z``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.optim as optim

from . import utils as mutils
from .sde_lib import VESDE, VPSDE, batch_view


def _reduce_op(reduce_mean):
    if reduce_mean:
        return lambda v: torch.mean(v.reshape(v.shape[0], -1), dim=-1)
    return lambda v: 0.5 * torch.sum(v.reshape(v.shape[0], -1), dim=-1)


def get_optimizer(config, params):
    """Adam from ``config.optim`` (``lr``, ``beta1``, ``eps``, ``weight_decay``), as score_sde builds it."""
    if config.optim.optimizer != "Adam":
        raise ValueError(f"config.optim.optimizer must be 'Adam', got {config.optim.optimizer!r}")
    return optim.Adam(params, lr=config.optim.lr, betas=(config.optim.beta1, 0.999), eps=config.optim.eps,
                      weight_decay=config.optim.weight_decay)


def optimization_manager(config):
    """``optimize_fn(optimizer, params, step)``: linear learning-rate warmup over ``config.optim.warmup``
    steps, gradient-norm clipping at ``config.optim.grad_clip`` (off when negative), then ``optimizer.step()``."""

    def optimize_fn(optimizer, params, step, lr=config.optim.lr, warmup=config.optim.warmup,
                    grad_clip=config.optim.grad_clip):
        if warmup > 0:
            for g in optimizer.param_groups:
                g["lr"] = lr * np.minimum(step / warmup, 1.0)
        if grad_clip >= 0:
            torch.nn.utils.clip_grad_norm_(params, max_norm=grad_clip)
        optimizer.step()

    return optimize_fn


def get_sde_loss_fn(sde, train, reduce_mean=True, continuous=True, likelihood_weighting=True, eps=1e-5):
    """``loss_fn(model, batch)``: continuous-time denoising score matching (module docstring)."""
    mutils.check_sde(sde)
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
    reduce_op = _reduce_op(reduce_mean)

    def loss_fn(model, batch):
        score_fn = mutils.get_score_fn(sde, model, train=train, continuous=continuous)
        t = torch.rand(batch.shape[0], device=batch.device) * (sde.T - eps) + eps
        z = torch.randn_like(batch)
        mean, std = sde.marginal_prob(batch, t)
        std_b = batch_view(std, batch)
        score = score_fn(mean + std_b * z, t)
        if not likelihood_weighting:
            losses = reduce_op(torch.square(score * std_b + z))
        else:
            g2 = sde.sde(torch.zeros_like(batch), t)[1] ** 2
            losses = reduce_op(torch.square(score + z / std_b)) * g2
        return torch.mean(losses)

    return loss_fn


def get_smld_loss_fn(vesde, train, reduce_mean=False):
    """``loss_fn(model, batch)``: NCSN's noise-conditional score matching (VESDE only)."""
    if not isinstance(vesde, VESDE):
        raise TypeError(f"vesde: SMLD training needs a VESDE, got {type(vesde).__name__}")
    sigmas_desc = torch.flip(vesde.discrete_sigmas, dims=(0,))  # NCSN label 0 is the largest sigma
    reduce_op = _reduce_op(reduce_mean)

    def loss_fn(model, batch):
        model_fn = mutils.get_model_fn(model, train=train)
        labels = torch.randint(0, vesde.N, (batch.shape[0],), device=batch.device)
        sigmas = sigmas_desc.to(batch.device)[labels]
        noise = torch.randn_like(batch) * batch_view(sigmas, batch)
        score = mutils.check_model_output(model_fn(noise + batch, labels), batch)
        target = -noise / batch_view(sigmas ** 2, batch)
        losses = reduce_op(torch.square(score - target)) * sigmas ** 2
        return torch.mean(losses)

    return loss_fn


def get_ddpm_loss_fn(vpsde, train, reduce_mean=True):
    """``loss_fn(model, batch)``: DDPM's noise-prediction loss (VPSDE only)."""
    if not isinstance(vpsde, VPSDE):
        raise TypeError(f"vpsde: DDPM training needs a VPSDE, got {type(vpsde).__name__}")
    reduce_op = _reduce_op(reduce_mean)

    def loss_fn(model, batch):
        model_fn = mutils.get_model_fn(model, train=train)
        labels = torch.randint(0, vpsde.N, (batch.shape[0],), device=batch.device)
        a = vpsde.sqrt_alphas_cumprod.to(batch.device)[labels]
        s = vpsde.sqrt_1m_alphas_cumprod.to(batch.device)[labels]
        noise = torch.randn_like(batch)
        perturbed = batch_view(a, batch) * batch + batch_view(s, batch) * noise
        out = mutils.check_model_output(model_fn(perturbed, labels), batch)
        return torch.mean(reduce_op(torch.square(out - noise)))

    return loss_fn


def get_step_fn(sde, train, optimize_fn=None, reduce_mean=False, continuous=True, likelihood_weighting=False):
    """``step_fn(state, batch) -> loss``: one training step (``train``: zero the gradients, backpropagate the
    loss, ``optimize_fn(optimizer, params, step=state['step'])``, ``state['step'] += 1``,
    ``state['ema'].update(params)``) or one evaluation (the loss under the EMA weights: ``ema.store``,
    ``ema.copy_to``, the loss without gradients, ``ema.restore``). ``state`` is score_sde's dict with keys
    ``'model'``, ``'optimizer'``, ``'ema'``, ``'step'``."""
    if continuous:
        loss_fn = get_sde_loss_fn(sde, train, reduce_mean=reduce_mean, continuous=True,
                                  likelihood_weighting=likelihood_weighting)
    else:
        if likelihood_weighting:
            raise ValueError("likelihood_weighting=True needs continuous=True (not defined for SMLD/DDPM training)")
        if isinstance(sde, VESDE):
            loss_fn = get_smld_loss_fn(sde, train, reduce_mean=reduce_mean)
        elif isinstance(sde, VPSDE):
            loss_fn = get_ddpm_loss_fn(sde, train, reduce_mean=reduce_mean)
        else:
            raise ValueError(f"sde: discrete training is defined for VESDE and VPSDE, not {type(sde).__name__}")
    if train and optimize_fn is None:
        raise ValueError("optimize_fn is required when train=True")

    def step_fn(state, batch):
        model = state["model"]
        if train:
            optimizer = state["optimizer"]
            optimizer.zero_grad()
            loss = loss_fn(model, batch)
            loss.backward()
            optimize_fn(optimizer, model.parameters(), step=state["step"])
            state["step"] += 1
            state["ema"].update(model.parameters())
        else:
            with torch.no_grad():
                ema = state["ema"]
                ema.store(model.parameters())
                ema.copy_to(model.parameters())
                loss = loss_fn(model, batch)
                ema.restore(model.parameters())
        return loss

    return step_fn
