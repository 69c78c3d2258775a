"""``pydiff.diffusers.DPMSolverMultistepScheduler``: diffusers' multistep DPM-Solver(++), one kernel per step."""
from __future__ import annotations

import functools
import inspect

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler as _DiffusersDPMMS
from diffusers.schedulers.scheduling_utils import SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from ..ops import fused_step
from ..plans.dpm_solver_diffusers import multistep_order, multistep_table, row_is_finite
from ..schedules import BETA_SCHEDULES, SPACINGS
from ._common import TableCache, check_num_inference_steps, check_pair, fallback, threshold_scale, validated_init

_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow_prediction")
_ALGORITHMS = ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++", "deis")  # deis -> dpmsolver++
_SOLVER_TYPES = ("midpoint", "heun", "logrho", "bh1", "bh2")  # the last three -> midpoint (diffusers)


def check_solver_order(init, max_order=None):
    """Wrap ``init`` so that ``solver_order`` must be an int >= 1 (and <= ``max_order``)."""
    sig = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        so = bound.arguments.get("solver_order")
        bad = isinstance(so, bool) or not isinstance(so, (int, np.integer)) or so < 1
        if bad or (max_order is not None and so > max_order):
            hi = f" and <= {max_order}" if max_order is not None else ""
            raise ValueError(f"solver_order must be an int >= 1{hi}, got {so!r}")
        init(self, *args, **kwargs)

    return __init__


def host_step_index(scheduler, timestep) -> int:
    """diffusers' ``_init_step_index`` without a device sync.

    ``begin_index`` when set; else the position of ``timestep`` in the schedule (the second match when it
    occurs twice, the last step when it is absent: diffusers' ``index_for_timestep``), looked up in a host
    copy of the timesteps. A timestep tensor on an accelerator is not read (that would sync): the run is
    taken to start at the schedule's first timestep.
    """
    if scheduler.begin_index is not None:
        return scheduler.begin_index
    ts = scheduler._pydiff_ts_host
    if isinstance(timestep, torch.Tensor):
        if timestep.device.type == "cpu" and timestep.numel() == 1:
            value = timestep.detach().reshape(-1).numpy()[0]
        else:
            value = ts[0]
    else:
        value = timestep
    cand = np.flatnonzero(ts == value)
    if len(cand) == 0:
        return len(ts) - 1
    return int(cand[1] if len(cand) > 1 else cand[0])


def history_buffer(scheduler, sample, keep: int):
    """The tensor to write this step's converted output into, and the updated ``model_outputs`` list.

    ``model_outputs`` (diffusers' list, oldest first) stays the source of truth, so fused steps and diffusers'
    own ``step`` can alternate. Only its newest ``keep = solver_order - 1`` entries are ever read again, and
    the oldest of them is read for the last time by this step: when pydiff allocated it, this step's output
    overwrites it (``w_out`` may alias a history input) and its stale entry becomes None. A run thus holds
    ``solver_order - 1`` buffers, and never writes into a tensor it did not allocate (diffusers' own steps
    may list the caller's ``model_output`` there).
    """
    outs = scheduler.model_outputs
    owned = scheduler._pydiff_owned
    target = None
    if keep >= 1:
        cand = outs[-keep]
        if (cand is not None and any(cand is t for t in owned) and cand.shape == sample.shape
                and cand.dtype == sample.dtype and cand.device == sample.device):
            target = cand
        else:
            target = torch.empty_like(sample, memory_format=torch.contiguous_format)
    new = list(outs[1:]) + [target]
    if target is not None:
        new = [None if (t is target and k < len(new) - 1) else t for k, t in enumerate(new)]
    return target, new


def commit_history(scheduler, target, new_outputs) -> None:
    """Store ``history_buffer``'s updated list; pydiff owns ``target`` and whatever it owned that is still listed."""
    scheduler.model_outputs = new_outputs
    scheduler._pydiff_owned = [t for t in new_outputs if t is not None and (
        t is target or any(t is o for o in scheduler._pydiff_owned))]


def fused_reason(scheduler):
    """Why ``step`` cannot run fused (None when it can): the configuration, or no plan from ``set_timesteps``.

    Raises diffusers' error when ``set_timesteps`` was never called."""
    if scheduler.num_inference_steps is None:
        raise ValueError(
            "Number of inference steps is 'None', you need to run 'set_timesteps' after creating the scheduler"
        )
    reason = scheduler._pydiff_unsupported()
    if reason is None and getattr(scheduler, "_pydiff_rows", None) is None:
        reason = "no fused plan (the timesteps were not set by this class's set_timesteps)"
    return reason


def table_view(scheduler, device, dtype):
    """The (3 n, NCOEF) row table on ``device`` in the compute dtype of ``dtype`` (uploaded once)."""
    rows = scheduler._pydiff_rows
    return scheduler._pydiff_tables.device_view("rows", rows.reshape(-1, rows.shape[-1]), device, dtype)


def scheduler_sigmas(scheduler) -> np.ndarray:
    """The sigmas the rows are built from: diffusers' float32 ones, so the rows' scalars (alpha, sigma, lambda)
    round like diffusers' (``pydiff.plans.dpm_solver.points_from_sigmas``); float64 with
    ``pydiff_float64_scalars = True`` (exact coefficients, the tests' way of pinning every formula against
    diffusers run in float64)."""
    sig = scheduler.sigmas.detach().cpu()
    return sig.double().numpy() if scheduler.pydiff_float64_scalars else sig.float().numpy()


def unsupported_common(cfg):
    """The fallback reasons both DPM-Solver drop-ins share (None when none applies).

    Beta sigmas stay unfused on purpose: with the noise form at order 3 they measured 2.6e-5 from diffusers
    at 10 steps and gave repeated sigmas (h = 0, non-finite rows) at 20."""
    if cfg.variance_type in ("learned", "learned_range"):
        return f"variance_type={cfg.variance_type!r}"
    for opt in ("use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas"):
        if getattr(cfg, opt, False):
            return f"{opt}=True"
    if cfg.prediction_type not in ("epsilon", "sample", "v_prediction"):
        return f"prediction_type={cfg.prediction_type!r}"
    return None


def reset_fused_state(scheduler, device, build_table) -> None:
    """After the parent's ``set_timesteps`` (run with ``device=None``): keep a host copy of the timesteps,
    move them like diffusers does, drop the old history and tables, and build (and upload) the new rows when
    the configuration is fused."""
    scheduler._pydiff_ts_host = scheduler.timesteps.numpy().copy()
    scheduler.timesteps = scheduler.timesteps.to(device=device)
    scheduler._pydiff_tables = TableCache()
    scheduler._pydiff_owned = []
    scheduler._pydiff_rows = None
    if scheduler._pydiff_unsupported() is None:
        scheduler._pydiff_rows = build_table()
        preload_table(scheduler, device)


def preload_table(scheduler, device) -> None:
    """Upload the float32 table in ``set_timesteps(device=...)``, so that no step copies anything to the device."""
    if device is None:
        return
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    table_view(scheduler, dev, torch.float32)


def history_ok(tensors, sample) -> bool:
    return all(isinstance(t, torch.Tensor) and t.shape == sample.shape and t.dtype == sample.dtype
               and t.device == sample.device for t in tensors)


class DPMSolverMultistepScheduler(_DiffusersDPMMS):
    """Drop-in for ``diffusers.DPMSolverMultistepScheduler`` (DPM-Solver, arXiv:2206.00927; DPM-Solver++,
    arXiv:2211.01095) whose ``step`` is one ``fused_step`` (plus ``dynamic_threshold`` when thresholding).

    Same constructor, config, ``set_timesteps``, ``step`` and outputs as diffusers. Fused: algorithm_type
    ``dpmsolver++``, ``sde-dpmsolver++``, ``dpmsolver`` and ``sde-dpmsolver`` (orders 1-2; diffusers has no
    third-order sde-dpmsolver), solver_order 1-3, solver_type midpoint/heun, prediction_type
    epsilon/sample/v_prediction, thresholding, lower_order_final, euler_at_final, use_karras_sigmas,
    use_lu_lambdas, final_sigmas_type zero/sigma_min, every timestep spacing, custom ``timesteps``,
    ``rescale_betas_zero_snr``, ``lambda_min_clipped``, and a given ``generator`` or ``variance_noise``
    (noise drawn exactly as diffusers draws it, so the same generator gives the same images).

    Per step ``i`` the order diffusers would use (warm-up, lower_order_final, euler_at_final) is decided on
    the host; its coefficients come from a float64 table built by ``set_timesteps`` for every step and order
    (``pydiff.plans.dpm_solver_diffusers``)::

        w  = clip(S (P x + Q m))                   # x0 (++ variants) or eps (dpmsolver), as diffusers converts
        x' = A x + B0 w + B1 m_{i-1} + B2 m_{i-2} + C z

    The finite differences ``D1``, ``D2`` of the papers are expanded into the weights ``B0..B2``. The step
    counter is diffusers' own ``_step_index``, kept on the host; the first step finds it from the timestep
    in a host copy of the schedule (or ``begin_index``), so ``step`` never syncs with the device (a timestep
    tensor on an accelerator is taken to be the schedule's first one). The converted outputs rotate through
    ``solver_order - 1`` buffers, listed in ``model_outputs`` as diffusers lists them.

    Computation is in float32 (float64 for float64 data), as diffusers computes the update; its float16
    history is rounded the same way. Falls back to diffusers (logged at debug level, reason in
    ``last_fallback_reason``) for: variance_type learned/learned_range, use_exponential_sigmas,
    use_beta_sigmas, use_flow_sigmas, prediction_type flow_prediction, solver_order > 3, sde-dpmsolver with
    solver_order 3, thresholding with algorithm_type dpmsolver/sde-dpmsolver and solver_order > 1 (the
    history must then hold ``eps`` re-derived from the thresholded ``x0``, a second output the kernel does not
    write), a ``variance_noise`` of another shape, a step past the end, and steps whose coefficients are not
    finite (degenerate custom timesteps): there diffusers' own result (or error) is what you get.
    """

    pydiff_float64_scalars = False  # see scheduler_sigmas

    __init__ = check_solver_order(validated_init(
        _DiffusersDPMMS.__init__,
        {"beta_schedule": BETA_SCHEDULES, "prediction_type": _PREDICTION_TYPES, "algorithm_type": _ALGORITHMS,
         "solver_type": _SOLVER_TYPES, "final_sigmas_type": ("zero", "sigma_min"),
         "variance_type": (None, "learned", "learned_range"), "timestep_spacing": SPACINGS,
         "time_shift_type": ("exponential",)},
    ))

    def set_timesteps(self, num_inference_steps=None, device=None, mu=None, timesteps=None):
        check_num_inference_steps(num_inference_steps)
        # timesteps stay on the CPU for the host copy, then move like diffusers moves them
        super().set_timesteps(num_inference_steps, device=None, mu=mu, timesteps=timesteps)
        cfg = self.config
        reset_fused_state(self, device, lambda: multistep_table(
            scheduler_sigmas(self), solver_order=cfg.solver_order, algorithm=cfg.algorithm_type,
            solver_type=cfg.solver_type, prediction_type=cfg.prediction_type, thresholding=cfg.thresholding,
            lower_order_final=cfg.lower_order_final, euler_at_final=cfg.euler_at_final,
            final_sigmas_type=cfg.final_sigmas_type))

    def _pydiff_unsupported(self):
        """Why this configuration is not fused (None when it is)."""
        cfg = self.config
        reason = unsupported_common(cfg)
        if reason:
            return reason
        if cfg.solver_order > 3:
            return f"solver_order={cfg.solver_order}"
        if cfg.algorithm_type == "sde-dpmsolver" and cfg.solver_order == 3:
            return "algorithm_type='sde-dpmsolver' with solver_order=3"
        if cfg.thresholding and cfg.algorithm_type in ("dpmsolver", "sde-dpmsolver") and cfg.solver_order > 1:
            return f"thresholding with algorithm_type={cfg.algorithm_type!r} and solver_order > 1"
        if cfg.algorithm_type not in ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++"):
            return f"algorithm_type={cfg.algorithm_type!r}"
        return None

    def _order(self, i: int, n: int) -> int:
        """The order diffusers' ``step`` uses at step ``i`` (its own rules, on the host)."""
        cfg = self.config
        return multistep_order(i, n, solver_order=cfg.solver_order, lower_order_final=cfg.lower_order_final,
                               euler_at_final=cfg.euler_at_final, final_sigmas_type=cfg.final_sigmas_type,
                               warm=self.lower_order_nums)

    def _parent_step(self, reason, model_output, timestep, sample, generator, variance_noise, return_dict):
        fallback(self, reason)
        return super().step(model_output, timestep, sample, generator, variance_noise, return_dict)

    def step(self, model_output, timestep, sample, generator=None, variance_noise=None, return_dict: bool = True):
        args = (model_output, timestep, sample, generator, variance_noise, return_dict)
        reason = fused_reason(self)
        if reason is not None:
            return self._parent_step(reason, *args)
        check_pair(model_output, sample)
        cfg = self.config
        sde = cfg.algorithm_type in ("sde-dpmsolver", "sde-dpmsolver++")
        if sde and variance_noise is not None and (
                not isinstance(variance_noise, torch.Tensor) or variance_noise.shape != sample.shape):
            return self._parent_step("a variance_noise of another shape than the sample", *args)
        if self._step_index is None:
            self._step_index = host_step_index(self, timestep)
        i, n = self._step_index, len(self._pydiff_ts_host)
        if i >= n:
            return self._parent_step(f"step index {i} past the last step", *args)
        order = self._order(i, n)
        row = self._pydiff_rows[order - 1, i]
        if not row_is_finite(row):
            return self._parent_step(f"non-finite coefficients at step {i} (order {order})", *args)
        hist = [self.model_outputs[-k] for k in range(1, order)]  # m_{i-1}, m_{i-2}
        if not history_ok(hist, sample):
            return self._parent_step("the history does not match the sample (shape, dtype or device)", *args)
        self.last_fallback_reason = None

        coef = table_view(self, sample.device, sample.dtype)[(order - 1) * n + i]
        backend = self.pydiff_backend
        threshold = threshold_scale(self, sample, model_output, coef, None)
        noise = None
        if sde:
            if variance_noise is None:
                noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                     dtype=torch.float32)
            else:
                noise = variance_noise.to(device=model_output.device, dtype=torch.float32)
            noise = noise.to(sample.dtype)
        target, new_outputs = history_buffer(self, sample, cfg.solver_order - 1)
        prev_sample = fused_step(sample, model_output, coef, w_out=target, hist=hist, noise=noise,
                                 threshold=threshold, backend=backend)
        commit_history(self, target, new_outputs)
        if self.lower_order_nums < cfg.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)
