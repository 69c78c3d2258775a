"""``DPM_Solver``: DPM-Solver and DPM-Solver++ samplers running on pydiff's fused steps.

Same constructor, ``sample``/``inverse``/``add_noise`` and helper methods as the authors'
``dpm_solver_pytorch.py``; the updates run as ``pydiff.ops.fused_step`` calls whose coefficients come
from a float64 plan compiled before the loop (``pydiff.plans.dpm_solver_plan``) and run by ``pydiff.runtime``,
so the non-adaptive loop makes no host syncs.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

from pydiff.ops import BACKENDS, COL, coef_row, fused_step

from ..plans import dpm_solver as cf
from ..plans.conversions import convert
from ..plans import dpm_solver_plan as pl
from ..runtime import (MODE_CALLABLE, MODE_NONE, MODE_THRESHOLD, Runner, correction_tables, device_tables,
                       dynamic_thresholding, run_adaptive)
from ._checks import (check_bool, check_callable, check_choice, check_int, check_int_choice, check_number,
                      check_sample_tensor)
from .schedule import NoiseScheduleVP, expand_dims
from .updates import UpdateMethods
from .wrapper import WrappedModel

_PLAN_CACHE_SIZE = 16


class DPM_Solver(UpdateMethods):
    """DPM-Solver (``algorithm_type='dpmsolver'``, noise prediction) and DPM-Solver++ (``'dpmsolver++'``,
    data prediction) for a VP diffusion model.

    Args:
        model_fn: ``model_fn(x, t_continuous) -> eps`` with ``t_continuous`` of shape ``(B,)``, e.g. from
            ``model_wrapper`` (whose output conversion the solver folds into its plans).
        noise_schedule: a ``pydiff.dpm_solver.NoiseScheduleVP``.
        algorithm_type: ``'dpmsolver++'`` (default) or ``'dpmsolver'``.
        correcting_x0_fn: ``None``, ``'dynamic_thresholding'`` (Imagen's, fused: ``s = max(quantile(|x0|,
            dynamic_thresholding_ratio), thresholding_max_val)``, ``x0 <- clamp(x0, -s, s)/s``), or a callable
            ``fn(x0, t) -> x0`` applied to every ``x0`` prediction (plain torch between two fused steps).
            Only data predictions are corrected: with ``'dpmsolver'`` that is just ``denoise_to_zero``.
        correcting_xt_fn: ``None`` or ``fn(x_t, t, step) -> x_t`` applied after every step (plain torch).
        thresholding_max_val: the lower bound of the thresholding scale ``s`` (the authors' name).
        dynamic_thresholding_ratio: the quantile of ``|x0|``, in (0, 1].
        backend: the fused-op backend (``None``: automatic; see ``pydiff.ops``).
    """

    def __init__(self, model_fn, noise_schedule, algorithm_type="dpmsolver++", correcting_x0_fn=None,
                 correcting_xt_fn=None, thresholding_max_val=1., dynamic_thresholding_ratio=0.995, *,
                 backend=None):
        check_callable("model_fn", model_fn, allow_none=False)
        if not isinstance(noise_schedule, NoiseScheduleVP):
            raise TypeError("noise_schedule must be a pydiff.dpm_solver.NoiseScheduleVP, "
                            f"got {type(noise_schedule).__name__}")
        check_choice("algorithm_type", algorithm_type, cf.ALGORITHMS)
        if isinstance(correcting_x0_fn, str):
            check_choice("correcting_x0_fn", correcting_x0_fn, ("dynamic_thresholding",))
        else:
            check_callable("correcting_x0_fn", correcting_x0_fn)
        check_callable("correcting_xt_fn", correcting_xt_fn)
        self.thresholding_max_val = check_number("thresholding_max_val", thresholding_max_val, low=0.0,
                                                 low_open=True)
        self.dynamic_thresholding_ratio = check_number("dynamic_thresholding_ratio", dynamic_thresholding_ratio,
                                                       low=0.0, high=1.0, low_open=True)
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"backend must be None or one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.model_fn_raw = model_fn
        self.model = lambda x, t: model_fn(x, t.expand((x.shape[0])))
        self.noise_schedule = noise_schedule
        self.algorithm_type = algorithm_type
        self._thresholding = correcting_x0_fn == "dynamic_thresholding"
        self.correcting_x0_fn = self.dynamic_thresholding_fn if self._thresholding else correcting_x0_fn
        self.correcting_xt_fn = correcting_xt_fn
        self.adaptive_nfe = None
        self._plans = OrderedDict()
        self._device_plans = OrderedDict()

    # ------------------------------------------------------------------ model views
    def _fold(self):
        m = self.model_fn_raw
        return isinstance(m, WrappedModel) and m.foldable

    def _raw_type(self):
        return self.model_fn_raw.model_type if self._fold() else "noise"

    def _guidance(self):
        """The classifier-free guidance scale the fused steps combine with (their rows' ``M1 = 1 - s``,
        ``M2 = s``), or None when the stages get one model output."""
        m = self.model_fn_raw
        if self._fold() and m.cfg_pair:
            return float(m.guidance_scale)
        return None

    def _stage_model(self, x, t_vec):
        """What a plan stage evaluates: the raw (guided) network output when folded, else ``eps``; with
        classifier-free guidance (``_guidance``) the raw pair ``(out_u, out_c)``, combined by the fused step."""
        if self._fold():
            if self.model_fn_raw.cfg_pair:
                return self.model_fn_raw.raw_pair(x, t_vec)
            return self.model_fn_raw.raw_output(x, t_vec)
        return self.model_fn_raw(x, t_vec)

    def _correction_mode(self):
        if self._thresholding:
            return MODE_THRESHOLD
        return MODE_CALLABLE if self.correcting_x0_fn is not None else MODE_NONE

    # ------------------------------------------------------------------ the authors' helper methods (plain torch)
    def dynamic_thresholding_fn(self, x0, t=None):
        """Imagen's dynamic thresholding of ``x0`` (fused): ``s = max(quantile(|x0|, ratio), thresholding_max_val)``."""
        return dynamic_thresholding(x0, self.dynamic_thresholding_ratio, self.thresholding_max_val, self.backend)

    def noise_prediction_fn(self, x, t):
        """The noise prediction ``eps(x, t)``."""
        return self.model(x, t)

    def data_prediction_fn(self, x, t):
        """The data prediction ``x0 = (x - sigma_t eps)/alpha_t``, corrected by ``correcting_x0_fn``."""
        noise = self.noise_prediction_fn(x, t)
        ns = self.noise_schedule
        alpha, sigma = ns.marginal_alpha(t), ns.marginal_std(t)
        if alpha.dim() > 0 and alpha.numel() == x.shape[0] and x.dim() > 1:
            alpha, sigma = expand_dims(alpha, x.dim()), expand_dims(sigma, x.dim())
        x0 = convert("x0", "eps", x, noise, alpha, sigma)
        if self.correcting_x0_fn is not None:
            x0 = self.correcting_x0_fn(x0, t)
        return x0

    def model_fn(self, x, t):
        """The solver's variable: ``x0`` for ``dpmsolver++``, ``eps`` for ``dpmsolver``."""
        if self.algorithm_type == "dpmsolver++":
            return self.data_prediction_fn(x, t)
        return self.noise_prediction_fn(x, t)

    def denoise_to_zero_fn(self, x, s):
        """The final denoising step: the data prediction at ``s``."""
        return self.data_prediction_fn(x, s)

    def get_time_steps(self, skip_type, t_T, t_0, N, device):
        """``N + 1`` time steps from ``t_T`` to ``t_0`` (``'logSNR'``, ``'time_uniform'``, ``'time_quadratic'``)."""
        check_choice("skip_type", skip_type, pl.SKIP_TYPES)
        N = check_int("N", N, low=1)
        ts = pl.time_steps(self.noise_schedule, skip_type, float(t_T), float(t_0), N)
        return torch.as_tensor(ts, dtype=torch.float32, device=device)

    def get_orders_and_timesteps_for_singlestep_solver(self, steps, order, skip_type, t_T, t_0, device):
        """``(timesteps_outer, orders)`` of singlestep "DPM-Solver-fast" with ``steps`` evaluations."""
        check_choice("skip_type", skip_type, pl.SKIP_TYPES)
        steps = check_int("steps", steps, low=1)
        order = check_int_choice("order", order, (1, 2, 3), "1, 2 or 3")
        orders = pl.singlestep_orders(steps, order)
        outer = pl.singlestep_outer_grid(self.noise_schedule, skip_type, float(t_T), float(t_0), steps, orders)
        return torch.as_tensor(outer, dtype=torch.float32, device=device), orders

    def dpm_solver_adaptive(self, x, order, t_T, t_0, h_init=0.05, atol=0.0078, rtol=0.05, theta=0.9, t_err=1e-5,
                            solver_type="dpmsolver"):
        """Adaptive step size DPM-Solver-12 (``order=2``) or -23 (``order=3``) from ``t_T`` down to ``t_0``.

        Syncs with the host once per accepted or rejected step (the step size depends on the data); the
        number of model evaluations is left in ``self.adaptive_nfe``.
        """
        check_sample_tensor("x", x)
        order = check_int_choice("order", order, (2, 3), "2 or 3 for the adaptive solver")
        check_choice("solver_type", solver_type, cf.SOLVER_TYPES)
        t_T, t_0 = check_number("t_T", t_T, low=0.0, low_open=True), check_number("t_0", t_0, low=0.0, low_open=True)
        if not t_0 < t_T:
            raise ValueError(f"t_0 must be smaller than t_T, got t_T={t_T}, t_0={t_0}")
        with torch.no_grad():
            return run_adaptive(self, x, order, t_T, t_0, check_number("h_init", h_init, low=0.0, low_open=True),
                                check_number("atol", atol, low=0.0, low_open=True), check_number("rtol", rtol, low=0.0),
                                check_number("theta", theta, low=0.0, high=1.0, low_open=True),
                                check_number("t_err", t_err, low=0.0, low_open=True), solver_type, False)

    # ------------------------------------------------------------------ sampling
    def add_noise(self, x, t, noise=None):
        """``x_t = alpha_t x + sigma_t noise`` for every time in ``t`` (shape ``(T,)``): ``(T, *x.shape)``,
        squeezed to ``x.shape`` when ``T == 1``. ``noise`` defaults to ``torch.randn``.
        """
        check_sample_tensor("x", x)
        if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.numel() == 0:
            raise ValueError("t must be a non-empty 1-D tensor of times")
        nt = t.shape[0]
        if noise is None:
            noise = torch.randn((nt, *x.shape), device=x.device, dtype=x.dtype)
        elif not isinstance(noise, torch.Tensor) or tuple(noise.shape) != (nt, *x.shape):
            raise ValueError(f"noise must be a tensor of shape {(nt, *x.shape)}")
        noise = noise.to(x.dtype)
        T = torch.float64 if x.dtype == torch.float64 else torch.float32
        tt = t.to(device=x.device, dtype=T)
        ns = self.noise_schedule
        coef = torch.as_tensor(coef_row(), dtype=T, device=x.device).repeat(nt, 1)
        coef[:, COL["A"]] = ns.marginal_alpha(tt).reshape(-1)
        coef[:, COL["C"]] = ns.marginal_std(tt).reshape(-1)
        xs = x.reshape(1, -1).expand(nt, -1).contiguous()
        out = fused_step(xs, xs, coef, noise=noise.reshape(nt, -1), backend=self.backend).reshape(nt, *x.shape)
        return out.squeeze(0) if nt == 1 else out

    def sample(self, x, steps=20, t_start=None, t_end=None, order=2, skip_type="time_uniform", method="multistep",
               lower_order_final=True, denoise_to_zero=False, solver_type="dpmsolver", atol=0.0078, rtol=0.05,
               return_intermediate=False, *, warmup="lower_order", third_order="authors"):
        """Solve the diffusion ODE from ``t_start`` (default ``T``) down to ``t_end`` (default ``1/N``).

        Args:
            x: the sample at ``t_start`` (e.g. standard normal noise), ``(B, ...)``; not modified.
            steps: number of model evaluations (NFE); ``singlestep_fixed`` uses ``(steps // order) * order``.
            order: 1, 2 or 3 (2 or 3 for ``'adaptive'``).
            skip_type: ``'time_uniform'``, ``'logSNR'`` or ``'time_quadratic'`` spacing of the steps.
            method: ``'multistep'``, ``'singlestep'`` (DPM-Solver-fast: orders <= ``order`` using all
                ``steps``), ``'singlestep_fixed'`` or ``'adaptive'`` (DPM-Solver-12/23; ``steps`` is ignored;
                syncs with the host once per accepted or rejected step).
            lower_order_final: multistep with ``steps < 10``: lower the order of the final steps.
            denoise_to_zero: finish with the data prediction at ``t_end`` (one more evaluation).
            solver_type: ``'dpmsolver'`` or ``'taylor'`` form of the high-order terms.
            atol, rtol: tolerances of the adaptive method.
            return_intermediate: also return the list of samples after each step.
            warmup: multistep order 3 only (keyword-only, not in the authors' API): ``'lower_order'`` (the
                authors': one first-order, then one second-order multistep step) or ``'singlestep'`` (the
                first two intervals as one singlestep DPM-Solver-2 step, no extra evaluation).
            third_order: multistep order 3 only (keyword-only): ``'authors'`` (default; the authors' second
                divided difference, which makes the method second order overall) or ``'consistent'``
                (``D2`` with its factor 2: third order). See docs/dpm_solver.md, "Convergence order".

        Returns:
            The sample at ``t_end``; with ``return_intermediate``, ``(sample, intermediates)``.
        """
        ns = self.noise_schedule
        t_0 = 1. / ns.total_N if t_end is None else check_number("t_end", t_end, low=0.0, low_open=True)
        t_T = ns.T if t_start is None else check_number("t_start", t_start, low=0.0, low_open=True)
        if not t_0 < t_T:
            raise ValueError(f"t_end must be smaller than t_start (sampling runs backwards in time), "
                             f"got t_start={t_T}, t_end={t_0}")
        return self._solve(x, steps, t_T, t_0, order, skip_type, method, lower_order_final, denoise_to_zero,
                           solver_type, atol, rtol, return_intermediate, warmup, third_order)

    def inverse(self, x, steps=20, t_start=None, t_end=None, order=2, skip_type="time_uniform", method="multistep",
                lower_order_final=True, denoise_to_zero=False, solver_type="dpmsolver", atol=0.0078, rtol=0.05,
                return_intermediate=False, *, warmup="lower_order", third_order="authors"):
        """Run the ODE forwards: from ``x`` at ``t_start`` (default ``1/N``) up to ``t_end`` (default ``T``).

        Same arguments as ``sample``, except that ``t_start < t_end`` and ``method='adaptive'`` is not supported.
        """
        ns = self.noise_schedule
        t_0 = 1. / ns.total_N if t_start is None else check_number("t_start", t_start, low=0.0, low_open=True)
        t_T = ns.T if t_end is None else check_number("t_end", t_end, low=0.0, low_open=True)
        if not t_0 < t_T:
            raise ValueError(f"inverse needs t_start < t_end, got t_start={t_0}, t_end={t_T}")
        if method == "adaptive":
            raise ValueError("method='adaptive' is not supported by inverse(); use a fixed-step method")
        return self._solve(x, steps, t_0, t_T, order, skip_type, method, lower_order_final, denoise_to_zero,
                           solver_type, atol, rtol, return_intermediate, warmup, third_order)

    # ------------------------------------------------------------------ internals
    def _solve(self, x, steps, t_from, t_to, order, skip_type, method, lower_order_final, denoise_to_zero,
               solver_type, atol, rtol, return_intermediate, warmup, third_order):
        ns = self.noise_schedule
        check_sample_tensor("x", x)
        if not x.is_contiguous():
            x = x.contiguous()  # the fused steps write contiguous buffers (a channels_last x is read once here)
        check_choice("method", method, pl.METHODS)
        check_choice("skip_type", skip_type, pl.SKIP_TYPES)
        check_choice("solver_type", solver_type, cf.SOLVER_TYPES)
        check_choice("warmup", warmup, pl.WARMUPS)
        check_choice("third_order", third_order, pl.THIRD_ORDER)
        lower_order_final = check_bool("lower_order_final", lower_order_final)
        denoise_to_zero = check_bool("denoise_to_zero", denoise_to_zero)
        return_intermediate = check_bool("return_intermediate", return_intermediate)
        if method == "adaptive":
            order = check_int_choice("order", order, (2, 3), "2 or 3 for method='adaptive'")
        else:
            order = check_int_choice("order", order, (1, 2, 3), "1, 2 or 3")
        steps = check_int("steps", steps, low=1)  # ignored by method='adaptive', but one rule for every call
        for name, tv in (("t_start/t_end", t_from), ("t_start/t_end", t_to)):
            if tv > ns.T * (1 + 1e-9):
                raise ValueError(f"{name} must lie in (0, T={ns.T}], got {tv}")
            if ns.schedule == "discrete" and tv < (1.0 / ns.total_N) * (1 - 1e-9):
                # below the first knot the piecewise-linear log alpha is extrapolated and turns positive
                # (sigma = sqrt(1 - alpha^2) is NaN there: the authors' code returns NaN or never ends)
                raise ValueError(f"{name} must be >= 1/N = {1.0 / ns.total_N} for a 'discrete' schedule of N = "
                                 f"{ns.total_N} steps (its first noise level), got {tv}")
        if method == "adaptive":
            atol = check_number("atol", atol, low=0.0, low_open=True)
            rtol = check_number("rtol", rtol, low=0.0)
            if return_intermediate:
                raise ValueError("return_intermediate is not supported with method='adaptive'")
            if self.correcting_xt_fn is not None:
                raise ValueError("correcting_xt_fn is not supported with method='adaptive'")
            with torch.no_grad():
                return run_adaptive(self, x, order, t_from, t_to, 0.05, atol, rtol, 0.9, 1e-5, solver_type,
                                    denoise_to_zero)
        if steps < order and method != "singlestep":
            # the authors' multistep asserts it; singlestep_fixed would take zero steps. Their singlestep runs
            # the lower orders that get_orders_and_timesteps_for_singlestep_solver gives (steps 2, order 3: [2])
            raise ValueError(f"steps must be >= order for method={method!r}, got steps={steps}, order={order}")
        key = (method, steps, order, skip_type, float(t_from), float(t_to), lower_order_final, denoise_to_zero,
               solver_type, self.algorithm_type, self._raw_type(),
               warmup if (method == "multistep" and order == 3) else "lower_order",
               third_order if (method == "multistep" and order == 3) else "authors")
        dev = self._device_plan(key, x.device, x.dtype)
        with torch.no_grad():
            return Runner(self, x, dev["tables"], dev["mode"]).run(dev["plan"], return_intermediate)

    def _compile(self, key):
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        (method, steps, order, skip_type, t_from, t_to, lof, d2z, solver_type, alg, raw_type, warmup, third) = key
        ns = self.noise_schedule
        if method == "multistep":
            plan = pl.compile_multistep(ns, alg, solver_type, raw_type, t_from, t_to, steps, order, skip_type,
                                        lof, d2z, warmup, third)
        else:
            plan = pl.compile_singlestep(ns, alg, solver_type, raw_type, t_from, t_to, steps, order, skip_type,
                                         method, d2z)
        self._plans[key] = plan
        if len(self._plans) > _PLAN_CACHE_SIZE:
            self._plans.popitem(last=False)
        return plan

    def _device_plan(self, key, device, dtype):
        mode = self._correction_mode()
        guidance = self._guidance()
        dkey = (key, mode, self.thresholding_max_val, guidance, str(device), dtype)
        if dkey in self._device_plans:
            self._device_plans.move_to_end(dkey)
            return self._device_plans[dkey]
        plan = self._compile(key)
        tables = device_tables(correction_tables(plan.rows, plan.to_x0, mode, self.thresholding_max_val, guidance),
                               plan.times, device, dtype)
        entry = {"plan": plan, "tables": tables, "mode": mode}
        self._device_plans[dkey] = entry
        if len(self._device_plans) > _PLAN_CACHE_SIZE:
            self._device_plans.popitem(last=False)
        return entry
