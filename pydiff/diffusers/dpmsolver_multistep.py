"""``pydiff.diffusers.DPMSolverMultistepScheduler``: diffusers' multistep DPM-Solver(++), one kernel per step."""
from __future__ import annotations

import functools
import inspect
from collections import OrderedDict
from typing import NamedTuple

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler as _DiffusersDPMMS
from diffusers.schedulers.scheduling_utils import SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from ..ops import fused_step
from ..plans.dpm_solver_diffusers import multistep_order, multistep_table, row_is_finite
from ..plans.rows import finite_rows
from ..schedules import BETA_SCHEDULES, SPACINGS
from ._common import (DIFFERENTIABLE_SCALE, DropinMixin, StepIO, TableCache, TracedTables, check_num_inference_steps,
                      check_single_timestep, compiling, fallback, guidance_arg, guided_table, needs_grad, step_noise, threshold_scale,
                      validated_init)

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


class TracedPlan(NamedTuple):
    """What a traced step (``torch.compile``) reads instead of the NumPy plan: made by ``set_timesteps``.

    ``tables``: the rows (``TracedTables``, indexed ``(order - 1) * n + i`` like ``table_view``); ``finite``:
    per order, per step, whether the row is finite (``row_is_finite``); ``n``: the number of steps;
    ``index_of``: diffusers' ``index_for_timestep`` of every timestep value of the schedule (the second position
    of a value that occurs twice); ``start``: that of the schedule's first timestep.
    """

    tables: TracedTables
    finite: tuple
    n: int
    index_of: dict
    start: int


def traced_plan(rows: np.ndarray, timesteps: np.ndarray, device) -> TracedPlan:
    ts = np.asarray(timesteps).tolist()
    positions = {}
    for k, v in enumerate(ts):
        positions.setdefault(v, []).append(k)
    index_of = {v: (p[1] if len(p) > 1 else p[0]) for v, p in positions.items()}
    finite = tuple(tuple(r) for r in finite_rows(rows).tolist())
    start = index_of[ts[0]] if ts else 0
    return TracedPlan(TracedTables(rows, device), finite, rows.shape[1], index_of, start)


def traced_step_index(scheduler, timestep) -> int:
    """``host_step_index`` while TorchDynamo traces: ``begin_index`` when set, else the index of a Python integer
    timestep, and for a timestep tensor (CPU ones included: reading one is a graph break) the schedule's first
    timestep's, as for an accelerator tensor in eager mode (pipelines that start mid-schedule set
    ``begin_index``)."""
    if scheduler.begin_index is not None:
        return scheduler.begin_index
    plan = scheduler._pydiff_traced
    if isinstance(timestep, (int, np.integer)) and not isinstance(timestep, bool):
        return plan.index_of.get(int(timestep), plan.n - 1)
    return plan.start


def history_buffer(scheduler, io: StepIO, keep: int, fresh: bool = False):
    """The tensor to write this step's converted output into, and the updated ``model_outputs`` list.

    ``model_outputs`` (diffusers' list, oldest first) stays the source of truth, so fused steps and diffusers'
    own ``step`` can alternate. Only its newest ``keep = solver_order - 1`` entries are ever read again, and
    the oldest of them is read for the last time by this step: when pydiff allocated it, this step's output
    overwrites it (``w_out`` may alias a history input) and its stale entry becomes None. A run thus holds
    ``solver_order - 1`` buffers, and never writes into a tensor it did not allocate (diffusers' own steps
    may list the caller's ``model_output`` there). Buffers are in the step's output layout (``StepIO``), so
    a channels_last run keeps channels_last history without copies.

    ``fresh`` (autograd records this step): a new buffer every step. An autograd graph refers to the history
    tensors that entered it, so overwriting one would corrupt the gradient; a buffer that requires grad (from a
    recorded step) is never overwritten either.

    Returns ``(target, kernel view of target, new list)``; ``(None, None, new list)`` without history
    (``keep = 0``: the kernel writes no ``w``).
    """
    outs = scheduler.model_outputs
    owned = scheduler._pydiff_owned
    target = None
    if keep >= 1:
        cand = outs[-keep]
        if (not fresh and cand is not None and not cand.requires_grad and any(cand is t for t in owned)
                and io.matches(cand)):
            target = cand
            target_k = io.kernel(cand)
        else:
            target, target_k = io.empty()
    new = list(outs[1:]) + [target]
    if target is not None:
        new = [None if (t is target and k < len(new) - 1) else t for k, t in enumerate(new)]
        return target, target_k, new
    return None, None, new


def commit_history(scheduler, target, new_outputs) -> None:
    """Store ``history_buffer``'s updated list; pydiff owns ``target`` and whatever it owned that is still listed."""
    scheduler.model_outputs = new_outputs
    scheduler._pydiff_owned = [t for t in new_outputs if t is not None and (
        t is target or any(t is o for o in scheduler._pydiff_owned))]


def fused_reason(scheduler, traced: bool):
    """Why ``step`` cannot run fused (None when it can): the configuration, or no plan from ``set_timesteps``
    (``traced``: for a step TorchDynamo traces, the ``TracedPlan``).

    Raises diffusers' error when ``set_timesteps`` was never called."""
    if scheduler.num_inference_steps is None:
        raise ValueError(
            "Number of inference steps is 'None', you need to run 'set_timesteps' after creating the scheduler"
        )
    reason = scheduler._pydiff_unsupported()
    # a traced step reads the plan's torch form (a NumPy array in a traced function becomes a graph input)
    plan = scheduler.__dict__.get("_pydiff_traced") if traced else getattr(scheduler, "_pydiff_rows", None)
    if reason is None and plan is None:
        reason = "no fused plan (the timesteps were not set by this class's set_timesteps)"
    return reason


def table_view(scheduler, device, dtype, traced: bool = False):
    """The (3 n, NCOEF) row table on ``device`` in the compute dtype of ``dtype`` (uploaded once; ``traced``: the
    ``TracedPlan``'s copy, for a step TorchDynamo traces)."""
    if traced:
        return scheduler._pydiff_traced.tables.view(device, dtype)
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
    move them like diffusers does, drop the old history, and take the rows (and their device copies) for the
    new schedule when the configuration is fused.

    Rows are kept per (sigmas, order list, config) for the 4 most recent schedules: a pipeline that calls
    ``set_timesteps(n)`` for every image builds them once, and its first step finds the table on the device
    (the first step after a rebuild measured 0.04 ms more than the others, for the upload). With them, the
    plan's ``TracedPlan`` (what a step traced by ``torch.compile`` reads), made once per entry and device."""
    scheduler._pydiff_ts_host = scheduler.timesteps.numpy().copy()
    scheduler.timesteps = scheduler.timesteps.to(device=device)
    scheduler._pydiff_owned = []
    scheduler._pydiff_rows = None
    scheduler._pydiff_traced = None
    scheduler._pydiff_tables = TableCache()
    if scheduler._pydiff_unsupported() is not None:
        return
    plans = scheduler.__dict__.setdefault("_pydiff_plans", OrderedDict())
    key = (scheduler_sigmas(scheduler).tobytes(), tuple(getattr(scheduler, "order_list", None) or ()),
           repr(sorted(scheduler.config.items())))
    entry = plans.get(key)
    if entry is None:
        entry = plans[key] = (build_table(), TableCache(), {})
        if len(plans) > 4:
            plans.popitem(last=False)
    else:
        plans.move_to_end(key)
    scheduler._pydiff_rows, scheduler._pydiff_tables, traced = entry
    dkey = None if device is None else str(device)
    if dkey not in traced:
        traced[dkey] = traced_plan(scheduler._pydiff_rows, scheduler._pydiff_ts_host, device)
    scheduler._pydiff_traced = traced[dkey]
    preload_table(scheduler, device)


def preload_table(scheduler, device) -> None:
    """Upload the float32 table in ``set_timesteps(device=...)``, so that no step copies anything to the device."""
    if device is None:
        return
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    table_view(scheduler, dev, torch.float32)


def history_ok(tensors, io: StepIO) -> bool:
    """The history can enter this step's kernel: same shape, dtype and device as the step (layouts are
    converted by ``io.kernel``; ours already match)."""
    return all(isinstance(t, torch.Tensor) and t.shape == io.shape and t.dtype == io.dtype
               and t.device == io.device for t in tensors)


class FusedDPMStep:
    """The fused ``step`` shared by the multistep and singlestep drop-ins: the same checks, fallbacks, table
    row, history and one ``fused_step``, in diffusers' order. A drop-in provides diffusers' own parts as hooks:
    ``_parent_step`` (diffusers' step with its signature), ``_step_count`` (the table's steps per order),
    ``_past_end``, ``_step_order`` (diffusers' order at step ``i``), ``_step_history`` (the history tensors of
    that order), ``_step_noise`` (the noise diffusers would draw) and ``_step_done`` (its bookkeeping after the
    step); ``_input_problem`` may name a reason to fall back once the inputs are known. ``args`` are the
    arguments of diffusers' ``step`` in its order, ``return_dict`` last."""

    def _input_problem(self, io, variance_noise):
        return None

    def _fused_dpm_step(self, args, guide, generator, variance_noise=None):
        model_output, timestep, sample = args[:3]
        check_single_timestep(timestep)
        traced = compiling()
        reason = fused_reason(self, traced)
        if reason is None and guide is not None and guide.differentiable:
            reason = DIFFERENTIABLE_SCALE
        if reason is not None:
            return self._parent_step(reason, *args, guide=guide)
        io = StepIO(model_output, sample)
        if io.mixed:
            return self._parent_step(io.mixed, *args, key="mixed dtypes", guide=guide)
        reason = self._input_problem(io, variance_noise)
        if reason is not None:
            return self._parent_step(reason, *args, guide=guide)
        cfg = self.config
        if self._step_index is None:
            self._step_index = traced_step_index(self, timestep) if traced else host_step_index(self, timestep)
        i = self._step_index
        n = self._step_count(traced)
        if self._past_end(i, n):
            return self._parent_step(f"step index {i} past the last step", *args, key="a step past the last one",
                                     guide=guide)
        order = self._step_order(i, n)
        finite = self._pydiff_traced.finite[order - 1][i] if traced else row_is_finite(self._pydiff_rows[order - 1, i])
        if not finite:
            return self._parent_step(f"non-finite coefficients at step {i} (order {order})", *args,
                                     key="non-finite coefficients", guide=guide)
        hist = self._step_history(order)
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
        # guided: m = uncond, m2 = cond (M1 = 1 - s, M2 = s in the row); w_out keeps the converted guided output
        m, m2 = (io.m, None) if m_u is None else (m_u, io.m)
        threshold = threshold_scale(self, io.x, m, coef, None, m2)
        # the model output diffusers converts (the guided combination of the pair): its noise may keep that shape
        mo_shape = model_output.shape if guide is None else torch.broadcast_shapes(model_output.shape,
                                                                                   guide.uncond.shape)
        noise, seed, offset, rng = self._step_noise(io, generator, variance_noise, self._noise_shape(io, mo_shape))
        target, target_k, new_outputs = history_buffer(self, io, cfg.solver_order - 1, fresh=grad)
        prev_sample, prev_k = io.empty()
        fused_step(io.x, m, coef, out=prev_k, w_out=target_k, hist=[io.kernel(h) for h in hist], noise=noise,
                   seed=seed, offset=offset, rng=rng, threshold=threshold, m2=m2, backend=self.pydiff_backend)
        prev_sample = io.result(prev_sample)
        self._step_done(order, io)
        commit_history(self, target, new_outputs)
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev_sample) if args[-1] else (prev_sample,)

    def _noise_shape(self, io, mo_shape):
        """The shape of diffusers' SDE noise draw: that of the converted model output, which keeps a batch-1 model
        output's shape where the conversion is the identity (x0 = the output for 'sample' in the ++ family, eps = the
        output for 'epsilon' otherwise, unless thresholding recomputes it from x0); elsewhere the broadcast shape.
        The batch-1 draw then broadcasts: every sample gets the same noise, as in diffusers."""
        cfg = self.config
        plus = cfg.algorithm_type.endswith("++")
        identity = (cfg.prediction_type == "sample") if plus else (cfg.prediction_type == "epsilon"
                                                                    and not cfg.thresholding)
        return mo_shape if identity else io.shape


class DPMSolverMultistepScheduler(FusedDPMStep, DropinMixin, _DiffusersDPMMS):
    """Drop-in for ``diffusers.DPMSolverMultistepScheduler`` (DPM-Solver, arXiv:2206.00927; DPM-Solver++,
    arXiv:2211.01095) whose ``step`` is one ``fused_step`` (plus ``dynamic_threshold`` when thresholding).

    Same constructor, config, ``set_timesteps``, ``step`` and outputs as diffusers (``step`` also takes
    ``model_output_uncond=`` and ``guidance_scale=``: classifier-free guidance in the same kernel, the history
    holding the converted guided output; docs/guidance.md). Fused: algorithm_type
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
    history is rounded the same way. Falls back to diffusers (a warning once per scheduler and reason, logger
    ``pydiff.diffusers``; the reason in ``last_fallback_reason``; all in ``pydiff.explain(scheduler)``) for:
    variance_type learned/learned_range, use_exponential_sigmas, use_beta_sigmas, use_flow_sigmas,
    prediction_type flow_prediction, solver_order > 3, sde-dpmsolver with solver_order 3, thresholding with
    algorithm_type dpmsolver/sde-dpmsolver and solver_order > 1 (the history must then hold ``eps`` re-derived
    from the thresholded ``x0``, a second output the kernel does not write), a ``variance_noise`` of another
    shape, a step past the end, and steps whose coefficients are not finite (degenerate custom timesteps):
    there diffusers' own result (or error) is what you get.

    Accepts what diffusers' ``step`` accepts: ``set_timesteps`` with a NumPy integer or a one-element integer
    tensor, a model output that broadcasts against the sample, channels_last or otherwise strided tensors (the
    result and the history keep the layout diffusers gives); a model output in another dtype than the sample
    runs diffusers' own step (see ``_common.StepIO``). A timestep tensor with several elements (per-sample
    timesteps) is a ValueError, as it is an error in diffusers. ``scheduler.pydiff_noise = "philox"`` gives the
    sde variants in-kernel noise keyed by a draw from the generator (``_common.step_noise``).

    In a pipeline, assign it (a pipeline constructor may rebuild its scheduler argument as a diffusers class)::

        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)

    A pipeline saved with it reloads with it (``model_index.json`` names ``pydiff.diffusers``; import
    ``pydiff.diffusers`` before loading); ``pydiff_noise`` is run-time state, not saved.
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
        num_inference_steps = check_num_inference_steps(num_inference_steps, tensors=True)
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

    def _step_order(self, i: int, n: int) -> int:
        """The order diffusers' ``step`` uses at step ``i`` (its own rules, on the host)."""
        cfg = self.config
        return multistep_order(i, n, solver_order=cfg.solver_order, lower_order_final=cfg.lower_order_final,
                               euler_at_final=cfg.euler_at_final, final_sigmas_type=cfg.final_sigmas_type,
                               warm=self.lower_order_nums)

    def _parent_step(self, reason, model_output, timestep, sample, generator, variance_noise, return_dict, key=None,
                     guide=None):
        fallback(self, reason, key)
        if guide is not None:  # diffusers' step on the combined output, as a pipeline calls it
            model_output = guide.combine(model_output)
        return super().step(model_output, timestep, sample, generator, variance_noise, return_dict)

    def step(self, model_output, timestep, sample, generator=None, variance_noise=None, return_dict: bool = True, *,
             model_output_uncond=None, guidance_scale=None):
        """diffusers' ``step``, fused; with ``model_output_uncond`` and ``guidance_scale`` (keyword-only, both or
        neither), classifier-free guidance in the same pass: the step runs on ``m_e = model_output_uncond +
        guidance_scale (model_output - model_output_uncond)`` (Ho & Salimans 2022), ``model_output`` being the
        conditional output, and the history keeps the converted guided output, as when the caller combines
        first. See docs/guidance.md."""
        guide = guidance_arg(model_output, model_output_uncond, guidance_scale)
        args = (model_output, timestep, sample, generator, variance_noise, return_dict)
        return self._fused_dpm_step(args, guide, generator, variance_noise)

    # the hooks of FusedDPMStep: diffusers' multistep rules
    def _input_problem(self, io, variance_noise):
        if self._sde() and variance_noise is not None and (
                not isinstance(variance_noise, torch.Tensor) or variance_noise.shape != io.shape):
            return "a variance_noise of another shape than the sample"
        return None

    def _sde(self) -> bool:
        return self.config.algorithm_type in ("sde-dpmsolver", "sde-dpmsolver++")

    def _step_count(self, traced: bool) -> int:
        return self._pydiff_traced.n if traced else len(self._pydiff_ts_host)

    def _past_end(self, i: int, n: int) -> bool:
        return i >= n

    def _step_history(self, order: int) -> list:
        return [self.model_outputs[-k] for k in range(1, order)]  # m_{i-1}, m_{i-2}

    def _step_noise(self, io, generator, variance_noise, shape):
        if not self._sde():
            return None, None, 0, None
        if variance_noise is not None:
            variance_noise = variance_noise.to(device=io.device, dtype=torch.float32)
        # diffusers draws float32 noise of the converted output's shape (then broadcasts it)
        return step_noise(self, shape, generator, io.device, torch.float32, io, variance_noise, draw=randn_tensor)

    def _step_done(self, order: int, io) -> None:
        if self.lower_order_nums < self.config.solver_order:
            self.lower_order_nums += 1
