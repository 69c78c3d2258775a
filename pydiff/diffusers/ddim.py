"""``pydiff.diffusers.DDIMScheduler``: diffusers' DDIM with the step fused into one kernel."""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
from diffusers import DDIMScheduler as _DiffusersDDIM
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

from .._checks import real_number
from ..ops import COL, NCOEF, fused_step
from ..plans import PREDICTION_TYPES
from ..plans.ddim_ddpm import DDIMEtaRows, ddim_timestep_table
from ..schedules import BETA_SCHEDULES, SPACINGS
from ._common import (DIFFERENTIABLE_SCALE, DropinMixin, StepIO, TableCache, check_num_inference_steps, clip_bound,
                      compiling, fallback, guidance_arg, guided_table, needs_grad, promoting_timestep, select_rows, step_noise,
                      threshold_scale, timestep_arg, validated_init, with_guidance, x0_like_diffusers)


def _eta_arg(eta) -> float:
    """``eta`` as a float: Python or NumPy numbers and one-element tensors (diffusers multiplies with any)."""
    return real_number("eta", eta, minimum=0.0, tensors=True)


class TracedEtaRows:
    """``DDIMEtaRows`` as torch tensors, so that a traced step (``torch.compile``) makes any eta's row in the graph.

    ``row(t, eta)`` is ``DDIMEtaRows.row`` written in torch ops: ``std = eta sqrt(var_t)`` and ``direction =
    sqrt(1 - a_prev - std^2)`` in float32, ``row = r0 + direction (r1 - r0)`` in float64 with columns C and CLIP
    set. ``t`` a Python int or a one-element int64 tensor; the parts are framed by NaN rows, so an off-range
    tensor timestep (clamped onto the frame) or an eta too large for the step (``sqrt`` of a negative number)
    gives a NaN row, hence NaN outputs: the traced step cannot check on the host.
    """

    __slots__ = ("r0", "dr", "a_prev", "sqrt_var", "n")

    def __init__(self, parts: DDIMEtaRows, device=None):
        dev = torch.device("cpu") if device is None else torch.device(device)
        nan_row = np.full((1, NCOEF), np.nan)
        nan = np.full(1, np.nan, dtype=np.float32)
        self.r0 = torch.from_numpy(np.concatenate([nan_row, parts._r0, nan_row])).to(dev)
        self.dr = torch.from_numpy(np.concatenate([nan_row, parts._dr, nan_row])).to(dev)
        self.a_prev = torch.from_numpy(np.concatenate([nan, parts._a_prev.astype(np.float32), nan])).to(dev)
        self.sqrt_var = torch.from_numpy(np.concatenate([nan, parts._sqrt_var.astype(np.float32), nan])).to(dev)
        self.n = len(parts._a_prev)

    def row(self, t, eta: float, device) -> torch.Tensor:
        """The float64 ``(NCOEF,)`` row of timestep ``t`` for ``eta``, on ``device``."""
        if isinstance(t, torch.Tensor):  # a (1,) index: a gather in the graph (a 0-d one would be a host read)
            i = t.to(self.r0.device).reshape(1).clamp(-1, self.n) + 1
        else:
            i = [t + 1]
        std = self.sqrt_var[i] * eta  # float32 times the eta rounded to float32, as DDIMEtaRows
        direction = torch.sqrt(1 - self.a_prev[i] - std * std)
        r0 = self.r0[i]
        row = r0 + direction.double()[:, None] * self.dr[i]
        cols = torch.arange(NCOEF, device=row.device)
        row = torch.where(cols == COL["C"], std.double()[:, None], row)
        # CLIP of r1 - r0 is inf - inf when not clipping: take r0's
        row = torch.where(cols == COL["CLIP"], r0[:, COL["CLIP"], None], row)
        return row.reshape(NCOEF).to(device)


class DDIMScheduler(DropinMixin, _DiffusersDDIM):
    """Drop-in for ``diffusers.DDIMScheduler`` (Song et al., arXiv:2010.02502) whose ``step`` is one kernel.

    Same constructor, config, ``set_timesteps``, ``step`` and outputs as diffusers; every config option
    (eta, epsilon/sample/v_prediction, clip_sample and clip_sample_range, use_clipped_model_output,
    thresholding, set_alpha_to_one, steps_offset, all timestep spacings, rescale_betas_zero_snr) and a
    given ``generator`` or ``variance_noise`` run fused, and so does classifier-free guidance
    (``step(..., model_output_uncond=, guidance_scale=)``: both outputs read once by the kernel; docs/guidance.md). Noise is drawn exactly as diffusers draws it, so
    the same generator gives the same images. The update, per timestep ``t`` and ``prev = t - N // n``
    (diffusers' rule, whatever the spacing)::

        x0     = clip((x - sqrt(1-a_t) eps) / sqrt(a_t))            (or the sample / v conversion)
        sigma  = eta sqrt((1-a_prev)/(1-a_t)) sqrt(1 - a_t/a_prev)
        x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z

    Coefficients: a float64 row per timestep value, computed from the scheduler's float32 ``alphas_cumprod`` as
    diffusers computes its scalars; ``step`` picks a row by a Python int or, for a timestep tensor on the GPU,
    inside the kernel (no host sync). The tables of the 4 most recent (eta, use_clipped_model_output) pairs
    are kept; an eta seen for the first time with a host timestep gets just its row (~30 us), so an eta that
    changes every step costs one row per step and no memory. Set ``scheduler.pydiff_backend`` to force a
    backend; ``scheduler.pydiff_noise = "philox"`` for in-kernel noise (see ``_common.step_noise``).

    Accepts what diffusers' ``step`` accepts: a model output in another float dtype (the result has
    ``torch.promote_types`` of the two, as diffusers' arithmetic gives), a model output that broadcasts
    against the sample (batch 1), channels_last or otherwise strided tensors (the result takes the layout of
    ``sample - model_output``: diffusers' but with thresholding or ``prediction_type='sample'``, same values),
    ``eta`` as a NumPy number or a one-element tensor. Falls back to diffusers (a warning
    once per scheduler and reason through the ``pydiff.diffusers`` logger, the reason in
    ``last_fallback_reason``, all of them in ``pydiff.explain(scheduler)``) for timestep tensors with several
    elements, float timesteps and off-range integer timesteps.

    In a pipeline, assign it: ``pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)``.
    ``DDIMPipeline(unet, scheduler=DDIMScheduler())`` does not keep it: diffusers' constructor rebuilds the
    scheduler as ``diffusers.DDIMScheduler.from_config(...)`` -- which also holds when such a pipeline is loaded
    (``from_pretrained`` calls that constructor), so after loading a DDIMPipeline assign the drop-in again. Other
    pipelines saved with it reload with it (``model_index.json`` names ``pydiff.diffusers``; import
    ``pydiff.diffusers`` before loading). ``pydiff_noise`` is a run-time attribute, not config: it is not saved.
    """

    __init__ = validated_init(
        _DiffusersDDIM.__init__,
        {"beta_schedule": BETA_SCHEDULES, "prediction_type": PREDICTION_TYPES, "timestep_spacing": SPACINGS},
    )

    def set_timesteps(self, num_inference_steps: int, device=None):
        if num_inference_steps is None:
            raise TypeError("num_inference_steps must be an int, got NoneType")
        # diffusers 0.42 takes 10.0 here but its step then fails indexing with a float: rejected up front
        super().set_timesteps(check_num_inference_steps(num_inference_steps), device=device)
        # tables outlive set_timesteps: a pipeline calling set_timesteps(n) per image rebuilds nothing
        self._pydiff_grid = (self.num_inference_steps, self.timesteps.cpu().numpy().tobytes())
        if not isinstance(self.__dict__.get("_pydiff_tables"), TableCache):
            self._pydiff_tables = TableCache()
            self._pydiff_seen = OrderedDict()  # keys used once, most recent last
            self._pydiff_parts = OrderedDict()
        self._pydiff_traced = self._traced(device)

    def _traced(self, device) -> dict:
        """``{use_clipped_model_output: TracedEtaRows}`` for this grid, what a traced step reads (built here: a
        traced step cannot run NumPy). ``use_clipped_model_output=True`` rows differ only when clipping or
        thresholding; otherwise one object serves both. Kept for the 2 most recent grids and devices: a pipeline
        calling ``set_timesteps(n)`` per image rebuilds nothing (the eager step builds the same ``DDIMEtaRows``
        on its first call; here it is built a step earlier, not twice)."""
        cfg = self.config
        key = (None if device is None else str(device),) + self._pydiff_grid
        cache = self.__dict__.setdefault("_pydiff_traced_parts", OrderedDict())
        traced = cache.get(key)
        if traced is None:
            variants = (False, True) if (cfg.thresholding or math.isfinite(clip_bound(cfg))) else (False,)
            traced = {u: TracedEtaRows(self._eta_rows(u), device) for u in variants}
            traced.setdefault(True, traced[False])
            cache[key] = traced
            if len(cache) > 2:
                cache.popitem(last=False)
        return traced

    def _pydiff_unsupported(self):
        """Why this configuration is not fused: every DDIM configuration is."""
        return None

    def _what(self, eta) -> str:
        cfg = self.config
        return (f"DDIMScheduler with eta={eta}, prediction_type={cfg.prediction_type!r}, "
                f"rescale_betas_zero_snr={cfg.rescale_betas_zero_snr}")

    def _rows(self, eta: float, use_clipped: bool) -> np.ndarray:
        """Rows for every timestep value; scalars in float32 as diffusers computes them (see ddim_scalars)."""
        cfg = self.config
        return ddim_timestep_table(
            self.alphas_cumprod, self.final_alpha_cumprod, cfg.num_train_timesteps // self.num_inference_steps,
            eta=eta, prediction_type=cfg.prediction_type, clip=clip_bound(cfg),
            use_clipped_model_output=use_clipped, thresholding=cfg.thresholding,
            check_timesteps=self.timesteps.cpu().numpy(), what=self._what(eta))

    def _eta_rows(self, use_clipped: bool) -> DDIMEtaRows:
        """The plan layer's any-eta row maker for this grid (cached: a per-step eta schedule uses it each step)."""
        key = (use_clipped,) + self._pydiff_grid
        parts = self._pydiff_parts.get(key)
        if parts is None:
            cfg = self.config
            parts = self._pydiff_parts[key] = DDIMEtaRows(
                self.alphas_cumprod, self.final_alpha_cumprod, cfg.num_train_timesteps // self.num_inference_steps,
                prediction_type=cfg.prediction_type, clip=clip_bound(cfg), use_clipped_model_output=use_clipped,
                thresholding=cfg.thresholding)
            if len(self._pydiff_parts) > 2:
                self._pydiff_parts.popitem(last=False)
        return parts

    def _coef(self, kind, t, eta: float, use_clipped: bool, device, dtype, scale=None):
        """(coef, index) of timestep ``t``; with the guidance columns of ``scale`` when it is not None."""
        key = (eta, use_clipped) + self._pydiff_grid
        cache = self._pydiff_tables
        if cache.get(key) is None and kind == "int" and key not in self._pydiff_seen:
            # first use of this eta: one row, not a table (a per-step eta schedule never repeats one)
            self._pydiff_seen[key] = None
            if len(self._pydiff_seen) > 8:
                self._pydiff_seen.popitem(last=False)
            row = self._eta_rows(use_clipped).row(t, eta)
            if row is not None:
                cdtype = torch.float64 if dtype == torch.float64 else torch.float32
                coef = torch.from_numpy(row).to(device=device, dtype=cdtype)
                return (coef if scale is None else with_guidance(coef, scale)), None
            # not finite: the table names the first bad timestep of the run (or holds NaN off the grid)
        rows = cache.rows(key, lambda: self._rows(eta, use_clipped))
        table = cache.device_view(key, rows, device, dtype)
        if scale is not None:
            table = guided_table(self, table, scale)
        return select_rows(kind, t, table)

    def step(self, model_output, timestep, sample, eta: float = 0.0, use_clipped_model_output: bool = False,
             generator=None, variance_noise=None, return_dict: bool = True, *, model_output_uncond=None,
             guidance_scale=None):
        """diffusers' ``step``, fused; with ``model_output_uncond`` and ``guidance_scale`` (keyword-only, both or
        neither), classifier-free guidance in the same pass: the step runs on ``m_e = model_output_uncond +
        guidance_scale (model_output - model_output_uncond)`` (Ho & Salimans 2022), ``model_output`` being the
        conditional output; ``pred_original_sample`` is the guided x0. See docs/guidance.md."""
        guide = guidance_arg(model_output, model_output_uncond, guidance_scale)
        if self.num_inference_steps is None:
            raise ValueError(
                "Number of inference steps is 'None', you need to run 'set_timesteps' after creating the scheduler"
            )
        io = StepIO(model_output, sample)

        def parent():
            mo = model_output if guide is None else guide.combine(model_output)
            return super(DDIMScheduler, self).step(mo, timestep, sample, eta, use_clipped_model_output, generator,
                                                   variance_noise, return_dict)

        if io.mixed:
            fallback(self, io.mixed, key="mixed dtypes")
            return parent()
        if guide is not None and guide.differentiable:
            fallback(self, DIFFERENTIABLE_SCALE, key="a differentiable guidance scale")
            return parent()
        if isinstance(eta, torch.Tensor) and eta.requires_grad and torch.is_grad_enabled():
            fallback(self, "eta is a tensor that requires grad (the fused row takes it as a constant; diffusers' "
                           "arithmetic differentiates it)", key="a differentiable eta")
            return parent()
        m_u = None if guide is None else io.kernel(guide.uncond)
        if self.config.thresholding and (needs_grad(io.x, io.m) or (m_u is not None and needs_grad(m_u))):
            # dynamic_threshold has no backward; diffusers' thresholding (torch.quantile) has one
            fallback(self, "thresholding while autograd records (pydiff's dynamic_threshold has no backward)",
                     key="thresholding under autograd")
            return parent()
        eta = _eta_arg(eta)
        if eta > 0 and variance_noise is not None and generator is not None:
            raise ValueError(
                "Cannot pass both generator and variance_noise. Please make sure that either `generator` or"
                " `variance_noise` stays `None`."
            )
        promoting = promoting_timestep(timestep, sample)
        if promoting is not None:
            fallback(self, promoting, key="a promoting timestep")
            return parent()
        kind, t = timestep_arg(timestep, self.config.num_train_timesteps, sample.device)
        if kind is None:
            fallback(self, t, key="an integer timestep off the range" if t.startswith("timestep ") else None)
            return parent()
        self.last_fallback_reason = None
        scale = None if guide is None else guide.scale
        if compiling():  # the row in the graph, from tensors set_timesteps made (no NumPy, no table building)
            cdtype = torch.float64 if io.dtype == torch.float64 else torch.float32
            row = self._pydiff_traced[bool(use_clipped_model_output)].row(t, eta, sample.device)
            coef, index = row.to(cdtype), None
            if scale is not None:
                coef = with_guidance(coef, scale)
        else:
            coef, index = self._coef(kind, t, eta, bool(use_clipped_model_output), sample.device, io.dtype, scale)
        backend = self.pydiff_backend
        # guided: m = uncond, m2 = cond (M1 = 1 - s, M2 = s in the row)
        m, m2 = (io.m, None) if m_u is None else (m_u, io.m)
        threshold = threshold_scale(self, io.x, m, coef, index, m2)
        noise, seed, offset, rng = None, None, 0, None
        if eta > 0:
            # diffusers draws the noise like the model output (its shape and dtype), then broadcasts
            noise, seed, offset, rng = step_noise(self, model_output.shape, generator, model_output.device,
                                                  model_output.dtype, io, variance_noise)
        pred_x0, pred_k = io.empty()
        prev_sample, prev_k = io.empty()
        fused_step(io.x, m, coef, index=index, out=prev_k, w_out=pred_k, noise=noise, seed=seed, offset=offset,
                   rng=rng, threshold=threshold, m2=m2, backend=backend)
        prev_sample, pred_x0 = io.result(prev_sample), io.result(pred_x0)
        pred_x0 = x0_like_diffusers(self, pred_x0, model_output, None if guide is None else guide.uncond)
        if not return_dict:
            return prev_sample, pred_x0
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_x0)
