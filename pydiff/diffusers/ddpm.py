"""``pydiff.diffusers.DDPMScheduler``: diffusers' DDPM with the step fused into one kernel."""
from __future__ import annotations

import warnings
from collections import OrderedDict

import numpy as np
import torch
from diffusers import DDPMScheduler as _DiffusersDDPM
from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput

from ..ops import COL, fused_step
from ..plans import DDPM_VARIANCE_TYPES, PREDICTION_TYPES
from ..plans.ddim_ddpm import DDPM_LEARNED_VARIANCE_TYPES, ddpm_timestep_table
from ..schedules import BETA_SCHEDULES, SPACINGS
from ._common import (DIFFERENTIABLE_SCALE, DropinMixin, StepIO, TableCache, TracedTables, check_num_inference_steps,
                      clip_bound, compiling, fallback, guidance_arg, guided_table, needs_grad, promoting_timestep, select_rows, step_noise,
                      threshold_scale, timestep_arg, validated_init, x0_like_diffusers)

_VARIANCE_TYPES = DDPM_VARIANCE_TYPES + DDPM_LEARNED_VARIANCE_TYPES


class DDPMScheduler(DropinMixin, _DiffusersDDPM):
    """Drop-in for ``diffusers.DDPMScheduler`` (Ho et al., arXiv:2006.11239) whose ``step`` is one kernel.

    Fused: epsilon/sample/v_prediction, clip_sample with clip_sample_range, thresholding, every timestep
    spacing with steps_offset, custom ``timesteps`` lists, every variance type (fixed_small, fixed_small_log,
    fixed_large, fixed_large_log, learned, learned_range), classifier-free guidance (``model_output_uncond=``,
    ``guidance_scale=``; docs/guidance.md) and a given ``generator`` (noise drawn exactly as diffusers draws it).
    The update, with ``prev`` the next timestep of the schedule (``t - 1`` before ``set_timesteps``)::

        x0     = clip(P x + Q m)
        x_prev = sqrt(a_prev) beta_t/(1-a_t) x0 + sqrt(alpha_t) (1-a_prev)/(1-a_t) x + std_t z   (z only if t > 0)

    ``fixed_large_log`` differs from diffusers 0.42 on purpose: diffusers takes the square root of
    ``log(beta_t)`` and returns NaN; here it gives the evidently intended ``std = sqrt(beta_t)`` (a
    warning says so once).

    ``learned``/``learned_range`` (Nichol & Dhariwal 2021): the model output has twice the sample's channels,
    ``[:, :C]`` the prediction and ``[:, C:]`` the variance values ``v``, split as diffusers splits them; the
    kernel reads ``v`` through its variance input, ``std = exp(VA + VB v)`` per element (``learned_range``:
    ``log std^2 = f log beta_t + (1 - f) log beta_tilde_t`` with ``f = (v + 1)/2``; ``learned``: diffusers
    takes ``v`` as the variance, ``std = sqrt(v)``, so the step passes ``log v``, one torch pass over the
    variance channels). With a batch > 1 the two halves are strided views, copied once for the kernel. A
    model output without the variance channels runs diffusers' step (which fails on it for t > 0). With a GPU
    timestep tensor the last step (t = 0) computes ``0 * std(v) * z`` rather than skipping it: a ``learned``
    variance channel < 0 there (no valid variance; diffusers ignores it at t = 0) gives NaN.
    Multi-element or float timesteps fall back to diffusers. An integer timestep off the schedule falls back
    too (diffusers then raises); a GPU timestep tensor off the schedule gives NaN (checking would sync).
    With a GPU timestep tensor the noise is drawn on every step, the last one (t = 0) included, where
    diffusers skips it: the samples are the same, the generator ends one draw further on.

    Accepts what diffusers accepts: ``set_timesteps(10.0)``, a model output in another float dtype (result
    dtype ``torch.promote_types``), a model output that broadcasts against the sample, strided samples (the
    result takes the layout of ``sample - model_output``: diffusers' but with thresholding or ``'sample'``), a list of per-sample generators. ``scheduler.pydiff_noise = "philox"``:
    in-kernel noise keyed by a draw from the generator (``_common.step_noise``). Fallbacks are said once per
    scheduler and reason (logger ``pydiff.diffusers``) and listed by ``pydiff.explain(scheduler)``.

    In a pipeline, assign it (``pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)``); a pipeline
    saved with it reloads with it (``model_index.json`` names ``pydiff.diffusers``; import it before loading;
    ``pydiff_noise`` is run-time state, not saved).
    """

    __init__ = validated_init(
        _DiffusersDDPM.__init__,
        {"beta_schedule": BETA_SCHEDULES, "prediction_type": PREDICTION_TYPES, "timestep_spacing": SPACINGS,
         "variance_type": _VARIANCE_TYPES},
    )

    def set_timesteps(self, num_inference_steps=None, device=None, timesteps=None):
        num_inference_steps = check_num_inference_steps(num_inference_steps, floats=True)
        if num_inference_steps is None and timesteps is None:
            raise ValueError("give num_inference_steps or timesteps")
        super().set_timesteps(num_inference_steps, device=device, timesteps=timesteps)
        # tables outlive set_timesteps (bounded): a pipeline calling set_timesteps(n) per image rebuilds nothing
        if not isinstance(self.__dict__.get("_pydiff_tables"), TableCache):
            self._pydiff_tables = TableCache()
        self._pydiff_key = self.timesteps.cpu().numpy().tobytes()  # one read per set_timesteps, none per step
        self._pydiff_traced = self._traced(device)

    def _traced(self, device):
        """``(TracedTables, on-schedule timesteps)`` of this schedule, what a traced step reads (None when the
        configuration is not fused or its rows are not finite: such a step falls back, and the eager step raises
        the table's error as before). Built here because a traced step cannot run NumPy; the rows are the ones
        the eager step uses (its table cache), so this moves their cost from the first step to set_timesteps.
        The device copies are kept for the 2 most recent schedules and devices."""
        if self._pydiff_unsupported() is not None:
            return None
        key = self._pydiff_key
        cache = self.__dict__.setdefault("_pydiff_traced_tables", OrderedDict())
        ckey = (None if device is None else str(device), key)
        traced = cache.get(ckey)
        if traced is None:
            try:
                rows = self._pydiff_tables.rows(key, self._build_rows)
            except ValueError:
                return None
            on = frozenset(np.flatnonzero(~np.isnan(rows[:, COL["S"]])).tolist())  # S = inf: a clipped zero-SNR x0
            traced = cache[ckey] = (TracedTables(rows, device), on)
            if len(cache) > 2:
                cache.popitem(last=False)
        return traced

    def _build_rows(self) -> np.ndarray:
        cfg = self.config
        vt = cfg.variance_type
        if vt == "fixed_large_log" and not getattr(type(self), "_warned_large_log", False):
            warnings.warn("DDPMScheduler: variance_type='fixed_large_log' gives NaN in diffusers 0.42; pydiff uses "
                          "std = sqrt(beta_t) (the same as 'fixed_large')", stacklevel=3)
            type(self)._warned_large_log = True
        # float32 alphas_cumprod: scalars as diffusers computes them (ddpm_scalars)
        on_schedule = self.custom_timesteps or self.num_inference_steps
        rows, self._pydiff_on_schedule = ddpm_timestep_table(
            self.alphas_cumprod, self.timesteps.cpu().numpy() if on_schedule else None, variance_type=vt,
            prediction_type=cfg.prediction_type, clip=clip_bound(cfg),
            what=f"DDPMScheduler with prediction_type={cfg.prediction_type!r}, variance_type={vt!r}, "
                 f"rescale_betas_zero_snr={cfg.rescale_betas_zero_snr}")
        return rows

    def _pydiff_unsupported(self):
        """Why this configuration is not fused (None when it is): every DDPM configuration is."""
        return None

    def step(self, model_output, timestep, sample, generator=None, return_dict: bool = True, *,
             model_output_uncond=None, guidance_scale=None):
        """diffusers' ``step``, fused; with ``model_output_uncond`` and ``guidance_scale`` (keyword-only, both or
        neither), classifier-free guidance in the same pass: the step runs on ``m_e = model_output_uncond +
        guidance_scale (model_output - model_output_uncond)`` (Ho & Salimans 2022), ``model_output`` being the
        conditional output. With a learned variance only the prediction channels are combined; the variance
        channels are the conditional output's (as diffusers' DeepFloyd IF pipeline combines them).
        See docs/guidance.md."""
        guide = guidance_arg(model_output, model_output_uncond, guidance_scale)
        if not isinstance(getattr(self, "_pydiff_tables", None), TableCache):
            self._pydiff_tables = TableCache()  # step() before set_timesteps(): diffusers uses prev = t - 1
        learned = self.config.variance_type in DDPM_LEARNED_VARIANCE_TYPES
        split = learned and isinstance(sample, torch.Tensor) and sample.ndim >= 2 and isinstance(
            model_output, torch.Tensor) and model_output.ndim >= 2 and model_output.shape[1] == 2 * sample.shape[1]

        def parent():
            mo = model_output
            if guide is not None:
                if split:  # the prediction channels combined, the variance channels the conditional output's
                    c = sample.shape[1]
                    u = guide.uncond[:, :c]
                    mo = torch.cat([u + guide.scale * (model_output[:, :c] - u), model_output[:, c:]], dim=1)
                else:
                    mo = guide.combine(model_output)
            return super(DDPMScheduler, self).step(mo, timestep, sample, generator, return_dict)

        if learned and not split:
            fallback(self, f"variance_type={self.config.variance_type!r} with a model output without the variance "
                           "channels (twice the sample's channels)", key="no variance channels")
            return parent()
        var = uncond = None
        pred = model_output
        if split:
            c = sample.shape[1]
            pred, var = model_output[:, :c], model_output[:, c:]
        if guide is not None:
            uncond = guide.uncond[:, :sample.shape[1]] if split else guide.uncond
        io = StepIO(pred, sample)
        if io.mixed:
            fallback(self, io.mixed, key="mixed dtypes")
            return parent()
        if guide is not None and guide.differentiable:
            fallback(self, DIFFERENTIABLE_SCALE, key="a differentiable guidance scale")
            return parent()
        m_u = None if uncond is None else io.kernel(uncond)
        if self.config.thresholding and (needs_grad(io.x, io.m) or (m_u is not None and needs_grad(m_u))):
            # dynamic_threshold has no backward; diffusers' thresholding (torch.quantile) has one
            fallback(self, "thresholding while autograd records (pydiff's dynamic_threshold has no backward)",
                     key="thresholding under autograd")
            return parent()
        if var is not None:
            # diffusers: std = v ** 0.5 for 'learned', so the kernel's exp(v/2) takes log v
            var = io.kernel(torch.log(var) if self.config.variance_type == "learned" else var)
        promoting = promoting_timestep(timestep, sample)
        if promoting is not None:
            fallback(self, promoting, key="a promoting timestep")
            return parent()
        kind, t = timestep_arg(timestep, self.config.num_train_timesteps, sample.device)
        scale = None if guide is None else guide.scale
        if compiling():
            return self._traced_step(io, kind, t, pred, m_u, var, scale, parent, generator, return_dict)
        on_schedule = self.custom_timesteps or self.num_inference_steps
        key = self.__dict__.get("_pydiff_key") if on_schedule else "every t"
        rows = self._pydiff_tables.rows(key, self._build_rows)
        if rows is not self.__dict__.get("_pydiff_rows_of"):  # the timesteps that have rows (NaN off them)
            self._pydiff_rows_of = rows
            self._pydiff_on_schedule = ~np.isnan(rows[:, COL["S"]])
        if kind == "int" and not self._pydiff_on_schedule[t]:
            kind, t = None, f"timestep {t} is not on the schedule"
        if kind is None:
            fallback(self, t, key="an integer timestep off the schedule" if t.startswith("timestep ") else None)
            return parent()
        self.last_fallback_reason = None
        table = self._pydiff_tables.device_view(key, rows, sample.device, io.dtype)
        if scale is not None:
            table = guided_table(self, table, scale)
        coef, index = select_rows(kind, t, table)
        return self._fused(io, coef, index, kind == "device" or t > 0, pred, m_u, var, generator, return_dict)

    def _fused(self, io, coef, index, noisy, model_output, m_u, var, generator, return_dict):
        """The fused step; ``m_u``: the unconditional output of a guided step (kernel view; ``io.m`` is then
        the conditional one, ``m2``); ``var``: the variance input of a learned variance (kernel view)."""
        backend = self.pydiff_backend
        m, m2 = (io.m, None) if m_u is None else (m_u, io.m)
        threshold = threshold_scale(self, io.x, m, coef, index, m2)
        noise, seed, offset, rng = None, None, 0, None
        if noisy:
            # diffusers draws the noise like the model output (its shape and dtype), then broadcasts
            noise, seed, offset, rng = step_noise(self, model_output.shape, generator, model_output.device,
                                                  model_output.dtype, io)
        pred_x0, pred_k = io.empty()
        prev_sample, prev_k = io.empty()
        fused_step(io.x, m, coef, index=index, out=prev_k, w_out=pred_k, noise=noise, seed=seed, offset=offset,
                   rng=rng, threshold=threshold, m2=m2, var=var, backend=backend)
        prev_sample, pred_x0 = io.result(prev_sample), io.result(pred_x0)
        if m_u is None:  # (a guided pair: the x0 of the combined output, whose shape the kernel view lost)
            pred_x0 = x0_like_diffusers(self, pred_x0, model_output)
        if not return_dict:
            return prev_sample, pred_x0
        return DDPMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_x0)

    def _traced_step(self, io, kind, t, model_output, m_u, var, scale, parent, generator, return_dict):
        """The step while TorchDynamo traces: the tables ``set_timesteps`` prepared, the row picked by the kernel
        from the timestep tensor (as for a GPU timestep: off the schedule it is a NaN row, and the noise is drawn
        on every step, the last one included, where its coefficient is 0)."""
        traced = self.__dict__.get("_pydiff_traced")
        if traced is None or not (self.custom_timesteps or self.num_inference_steps):
            kind, t = None, "no fused table for a traced step (set_timesteps was not called, or its rows are not finite)"
        elif kind == "int" and t not in traced[1]:
            kind, t = None, f"timestep {t} is not on the schedule"
        if kind is None:
            fallback(self, t, key="an integer timestep off the schedule" if t.startswith("timestep ") else None)
            return parent()
        self.last_fallback_reason = None
        table = traced[0].view(io.device, io.dtype)
        if scale is not None:
            table = guided_table(self, table, scale)
        coef, index = select_rows(kind, t, table)
        return self._fused(io, coef, index, kind == "device" or t > 0, model_output, m_u, var, generator,
                           return_dict)
