"""``pydiff.diffusers.DPMSolverSinglestepScheduler``: diffusers' singlestep DPM-Solver(++), one kernel per step."""
from __future__ import annotations

from diffusers import DPMSolverSinglestepScheduler as _DiffusersDPMSS
from diffusers.schedulers.scheduling_utils import SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from ..ops import fused_step
from ..plans.dpm_solver_diffusers import row_is_finite, singlestep_table
from ..schedules import BETA_SCHEDULES
from ._common import (DropinMixin, StepIO, check_num_inference_steps, check_single_timestep, compiling, fallback,
                      guidance_arg, guided_table, needs_grad, step_noise, threshold_scale, validated_init)
from .dpmsolver_multistep import (check_solver_order, commit_history, fused_reason, history_buffer, history_ok,
                                  host_step_index, reset_fused_state, scheduler_sigmas, table_view, traced_step_index,
                                  unsupported_common)

_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow_prediction")
_ALGORITHMS = ("dpmsolver", "dpmsolver++", "sde-dpmsolver++", "deis")  # deis -> dpmsolver++ (diffusers)
_SOLVER_TYPES = ("midpoint", "heun", "logrho", "bh1", "bh2")  # the last three -> midpoint (diffusers)


class DPMSolverSinglestepScheduler(DropinMixin, _DiffusersDPMSS):
    """Drop-in for ``diffusers.DPMSolverSinglestepScheduler`` (DPM-Solver, arXiv:2206.00927; DPM-Solver++,
    arXiv:2211.01095) whose ``step`` is one ``fused_step`` (plus ``dynamic_threshold`` when thresholding).

    Same constructor, config, ``set_timesteps``, ``step`` and outputs as diffusers (``step`` also takes
    ``model_output_uncond=`` and ``guidance_scale=``: classifier-free guidance in the same kernel, the history
    holding the converted guided output; docs/guidance.md) (one ``step`` call per model
    evaluation; the orders come from diffusers' ``get_order_list``). Fused: algorithm_type ``dpmsolver++``,
    ``sde-dpmsolver++`` and ``dpmsolver``, solver_order 1-3, solver_type midpoint/heun, prediction_type
    epsilon/sample/v_prediction, thresholding (``++`` variants), lower_order_final, use_karras_sigmas,
    final_sigmas_type zero/sigma_min, ``lambda_min_clipped``, custom ``timesteps``, and a given ``generator``
    (noise drawn exactly as diffusers draws it).

    A singlestep block of order ``o`` starts from the sample ``x_b`` of its first step; its ``k``-th step
    updates from ``x_b`` with the converted outputs of the block so far. The current sample enters only
    through the conversion, so one row per (step, order) does it::

        w  = clip(S (P x + Q m))                   # x0 (++ variants) or eps (dpmsolver)
        x' = B0 w + B1 m_{i-1} + B2 m_{i-2} + (A | B2 | B3) x_b + C z

    with ``x_b`` passed as the last history tensor (``x`` itself at order 1). ``self.sample`` keeps ``x_b``
    as diffusers keeps it. The step counter is diffusers' ``_step_index`` on the host (first step: the
    timestep's position in a host copy of the schedule, or ``begin_index``; no device sync). Computation is in
    float32 (float64 for float64 data); diffusers computes in the data's dtype, so in float16 this is the more
    accurate of the two.

    Falls back to diffusers (a warning once per scheduler and reason, logger ``pydiff.diffusers``;
    the reason in ``last_fallback_reason``; all in ``pydiff.explain(scheduler)``) for: variance_type
    learned/learned_range, use_exponential_sigmas, use_beta_sigmas, use_flow_sigmas, prediction_type
    flow_prediction, thresholding with algorithm_type dpmsolver (diffusers 0.42 indexes ``alpha_t`` with the
    deprecated ``timestep`` argument there and fails), a step past the end, and steps whose coefficients are
    not finite. ``solver_order`` outside 1-3 is a ValueError, as in diffusers (which raises it from
    ``get_order_list``).

    Accepts what diffusers' ``step`` accepts: ``set_timesteps`` with a NumPy integer or a one-element integer
    tensor, a model output that broadcasts against the sample, channels_last or otherwise strided tensors (the
    result and the history keep the layout diffusers gives); a model output in another dtype than the sample
    runs diffusers' own step (see ``_common.StepIO``). A timestep tensor with several elements (per-sample
    timesteps) is a ValueError, as it is an error in diffusers. ``scheduler.pydiff_noise = "philox"`` gives the
    sde variants in-kernel noise keyed by a draw from the generator (``_common.step_noise``).

    In a pipeline, assign it (a pipeline constructor may rebuild its scheduler argument as a diffusers class)::

        pipe.scheduler = DPMSolverSinglestepScheduler.from_config(pipe.scheduler.config)

    A pipeline saved with it reloads with it (``model_index.json`` names ``pydiff.diffusers``; import
    ``pydiff.diffusers`` before loading).
    """

    pydiff_float64_scalars = False  # see dpmsolver_multistep.scheduler_sigmas

    __init__ = check_solver_order(validated_init(
        _DiffusersDPMSS.__init__,
        {"beta_schedule": BETA_SCHEDULES, "prediction_type": _PREDICTION_TYPES, "algorithm_type": _ALGORITHMS,
         "solver_type": _SOLVER_TYPES, "final_sigmas_type": ("zero", "sigma_min"),
         "variance_type": (None, "learned", "learned_range"), "time_shift_type": ("exponential",)},
    ), max_order=3)

    def set_timesteps(self, num_inference_steps=None, device=None, mu=None, timesteps=None):
        num_inference_steps = check_num_inference_steps(num_inference_steps, tensors=True)
        super().set_timesteps(num_inference_steps, device=None, mu=mu, timesteps=timesteps)
        cfg = self.config
        reset_fused_state(self, device, lambda: singlestep_table(
            scheduler_sigmas(self), self.order_list, algorithm=cfg.algorithm_type, solver_type=cfg.solver_type,
            prediction_type=cfg.prediction_type))

    def _pydiff_unsupported(self):
        """Why this configuration is not fused (None when it is)."""
        cfg = self.config
        reason = unsupported_common(cfg)
        if reason:
            return reason
        if cfg.thresholding and cfg.algorithm_type == "dpmsolver":
            return "thresholding with algorithm_type='dpmsolver'"
        if cfg.algorithm_type not in ("dpmsolver", "dpmsolver++", "sde-dpmsolver++"):
            return f"algorithm_type={cfg.algorithm_type!r}"
        return None

    def _parent_step(self, reason, model_output, timestep, sample, generator, return_dict, key=None, guide=None):
        fallback(self, reason, key)
        if guide is not None:  # diffusers' step on the combined output, as a pipeline calls it
            model_output = guide.combine(model_output)
        return super().step(model_output, timestep, sample, generator, return_dict)

    def step(self, model_output, timestep, sample, generator=None, return_dict: bool = True, *,
             model_output_uncond=None, guidance_scale=None):
        """diffusers' ``step``, fused; with ``model_output_uncond`` and ``guidance_scale`` (keyword-only, both or
        neither), classifier-free guidance in the same pass: the step runs on ``m_e = model_output_uncond +
        guidance_scale (model_output - model_output_uncond)`` (Ho & Salimans 2022), ``model_output`` being the
        conditional output, and the history keeps the converted guided output, as when the caller combines
        first. See docs/guidance.md."""
        guide = guidance_arg(model_output, model_output_uncond, guidance_scale)
        check_single_timestep(timestep)
        args = (model_output, timestep, sample, generator, return_dict)
        traced = compiling()
        reason = fused_reason(self, traced)
        if reason is not None:
            return self._parent_step(reason, *args, guide=guide)
        io = StepIO(model_output, sample)
        if io.mixed:
            return self._parent_step(io.mixed, *args, key="mixed dtypes", guide=guide)
        cfg = self.config
        if self._step_index is None:
            self._step_index = traced_step_index(self, timestep) if traced else host_step_index(self, timestep)
        i = self._step_index
        n = self._pydiff_traced.n if traced else self._pydiff_rows.shape[1]
        if i >= len(self.order_list) or i >= n:
            return self._parent_step(f"step index {i} past the last step", *args, key="a step past the last one",
                                     guide=guide)
        # diffusers: the order of the list, lowered while the history is short (a run that starts mid-block)
        order = self.order_list[i]
        while order > 1 and self.model_outputs[-order + 1] is None:
            order -= 1
        finite = self._pydiff_traced.finite[order - 1][i] if traced else row_is_finite(self._pydiff_rows[order - 1, i])
        if not finite:
            return self._parent_step(f"non-finite coefficients at step {i} (order {order})", *args,
                                     key="non-finite coefficients", guide=guide)
        hist = [self.model_outputs[-k] for k in range(1, order)]  # m_{i-1}, m_{i-2}
        if order > 1:
            hist.append(self.sample)  # the block's starting sample
        if not history_ok(hist, io):
            return self._parent_step("the history does not match the sample (shape, dtype or device)", *args,
                                     guide=guide)
        m_u = None if guide is None else io.kernel(guide.uncond)
        grad = needs_grad(io.x, io.m, *hist) or (m_u is not None and needs_grad(m_u))
        if cfg.thresholding and grad:
            # dynamic_threshold has no backward; diffusers' thresholding (torch.quantile) has one
            return self._parent_step("thresholding while autograd records (pydiff's dynamic_threshold has no "
                                     "backward)", *args, key="thresholding under autograd", guide=guide)
        self.last_fallback_reason = None

        table = table_view(self, sample.device, io.dtype, traced)
        if guide is not None:
            table = guided_table(self, table, guide.scale)
        coef = table[(order - 1) * n + i]
        backend = self.pydiff_backend
        # guided: m = uncond, m2 = cond (M1 = 1 - s, M2 = s in the row); w_out keeps the converted guided output
        m, m2 = (io.m, None) if m_u is None else (m_u, io.m)
        threshold = threshold_scale(self, io.x, m, coef, None, m2)
        noise, seed, offset, rng = None, None, 0, None
        if cfg.algorithm_type == "sde-dpmsolver++":
            # diffusers draws noise like the converted (promoted, broadcast) model output
            noise, seed, offset, rng = step_noise(self, io.shape, generator, io.device, io.dtype, io,
                                                  draw=randn_tensor)
        target, target_k, new_outputs = history_buffer(self, io, cfg.solver_order - 1, fresh=grad)
        prev_sample, prev_k = io.empty()
        fused_step(io.x, m, coef, out=prev_k, w_out=target_k, hist=[io.kernel(h) for h in hist], noise=noise,
                   seed=seed, offset=offset, rng=rng, threshold=threshold, m2=m2, backend=backend)
        prev_sample = io.result(prev_sample)
        if order == 1:
            self.sample = io.x_logical  # the block's start, as the kernel's dtype and shape (same values)
        commit_history(self, target, new_outputs)
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)
