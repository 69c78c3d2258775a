"""Adaptive step size DPM-Solver (DPM-Solver-12 and -23, arXiv:2206.00927 section 4.2 / appendix).

Each attempt from ``s`` takes a step ``h`` in ``lambda`` with a lower- and a higher-order singlestep solver
that share their model evaluations (order 2: DPM-Solver-1 and singlestep-2 with ``r1 = 1/2``; order 3:
singlestep-2 and singlestep-3 with ``r1 = 1/3``, ``r2 = 2/3``), and measures

    E = max_b  rms_i( (x_high - x_low) / max(atol, rtol * max(|x_low|, |x_prev|)) )

(``x_prev``: the lower-order result of the last accepted step). ``E <= 1`` accepts ``x_high``; either way
``h <- min(theta h E^(-1/order), lambda_end - lambda_s)``. The step size depends on the data, so the
coefficients are computed on the host, in float64, once per attempt, and the loop reads ``E`` back:
**one host sync per accepted or rejected step**. The updates themselves are fused steps; ``x_high - x_low``
is one more fused step from the float64 coefficient differences (not a subtraction of two rounded
results), and the norm is a few elementwise ops and one ``sumsq`` reduction.

**Differences below the solution's precision count as zero.** Before the norm, every element with
``|x_high - x_low| <= eps * max(|x_low|, |x_prev|)`` (``eps = torch.finfo(x.dtype).eps``: one unit of the
stored solution; each of the two results is rounded by at most half of one) is set to zero. Measured on
the Gaussian problem of tests/dpm_solver/test_dpm_solver_adaptive_fp32.py (exact model computed in float32; three
schedules x two algorithms), DPM-Solver-23:

* The first attempt from ``t = T`` (``h = 0.05``) has a tiny true error: float64 ``E = 1.5e-9`` (``++``
  form) and ``9e-12`` (noise form). The next step ``theta h E^(-1/3)`` is cut to the rest of the interval
  whenever ``E < (theta h / (lambda_0 - lambda_s))^3 = 0.9e-7 .. 1.05e-7``, so float64 jumps to the end.
* The fused difference resolves what float32 cannot store: the rounding of the model outputs (amplified
  by the ``x0`` conversion's ``1/alpha_T ~ 160``), a few hundredths of a unit of ``x`` (median). It read
  ``E = 1.2e-7 .. 2.1e-7``, just above the cut: float32 took a second step of ``h ~ 9`` instead, then a
  different step sequence, and ended 1.1e-3 .. 6.5e-2 (relative L2) from the float64 result at the same
  tolerance.
* The authors' code subtracts the two rounded float32 results, which below one unit are mostly the same
  number: ``E = 0 .. 6.0e-8`` (below the cut) on five cases; on the sixth (continuous linear, noise form)
  6.4e-7, and that run takes other steps too. Their float32 runs end 7.6e-6 .. 7.7e-4 from our float64.
* With the mask: ``E = 0``, or 5.0e-8 on the cosine table (a factor 1.8 below the cut, as the authors');
  float32 takes float64's steps and ends 7e-7 .. 3.5e-6 from the float64 result.

Elsewhere the mask is inert: a masked element moves ``E`` by at most ``eps / rtol`` (2.4e-6 in float32)
against the accept/reject decision at 1, and in float64 (``eps = 2.2e-16``) these runs are bitwise
unchanged. DPM-Solver-12 is unaffected: its step factor ``E^(-1/2)`` is cut for any first ``E`` below
~2e-5, and its float32 runs ended 2e-7 .. 1.9e-5 from float64 before and after.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from pydiff.ops import coef_row, fused_step, sumsq
from pydiff.ops import compute_dtype

from pydiff.plans import dpm_solver as cf
from pydiff.plans.rows import RowBuilder
from .runner import Runner, correction_tables, device_tables


def scaled_error_norm(diff, x_low, x_prev, atol, rtol, backend=None):
    """``max_b sqrt(mean_i((diff/delta)^2))`` with ``diff = x_high - x_low`` and
    ``delta = max(atol, rtol max(|x_low|, |x_prev|))``, after zeroing the elements of ``diff`` that are at
    most one unit of the solution's dtype, ``finfo(x_low.dtype).eps * max(|x_low|, |x_prev|)``.

    Returns a host float (this is the sync point of the adaptive solver).
    """
    T = compute_dtype(diff.dtype)
    mag = torch.maximum(x_low.to(T).abs(), x_prev.to(T).abs())
    delta = torch.clamp_min(mag * rtol, atol)
    d = diff.to(T)
    # Below one unit of the solution's dtype, x_high and x_low are the same stored number (each is
    # rounded by at most half a unit): such differences are rounding noise, not local error (module doc).
    d = d.masked_fill(d.abs() <= torch.finfo(x_low.dtype).eps * mag, 0.0)
    ratio = d / delta
    n = ratio[0].numel()
    ss = sumsq(ratio, backend=backend)
    return float(torch.sqrt(ss / n).max())


class _Rows(RowBuilder):
    """The few coefficient rows of one attempt, with the conversion target and time of each."""

    def __init__(self, raw_type, alg):
        super().__init__()
        self.raw_type, self.alg = raw_type, alg
        self.to_x0, self.times = [], []

    def model_row(self, p: cf.Point, A, b0, hist_w=(), to_x0=None):
        """A stage that converts the model output at ``p`` (x0 for dpmsolver++, eps otherwise)."""
        to_x0 = (self.alg == "dpmsolver++") if to_x0 is None else to_x0
        self.to_x0.append(to_x0)
        self.times.append(p.t)
        return self.add_update(cf.conversion("x0" if to_x0 else "eps", self.raw_type, p), A, b0, hist_w)

    def combine_row(self, A, b0, hist_w=()):
        """A combination of already converted outputs (``w`` is the model-output input as it is)."""
        self.to_x0.append(False)
        self.times.append(0.0)
        return self.add_update((0.0, 1.0, 1.0), A, b0, hist_w)


def run_adaptive(solver, x, order, t_T, t_0, h_init, atol, rtol, theta, t_err, solver_type, denoise_to_zero,
                 max_attempts=100000):
    ns, alg, backend = solver.noise_schedule, solver.algorithm_type, solver.backend
    raw_type, mode = solver._raw_type(), solver._correction_mode()
    lam_s, lam_0 = float(ns._lambda64(t_T)), float(ns._lambda64(t_0))
    s, h = float(t_T), float(h_init)
    x_prev = x
    nfe = 0
    attempts = 0
    while abs(s - t_0) > t_err:
        attempts += 1
        if attempts > max_attempts:
            raise RuntimeError(f"adaptive DPM-Solver did not reach t_end after {max_attempts} attempts")
        ps = cf.point(ns, s)
        pt = cf.point_at_lambda(ns, lam_s + h)
        hh = pt.lam - ps.lam
        R = _Rows(raw_type, alg)
        if order == 2:
            r1 = 0.5
            p1 = cf.point_at_lambda(ns, ps.lam + r1 * hh)
            A1, c1 = cf.first_order(alg, ps, p1)
            ra = R.model_row(ps, A1, c1["s"])
            Al, cl = cf.first_order(alg, ps, pt)
            rl = R.combine_row(Al, cl["s"])
            A, comb = cf.singlestep_second(alg, solver_type, ps, pt, r1)
            rb = R.model_row(p1, 0.0, comb["s1"], (A, comb["s"]))
        else:
            r1, r2 = 1.0 / 3.0, 2.0 / 3.0
            p1 = cf.point_at_lambda(ns, ps.lam + r1 * hh)
            p2 = cf.point_at_lambda(ns, ps.lam + r2 * hh)
            A1, c1 = cf.first_order(alg, ps, p1)
            ra = R.model_row(ps, A1, c1["s"])
            A2, c2 = cf.singlestep_third_mid(alg, ps, p2, hh, r1, r2)
            rb = R.model_row(p1, 0.0, c2["s1"], (A2, c2["s"]))
            Al, cl = cf.singlestep_second(alg, solver_type, ps, pt, r1)
            rl = R.combine_row(Al, cl["s1"], (cl["s"],))
            A, comb = cf.singlestep_third(alg, solver_type, ps, pt, r1, r2)
            rc = R.model_row(p2, 0.0, comb["s2"], (A, comb["s"], comb.get("s1", 0.0)))
        to_x0 = np.array(R.to_x0, dtype=bool)
        tables = device_tables(correction_tables(R.table(), to_x0, mode, solver.thresholding_max_val,
                                                 solver._guidance()),
                               R.times, x.device, x.dtype)
        run = Runner(solver, x, tables, mode)
        t_rows = tables["times"]
        w0, w1, w_hi = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
        m = run.evaluate(x, t_rows[ra])
        y1 = run.apply(x, m, ra, torch.empty_like(x), w0, (), R.to_x0[ra], t_rows[ra, 0])
        if order == 2:
            x_low = fused_step(x, w0, tables["fused"][rl], backend=backend)
            m = run.evaluate(y1, t_rows[rb])
            x_high = run.apply(y1, m, rb, y1, w_hi, (x, w0), R.to_x0[rb], t_rows[rb, 0])
            # x_high - x_low straight from the coefficient differences (see _difference)
            diff_row = coef_row(Q=1.0, A=A - Al, B0=comb["s1"], B1=comb["s"] - cl["s"])
            diff_hist = (w0,)
        else:
            m = run.evaluate(y1, t_rows[rb])
            y2 = run.apply(y1, m, rb, y1, w1, (x, w0), R.to_x0[rb], t_rows[rb, 0])
            x_low = fused_step(x, w1, tables["fused"][rl], hist=(w0,), backend=backend)
            m = run.evaluate(y2, t_rows[rc])
            hist = (x, w0, w1) if comb.get("s1", 0.0) != 0.0 else (x, w0)
            x_high = run.apply(y2, m, rc, y2, w_hi, hist, R.to_x0[rc], t_rows[rc, 0])
            diff_row = coef_row(Q=1.0, A=A - Al, B0=comb["s2"], B1=comb["s"] - cl["s"],
                                B2=comb.get("s1", 0.0) - cl["s1"])
            diff_hist = (w0, w1)
        # The two solutions agree to ~h^(order+1); subtracting them after rounding each to float32 leaves
        # whole units of rounding (~6e-8 relative) where the true difference at the first step of
        # DPM-Solver-23 is ~2e-10. One more fused step computes the difference from the float64
        # coefficient differences instead; what it still carries below one unit of x (the model's own
        # float32 rounding) is masked in scaled_error_norm (module docstring).
        diff = fused_step(x, w_hi, torch.as_tensor(diff_row, dtype=compute_dtype(x.dtype), device=x.device),
                          hist=diff_hist, backend=backend)
        E = scaled_error_norm(diff, x_low, x_prev, atol, rtol, backend)
        if not math.isfinite(E):
            raise RuntimeError(f"adaptive DPM-Solver: non-finite error estimate {E} at t={s}")
        if E <= 1.0:
            x, x_prev, s, lam_s = x_high, x_low, pt.t, pt.lam
        factor = math.inf if E == 0.0 else theta * E ** (-1.0 / order)
        h = min(h * factor, lam_0 - lam_s)
        nfe += order
    solver.adaptive_nfe = nfe
    if denoise_to_zero:
        R = _Rows(raw_type, alg)
        rd = R.model_row(cf.point(ns, t_0), 0.0, 1.0, to_x0=True)
        tables = device_tables(correction_tables(R.table(), np.array(R.to_x0), mode, solver.thresholding_max_val,
                                                 solver._guidance()),
                               R.times, x.device, x.dtype)
        run = Runner(solver, x, tables, mode)
        m = run.evaluate(x, tables["times"][rd])
        x = run.apply(x, m, rd, torch.empty_like(x), None, (), True, tables["times"][rd, 0])
    return x
