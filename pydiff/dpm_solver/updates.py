"""The authors' single-update methods of ``DPM_Solver`` (``dpm_solver_first_update`` and friends).

``sample`` never calls these: it runs compiled plans. They exist for code that drives the updates itself.
Each one reads its times ``s``, ``t`` back to the host (a sync) to compute its float64 coefficients, then
applies the update as one ``fused_step`` on the given (already converted) model values:
``x_t = A x + sum_j b_j w_j`` with ``w_0`` in the model-output slot (``P = 0, Q = 1``) and the others as
history tensors. Missing model values are computed with ``self.model_fn`` (plain torch, including
``correcting_x0_fn``), as the authors' methods do.
"""
from __future__ import annotations

import torch

from pydiff.ops import fused_step
from pydiff.ops import compute_dtype

from ..plans import dpm_solver as cf
from ..plans.rows import update_row
from ._checks import check_choice, check_number


def _scalar(name, t):
    return check_number(name, t)


class UpdateMethods:
    """Mixin for ``DPM_Solver``; needs ``noise_schedule``, ``algorithm_type``, ``backend``, ``model_fn``."""

    def _point(self, name, t):
        return cf.point(self.noise_schedule, _scalar(name, t))

    def _time_like(self, t_value, like):
        dtype = like.dtype if isinstance(like, torch.Tensor) and like.is_floating_point() else torch.float32
        device = like.device if isinstance(like, torch.Tensor) else None
        return torch.tensor([t_value], dtype=dtype, device=device)

    def _combine(self, x, A, terms):
        """``A x + sum_j b_j v_j`` for up to four ``(v_j, b_j)`` as one fused step."""
        terms = [(v, b) for v, b in terms if b != 0.0] or [(torch.zeros_like(x), 0.0)]
        (v0, b0), rest = terms[0], terms[1:]
        row = update_row((0.0, 1.0, 1.0), A, b0, [b for _, b in rest])  # w = v0 as given
        coef = torch.as_tensor(row, dtype=compute_dtype(x.dtype), device=x.device)
        hist = tuple(v.to(x.dtype).expand_as(x).contiguous() for v, _ in rest)
        return fused_step(x, v0.to(x.dtype).expand_as(x).contiguous(), coef, hist=hist, backend=self.backend)

    def dpm_solver_first_update(self, x, s, t, model_s=None, return_intermediate=False):
        """DPM-Solver-1 (DDIM) from ``s`` to ``t``; ``model_s`` is the converted model value at ``(x, s)``."""
        ps, pt = self._point("s", s), self._point("t", t)
        if model_s is None:
            model_s = self.model_fn(x, s)
        A, comb = cf.first_order(self.algorithm_type, ps, pt)
        x_t = self._combine(x, A, [(model_s, comb["s"])])
        return (x_t, {"model_s": model_s}) if return_intermediate else x_t

    def singlestep_dpm_solver_second_update(self, x, s, t, r1=0.5, model_s=None, return_intermediate=False,
                                            solver_type="dpmsolver"):
        """Singlestep DPM-Solver-2 from ``s`` to ``t`` with the intermediate point at ``lambda_s + r1 h``."""
        check_choice("solver_type", solver_type, cf.SOLVER_TYPES)
        r1 = 0.5 if r1 is None else check_number("r1", r1, low=0.0, high=1.0, low_open=True)
        alg = self.algorithm_type
        ps, pt = self._point("s", s), self._point("t", t)
        p1 = cf.point_at_lambda(self.noise_schedule, ps.lam + r1 * (pt.lam - ps.lam))
        if model_s is None:
            model_s = self.model_fn(x, s)
        A1, c1 = cf.first_order(alg, ps, p1)
        x_s1 = self._combine(x, A1, [(model_s, c1["s"])])
        model_s1 = self.model_fn(x_s1, self._time_like(p1.t, s))
        A, comb = cf.singlestep_second(alg, solver_type, ps, pt, r1)
        x_t = self._combine(x, A, [(model_s, comb["s"]), (model_s1, comb["s1"])])
        return (x_t, {"model_s": model_s, "model_s1": model_s1}) if return_intermediate else x_t

    def singlestep_dpm_solver_third_update(self, x, s, t, r1=1. / 3., r2=2. / 3., model_s=None, model_s1=None,
                                           return_intermediate=False, solver_type="dpmsolver"):
        """Singlestep DPM-Solver-3 from ``s`` to ``t`` (intermediate points at ``r1``, ``r2`` of the step)."""
        check_choice("solver_type", solver_type, cf.SOLVER_TYPES)
        r1 = 1. / 3. if r1 is None else check_number("r1", r1, low=0.0, high=1.0, low_open=True)
        r2 = 2. / 3. if r2 is None else check_number("r2", r2, low=0.0, high=1.0, low_open=True)
        if not r1 < r2:
            raise ValueError(f"r1 must be smaller than r2, got r1={r1}, r2={r2}")
        alg, ns = self.algorithm_type, self.noise_schedule
        ps, pt = self._point("s", s), self._point("t", t)
        h = pt.lam - ps.lam
        p1, p2 = cf.point_at_lambda(ns, ps.lam + r1 * h), cf.point_at_lambda(ns, ps.lam + r2 * h)
        if model_s is None:
            model_s = self.model_fn(x, s)
        if model_s1 is None:
            A1, c1 = cf.first_order(alg, ps, p1)
            x_s1 = self._combine(x, A1, [(model_s, c1["s"])])
            model_s1 = self.model_fn(x_s1, self._time_like(p1.t, s))
        A2, c2 = cf.singlestep_third_mid(alg, ps, p2, h, r1, r2)
        x_s2 = self._combine(x, A2, [(model_s, c2["s"]), (model_s1, c2["s1"])])
        model_s2 = self.model_fn(x_s2, self._time_like(p2.t, s))
        A, comb = cf.singlestep_third(alg, solver_type, ps, pt, r1, r2)
        x_t = self._combine(x, A, [(model_s, comb["s"]), (model_s1, comb.get("s1", 0.0)),
                                   (model_s2, comb["s2"])])
        if return_intermediate:
            return x_t, {"model_s": model_s, "model_s1": model_s1, "model_s2": model_s2}
        return x_t

    def multistep_dpm_solver_second_update(self, x, model_prev_list, t_prev_list, t, solver_type="dpmsolver"):
        """Multistep DPM-Solver-2 from ``t_prev_list[-1]`` to ``t`` using the last two model values."""
        check_choice("solver_type", solver_type, cf.SOLVER_TYPES)
        p1, p0 = self._point("t_prev_list[-2]", t_prev_list[-2]), self._point("t_prev_list[-1]", t_prev_list[-1])
        A, comb = cf.multistep_second(self.algorithm_type, solver_type, p0, p1, self._point("t", t))
        return self._combine(x, A, [(model_prev_list[-1], comb[0]), (model_prev_list[-2], comb[1])])

    def multistep_dpm_solver_third_update(self, x, model_prev_list, t_prev_list, t, solver_type="dpmsolver"):
        """Multistep DPM-Solver-3 from ``t_prev_list[-1]`` to ``t`` using the last three model values."""
        pts = [self._point(f"t_prev_list[{k}]", t_prev_list[k]) for k in (-1, -2, -3)]
        A, comb = cf.multistep_third(self.algorithm_type, pts[0], pts[1], pts[2], self._point("t", t))
        return self._combine(x, A, [(model_prev_list[-1 - j], comb.get(j, 0.0)) for j in range(3)])

    def singlestep_dpm_solver_update(self, x, s, t, order, return_intermediate=False, solver_type="dpmsolver",
                                     r1=None, r2=None):
        """Singlestep DPM-Solver of ``order`` (1, 2 or 3) from ``s`` to ``t``."""
        if order == 1:
            return self.dpm_solver_first_update(x, s, t, return_intermediate=return_intermediate)
        if order == 2:
            return self.singlestep_dpm_solver_second_update(x, s, t, return_intermediate=return_intermediate,
                                                            solver_type=solver_type, r1=r1)
        if order == 3:
            return self.singlestep_dpm_solver_third_update(x, s, t, return_intermediate=return_intermediate,
                                                           solver_type=solver_type, r1=r1, r2=r2)
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")

    def multistep_dpm_solver_update(self, x, model_prev_list, t_prev_list, t, order, solver_type="dpmsolver"):
        """Multistep DPM-Solver of ``order`` (1, 2 or 3) from ``t_prev_list[-1]`` to ``t``."""
        if order == 1:
            return self.dpm_solver_first_update(x, t_prev_list[-1], t, model_s=model_prev_list[-1])
        if order == 2:
            return self.multistep_dpm_solver_second_update(x, model_prev_list, t_prev_list, t, solver_type)
        if order == 3:
            return self.multistep_dpm_solver_third_update(x, model_prev_list, t_prev_list, t, solver_type)
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
