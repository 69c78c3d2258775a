"""``pydiff.diffusers.DDIMScheduler``: diffusers' DDIM with the step fused into one kernel."""
from __future__ import annotations

import math

import numpy as np
import torch
from diffusers import DDIMScheduler as _DiffusersDDIM
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

from ..ops import fused_step
from ..plans import PREDICTION_TYPES
from ..plans.ddim_ddpm import ddim_timestep_table
from ..schedules import BETA_SCHEDULES, SPACINGS
from ._common import (TableCache, check_num_inference_steps, check_pair, clip_bound, fallback, select_rows,
                      step_noise, threshold_scale, timestep_arg, validated_init)


class DDIMScheduler(_DiffusersDDIM):
    """Drop-in for ``diffusers.DDIMScheduler`` (Song et al., arXiv:2010.02502) whose ``step`` is one kernel.

    Same constructor, config, ``set_timesteps``, ``step`` and outputs as diffusers; every config option
    (eta, epsilon/sample/v_prediction, clip_sample and clip_sample_range, use_clipped_model_output,
    thresholding, set_alpha_to_one, steps_offset, all timestep spacings, rescale_betas_zero_snr) and a
    given ``generator`` or ``variance_noise`` run fused. Noise is drawn exactly as diffusers draws it, so
    the same generator gives the same images. The update, per timestep ``t`` and ``prev = t - N // n``
    (diffusers' rule, whatever the spacing)::

        x0     = clip((x - sqrt(1-a_t) eps) / sqrt(a_t))            (or the sample / v conversion)
        sigma  = eta sqrt((1-a_prev)/(1-a_t)) sqrt(1 - a_t/a_prev)
        x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z

    The coefficients for every timestep value are computed once per (eta, use_clipped_model_output) in
    float64 from the scheduler's ``alphas_cumprod``; ``step`` only picks a row, by a Python int or, for a
    timestep tensor on the GPU, inside the kernel (no host sync). Set ``scheduler.pydiff_backend`` to force a
    backend. Falls back to diffusers (logged at debug level, reason in ``last_fallback_reason``) for
    timestep tensors with several elements, float timesteps and off-range integer timesteps.
    """

    __init__ = validated_init(
        _DiffusersDDIM.__init__,
        {"beta_schedule": BETA_SCHEDULES, "prediction_type": PREDICTION_TYPES, "timestep_spacing": SPACINGS},
    )

    def set_timesteps(self, num_inference_steps: int, device=None):
        if num_inference_steps is None:
            raise TypeError("num_inference_steps must be an int, got NoneType")
        check_num_inference_steps(num_inference_steps)
        super().set_timesteps(num_inference_steps, device=device)
        self._pydiff_tables = TableCache()
        self._pydiff_noise_count = 0

    def _rows(self, eta: float, use_clipped: bool) -> np.ndarray:
        """Rows for every timestep value; scalars in float32 as diffusers computes them (see ddim_scalars)."""
        cfg = self.config
        return ddim_timestep_table(
            self.alphas_cumprod, self.final_alpha_cumprod, cfg.num_train_timesteps // self.num_inference_steps,
            eta=eta, prediction_type=cfg.prediction_type, clip=clip_bound(cfg),
            use_clipped_model_output=use_clipped, thresholding=cfg.thresholding,
            check_timesteps=self.timesteps.cpu().numpy(),
            what=f"DDIMScheduler with eta={eta}, prediction_type={cfg.prediction_type!r}, "
                 f"rescale_betas_zero_snr={cfg.rescale_betas_zero_snr}")

    def step(self, model_output, timestep, sample, eta: float = 0.0, use_clipped_model_output: bool = False,
             generator=None, variance_noise=None, return_dict: bool = True):
        if self.num_inference_steps is None:
            raise ValueError(
                "Number of inference steps is 'None', you need to run 'set_timesteps' after creating the scheduler"
            )
        check_pair(model_output, sample)
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
            raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
        if eta > 0 and variance_noise is not None and generator is not None:
            raise ValueError(
                "Cannot pass both generator and variance_noise. Please make sure that either `generator` or"
                " `variance_noise` stays `None`."
            )
        kind, t = timestep_arg(timestep, self.config.num_train_timesteps, sample.device)
        if kind is None:
            fallback(self, t)
            return super().step(model_output, timestep, sample, eta, use_clipped_model_output, generator,
                                variance_noise, return_dict)
        self.last_fallback_reason = None
        key = (float(eta), bool(use_clipped_model_output))
        rows = self._pydiff_tables.rows(key, lambda: self._rows(*key))
        table = self._pydiff_tables.device_view(key, rows, sample.device, sample.dtype)
        coef, index = select_rows(kind, t, table)
        backend = self.pydiff_backend
        threshold = threshold_scale(self, sample, model_output, coef, index)
        noise, seed, offset = None, None, 0
        if eta > 0:
            noise, seed, offset = step_noise(self, model_output.shape, generator, model_output.device,
                                             model_output.dtype, variance_noise)
        pred_x0 = torch.empty_like(sample)
        prev_sample = fused_step(sample, model_output, coef, index=index, w_out=pred_x0, noise=noise, seed=seed,
                                 offset=offset, threshold=threshold, backend=backend)
        if not return_dict:
            return prev_sample, pred_x0
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_x0)
