"""The plan compiler: (schedule, steps, order, method, ...) -> float64 coefficient rows + a stage list.

A *stage* is one model evaluation followed by one ``fused_step``::

    m   = model(buf[src], times[t_index])
    w   = S*(P*buf[src] + Q*m)                          (x0 for dpmsolver++, eps for dpmsolver)
    buf[dst] = A*buf[src] + B0*w + sum_k Bk*buf[hist[k]]     (w also stored in buf[w_out])

Buffers: ``X``/``Y`` hold samples (the state, a singlestep intermediate point), ``W0..W2`` converted
outputs. When the base of an update is not the point the model was evaluated at (singlestep
intermediate points), the base enters as a history tensor and ``A = 0``. Everything here is host-side
float64 and runs once per configuration; the sampling loop only indexes the resulting tables.

Time grids and step-order rules follow the authors' ``dpm_solver_pytorch.py``: ``get_time_steps``
(``'logSNR'``, ``'time_uniform'``, ``'time_quadratic'``); singlestep "DPM-Solver-fast" order mixes;
multistep warm-up with lower orders and, with ``lower_order_final``, lower orders in the last steps when
``steps < 10``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..schedules import SKIP_TYPES, time_grid  # noqa: F401  (SKIP_TYPES: the face checks skip_type here)
from . import dpm_solver as cf
from .rows import RowBuilder

X, Y, W0, W1, W2 = 0, 1, 2, 3, 4
W = (W0, W1, W2)
N_BUFFERS = 5
METHODS = ("multistep", "singlestep", "singlestep_fixed", "adaptive")
WARMUPS = ("lower_order", "singlestep")
THIRD_ORDER = ("authors", "consistent")


@dataclass(frozen=True)
class Stage:
    """One model evaluation and the fused step that consumes it (see the module docstring)."""
    t_index: int
    src: int
    row: int
    dst: int
    w_out: int | None
    hist: tuple
    to_x0: bool              # the conversion targets x0 (so correcting_x0_fn applies)
    done: int | None = None  # an outer step ends here: its number for correcting_xt_fn / intermediates
    done_t: int = -1         # time-table index of that step's end time
    pre: int | None = None   # multistep: correcting_xt_fn(step=pre) on buf[src] right after the evaluation


@dataclass(frozen=True)
class Plan:
    times: np.ndarray        # (K,) float64 times: evaluation times and step end times
    rows: np.ndarray         # (R, NCOEF) float64
    to_x0: np.ndarray        # (R,) bool: the row converts to x0
    stages: tuple
    record_initial: bool     # multistep: intermediates start with the (corrected) initial sample


# ----------------------------------------------------------------------------- time grids
def time_steps(schedule, skip_type, t_from, t_to, n):
    """``n + 1`` times from ``t_from`` to ``t_to`` (float64), spaced as ``skip_type`` says (``time_grid``)."""
    return time_grid(cf._vp(schedule), skip_type, t_from, t_to, n)


def singlestep_orders(steps, order):
    """The authors' "DPM-Solver-fast" split of ``steps`` evaluations into steps of order <= ``order``."""
    if order == 3:
        K = steps // 3 + 1
        if steps % 3 == 0:
            return [3] * (K - 2) + [2, 1]
        if steps % 3 == 1:
            return [3] * (K - 1) + [1]
        return [3] * (K - 1) + [2]
    if order == 2:
        if steps % 2 == 0:
            return [2] * (steps // 2)
        return [2] * (steps // 2) + [1]
    return [1] * steps


def singlestep_outer_grid(ns, skip_type, t_from, t_to, steps, orders):
    if skip_type == "logSNR":
        return time_steps(ns, skip_type, t_from, t_to, len(orders))
    idx = np.cumsum([0] + list(orders))
    return time_steps(ns, skip_type, t_from, t_to, steps)[idx]


# ----------------------------------------------------------------------------- the builder
class _StageBuilder:
    """Collects the stages of a plan, their rows (one ``RowBuilder``) and the time table."""

    def __init__(self, ns, alg, solver_type, raw_type):
        self.ns, self.alg, self.solver_type, self.raw_type = ns, alg, solver_type, raw_type
        self.times, self.to_x0, self.stages = [], [], []
        self.rows = RowBuilder()
        self._time_index = {}

    def time(self, t):
        key = float(t)
        if key not in self._time_index:
            self._time_index[key] = len(self.times)
            self.times.append(key)
        return self._time_index[key]

    def point(self, t):
        return cf.point(self.ns, t)

    def stage(self, p: cf.Point, src, dst, A_src, b_cur, hist_terms, w_out=None, to_x0=None, **extra):
        """Add a stage evaluating the model at ``p`` on ``buf[src]``.

        ``A_src`` weighs ``buf[src]``, ``b_cur`` the fresh converted output, ``hist_terms`` is a list of
        ``(buffer, weight)``; zero weights are dropped.
        """
        if to_x0 is None:
            to_x0 = cf.target(self.alg) == "x0"
        P, Q, S = cf.conversion("x0" if to_x0 else "eps", self.raw_type, p)
        hist = [(b, w) for b, w in hist_terms if w != 0.0]
        # A large weight on the source sample means the update cancels (noise form at high noise:
        # alpha_t/alpha_s ~ 3000 on the cosine schedule's first step): factor it out into the output
        # scale O so the cancellation is rounded at size ~1 (docs/ops.md, column O; worst float32 parity
        # case 1.35e-4 -> 9.9e-5). Below 2 it gains nothing measurable.
        O = A_src if abs(A_src) > 2.0 else 1.0
        row = self.rows.add_update((P, Q, S), A_src / O, b_cur / O, [w / O for _, w in hist], O=O)
        self.to_x0.append(to_x0)
        st = Stage(t_index=self.time(p.t), src=src, row=row, dst=dst, w_out=w_out,
                   hist=tuple(b for b, _ in hist), to_x0=to_x0, **extra)
        self.stages.append(st)
        return st

    def done(self, step, t):
        """Mark the last stage as the end of outer step ``step`` at time ``t``."""
        last = self.stages[-1]
        self.stages[-1] = Stage(**{**last.__dict__, "done": step, "done_t": self.time(t)})

    def plan(self, record_initial):
        return Plan(np.array(self.times, dtype=np.float64), self.rows.table(), np.array(self.to_x0, dtype=bool),
                    tuple(self.stages), record_initial)


def _denoise(b: _StageBuilder, state, t_end, step):
    """``denoise_to_zero``: replace the sample by the x0 prediction at ``t_end`` (one more evaluation)."""
    b.stage(b.point(t_end), state, state, 0.0, 1.0, [], to_x0=True)
    b.done(step, t_end)


def compile_multistep(ns, alg, solver_type, raw_type, t_from, t_to, steps, order, skip_type,
                      lower_order_final, denoise_to_zero, warmup="lower_order", third_order="authors"):
    b = _StageBuilder(ns, alg, solver_type, raw_type)
    grid = time_steps(ns, skip_type, t_from, t_to, steps)
    pts = [b.point(t) for t in grid]
    slot = lambda i: W[i % 3]  # noqa: E731  (output of the evaluation at grid[i])
    state = X
    first = 1
    if warmup == "singlestep" and order == 3 and steps >= 3:
        # Warm-up that keeps third order without extra evaluations: a first-order step to grid[1] gives
        # only the point at which output 1 is evaluated; the sample at grid[2] is then one singlestep
        # DPM-Solver-2 step from grid[0] over both intervals, using outputs 0 and 1 (local error O(h^3)).
        A1, c1 = cf.first_order(alg, pts[0], pts[1])
        b.stage(pts[0], X, Y, A1, c1["s"], [], w_out=W0, pre=0)
        b.done(1, grid[1])
        r1 = (pts[1].lam - pts[0].lam) / (pts[2].lam - pts[0].lam)
        A2, c2 = cf.singlestep_second(alg, solver_type, pts[0], pts[2], r1)
        b.stage(pts[1], Y, Y, 0.0, c2["s1"], [(X, A2), (W0, c2["s"])], w_out=W1)
        b.done(2, grid[2])
        state, first = Y, 3
    for i in range(first, steps + 1):
        if i < order:
            step_order = i
        elif lower_order_final and steps < 10:
            step_order = min(order, steps + 1 - i)
        else:
            step_order = order
        A, comb = cf.multistep(alg, solver_type, step_order, [pts[i - 1 - j] for j in range(step_order)], pts[i],
                               consistent=third_order == "consistent")
        need_store = order > 1 and i < steps
        hist = [(slot(i - 1 - j), comb.get(j, 0.0)) for j in range(1, step_order)]
        b.stage(pts[i - 1], state, state, A, comb[0], hist, w_out=slot(i - 1) if need_store else None,
                pre=0 if i == 1 else None)
        b.done(i, grid[i])
    if denoise_to_zero:
        _denoise(b, state, t_to, steps + 1)
    return b.plan(record_initial=True)


def _singlestep_step(b: _StageBuilder, state, other, s_t, t_t, order, skip_type, step):
    """One singlestep step of ``order`` from ``s_t`` to ``t_t``; returns the buffer holding the result."""
    ns, alg, st = b.ns, b.alg, b.solver_type
    s, t = b.point(s_t), b.point(t_t)
    if order == 1:
        A, c = cf.first_order(alg, s, t)
        b.stage(s, state, state, A, c["s"], [])
        b.done(step, t_t)
        return state
    inner = time_steps(ns, skip_type, s_t, t_t, order)
    lam_inner = cf._vp(ns).lambda_(inner)
    h = t.lam - s.lam
    r1 = (lam_inner[1] - lam_inner[0]) / (lam_inner[-1] - lam_inner[0])
    s1 = cf.point_at_lambda(ns, s.lam + r1 * h)
    A1, c1 = cf.first_order(alg, s, s1)
    b.stage(s, state, other, A1, c1["s"], [], w_out=W0)
    if order == 2:
        A, comb = cf.singlestep_second(alg, st, s, t, r1)
        b.stage(s1, other, other, 0.0, comb["s1"], [(state, A), (W0, comb["s"])])
        b.done(step, t_t)
        return other
    r2 = (lam_inner[2] - lam_inner[0]) / (lam_inner[-1] - lam_inner[0])
    s2 = cf.point_at_lambda(ns, s.lam + r2 * h)
    A2, c2 = cf.singlestep_third_mid(alg, s, s2, h, r1, r2)
    b.stage(s1, other, other, 0.0, c2["s1"], [(state, A2), (W0, c2["s"])], w_out=W1)
    A, comb = cf.singlestep_third(alg, st, s, t, r1, r2)
    b.stage(s2, other, other, 0.0, comb["s2"], [(state, A), (W0, comb["s"]), (W1, comb.get("s1", 0.0))])
    b.done(step, t_t)
    return other


def compile_singlestep(ns, alg, solver_type, raw_type, t_from, t_to, steps, order, skip_type, method,
                       denoise_to_zero):
    b = _StageBuilder(ns, alg, solver_type, raw_type)
    if method == "singlestep":
        orders = singlestep_orders(steps, order)
        outer = singlestep_outer_grid(ns, skip_type, t_from, t_to, steps, orders)
    else:
        orders = [order] * (steps // order)
        outer = time_steps(ns, skip_type, t_from, t_to, len(orders))
    state, other = X, Y
    for step, o in enumerate(orders):
        res = _singlestep_step(b, state, other, outer[step], outer[step + 1], o, skip_type, step)
        if res != state:
            state, other = other, state
    if denoise_to_zero:
        _denoise(b, state, t_to, len(orders))
    return b.plan(record_initial=False)
