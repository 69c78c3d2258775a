"""``pydiff.diffusers.DPMSolverSinglestepScheduler``: diffusers' singlestep DPM-Solver(++), one kernel per step."""
from __future__ import annotations

from diffusers import DPMSolverSinglestepScheduler as _DiffusersDPMSS
from diffusers.utils.torch_utils import randn_tensor

from ..plans.dpm_solver_diffusers import singlestep_table
from ..schedules import BETA_SCHEDULES
from ._common import DropinMixin, check_num_inference_steps, fallback, guidance_arg, step_noise, validated_init
from .dpmsolver_multistep import (FusedDPMStep, check_solver_order, reset_fused_state, scheduler_sigmas,
                                  unsupported_common)

_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow_prediction")
_ALGORITHMS = ("dpmsolver", "dpmsolver++", "sde-dpmsolver++", "deis")  # deis -> dpmsolver++ (diffusers)
_SOLVER_TYPES = ("midpoint", "heun", "logrho", "bh1", "bh2")  # the last three -> midpoint (diffusers)


class DPMSolverSinglestepScheduler(FusedDPMStep, DropinMixin, _DiffusersDPMSS):
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
    ``pydiff.diffusers`` before loading); ``pydiff_noise`` is run-time state, not saved.
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
        return self._fused_dpm_step((model_output, timestep, sample, generator, return_dict), guide, generator)

    # the hooks of FusedDPMStep: diffusers' singlestep rules
    def _step_count(self, traced: bool) -> int:
        return self._pydiff_traced.n if traced else self._pydiff_rows.shape[1]

    def _past_end(self, i: int, n: int) -> bool:
        return i >= len(self.order_list) or i >= n

    def _step_order(self, i: int, n: int) -> int:
        # diffusers: the order of the list, lowered while the history is short (a run that starts mid-block)
        order = self.order_list[i]
        while order > 1 and self.model_outputs[-order + 1] is None:
            order -= 1
        return order

    def _step_history(self, order: int) -> list:
        hist = [self.model_outputs[-k] for k in range(1, order)]  # m_{i-1}, m_{i-2}
        if order > 1:
            hist.append(self.sample)  # the block's starting sample
        return hist

    def _step_noise(self, io, generator, variance_noise, shape):
        if self.config.algorithm_type != "sde-dpmsolver++":
            return None, None, 0, None
        # diffusers draws noise like the converted (promoted) model output (then broadcasts it): see _noise_shape
        return step_noise(self, shape, generator, io.device, io.dtype, io, draw=randn_tensor)

    def _step_done(self, order: int, io) -> None:
        if order == 1:
            self.sample = io.x_logical  # the block's start, as the kernel's dtype and shape (same values)
