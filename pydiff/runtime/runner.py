"""Running a compiled plan: device tables, buffers, and one ``fused_step`` per model evaluation.

The loop indexes device tables with Python integers (views, no copies), so it performs no host syncs
(no ``.item()``, no host-to-device copies) once the tables exist; they are cached per configuration.

Corrections of the predicted ``x0`` (``correcting_x0_fn``), for stages that convert to ``x0``:

* ``'dynamic_thresholding'``: fused. ``s' = dynamic_threshold(x, m, row')`` with ``M =
  thresholding_max_val``, ``row'`` the row with its scale ``S`` divided by ``M`` and no upper bound, then
  ``fused_step(..., row', threshold=s')``. Dividing the conversion by ``M`` makes the op's
  ``s' = max(q/M, 1)``, so ``clamp(x0/M, -s', s')/s' = clamp(x0, -s, s)/s`` with ``s = max(q, M)`` -- the
  authors' rule (``M`` is a floor of the scale, not a ceiling).
* a user callable: cannot be fused. ``x0`` is materialised by one ``fused_step``, passed through the
  callable in plain torch, and the update is a second ``fused_step`` that takes the corrected ``x0`` as
  its input (``P = 0, Q = 1``).

``correcting_xt_fn`` is applied in plain torch after each step.

Classifier-free guidance: when the solver's ``_guidance()`` is a scale ``s``, ``_stage_model`` returns the pair
``(out_u, out_c)`` and every step that takes the model output reads both (``m = out_u``, ``m2 = out_c``; the
``fused`` and ``conv`` rows carry ``M1 = 1 - s``, ``M2 = s``), the dynamic threshold included; the ``upd`` rows take
the already combined ``w`` and no ``m2``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from pydiff.ops import COL, coef_row, dynamic_threshold, fused_step
from pydiff.ops import compute_dtype
from pydiff.plans.rows import with_guidance

MODE_NONE, MODE_THRESHOLD, MODE_CALLABLE = "none", "threshold", "callable"


def correction_tables(rows, to_x0, mode, max_val, guidance=None):
    """Host tables for a correction mode.

    ``fused``: the rows (for thresholding with ``S`` divided by ``max_val`` where they convert to x0);
    ``conv``: the conversion alone (``out = w``); ``upd``: the update taking ``w`` as its model input
    (``P = 0, Q = 1``). The split pair serves the unfusable cases. ``guidance``: a classifier-free guidance
    scale ``s``, written into ``fused`` and ``conv`` as ``M1 = 1 - s``, ``M2 = s`` (used only with ``m2``).
    """
    rows = np.array(rows, dtype=np.float64)
    if mode == MODE_THRESHOLD:
        rows[to_x0, COL["S"]] /= max_val
    if guidance is not None:
        rows = with_guidance(rows, guidance)
    conv = np.tile(coef_row(B0=1.0), (rows.shape[0], 1))
    for c in ("M1", "M2", "P", "Q", "S"):
        conv[:, COL[c]] = rows[:, COL[c]]
    upd = rows.copy()
    upd[:, COL["P"]], upd[:, COL["Q"]], upd[:, COL["S"]] = 0.0, 1.0, 1.0
    return {"fused": rows, "conv": conv, "upd": upd}


def thresholded_step(x, m, row, ratio, backend, m2=None, **kw):
    """``fused_step`` with the dynamic threshold of its own ``x0`` (a row whose ``S`` is divided by the floor
    ``M``, see the module docstring); ``m2``: the second model output of a guided step."""
    s = dynamic_threshold(x, m, row, m2=m2, ratio=ratio, max_val=math.inf, backend=backend)
    return fused_step(x, m, row, threshold=s, m2=m2, backend=backend, **kw)


def dynamic_thresholding(x0, ratio, max_val, backend=None):
    """The authors' dynamic thresholding of a given ``x0``: ``s = max(quantile(|x0|, ratio), max_val)``,
    ``x0 <- clamp(x0, -s, s) / s``, as one fused step."""
    row = torch.as_tensor(coef_row(P=1.0, S=1.0 / max_val, B0=1.0), dtype=compute_dtype(x0.dtype), device=x0.device)
    return thresholded_step(x0, x0, row, ratio, backend)


def device_tables(tables, times, device, dtype):
    cdt = compute_dtype(dtype)
    out = {k: torch.as_tensor(v, dtype=cdt, device=device) for k, v in tables.items()}
    out["times"] = torch.as_tensor(np.asarray(times, dtype=np.float64).reshape(-1, 1), dtype=cdt, device=device)
    return out


class Runner:
    """Executes stages for one ``sample`` call. ``solver`` supplies the model, corrections and backend."""

    def __init__(self, solver, x, tables, mode):
        self.solver, self.tables, self.mode = solver, tables, mode
        self.x_ref = x
        self.B = x.shape[0]

    # -- the model, as the solver sees it (raw output when the conversion is folded into the rows)
    def evaluate(self, x_in, t_row):
        """The stage's model output: a tensor, or the pair ``(m, m2)`` of a classifier-free guided model."""
        t_vec = t_row.expand(self.B)
        m = self.solver._stage_model(x_in, t_vec)
        if isinstance(m, tuple):
            return tuple(self._model_tensor(o, x_in) for o in m)
        return self._model_tensor(m, x_in)

    @staticmethod
    def _model_tensor(m, x_in):
        if not isinstance(m, torch.Tensor):
            raise TypeError(f"the model must return a tensor, got {type(m).__name__}")
        if m.dtype != x_in.dtype:
            m = m.to(x_in.dtype)
        return m

    def correct_x0(self, w, t_scalar):
        res = self.solver.correcting_x0_fn(w, t_scalar)
        return self._checked("correcting_x0_fn", res, w)

    def correct_xt(self, x, t_scalar, step):
        res = self.solver.correcting_xt_fn(x, t_scalar, step)
        return self._checked("correcting_xt_fn", res, x)

    @staticmethod
    def _checked(name, res, like):
        if not isinstance(res, torch.Tensor) or res.shape != like.shape:
            raise ValueError(f"{name} must return a tensor of shape {tuple(like.shape)}")
        return res.to(like.dtype)

    # -- one conversion + update
    def apply(self, src, m, row_index, out, w_out, hist, to_x0, t_scalar, scratch=None):
        """``out = A src + B0 w + sum Bk hist_k`` with ``w = conv(src, m)`` (corrected when ``to_x0``); ``m`` a
        tensor or a guided pair ``(m, m2)``."""
        backend = self.solver.backend
        fused = self.tables["fused"][row_index]
        m, m2 = m if isinstance(m, tuple) else (m, None)
        if not to_x0 or self.mode == MODE_NONE:
            return fused_step(src, m, fused, out=out, w_out=w_out, hist=hist, m2=m2, backend=backend)
        if self.mode == MODE_THRESHOLD:
            return thresholded_step(src, m, fused, self.solver.dynamic_thresholding_ratio, backend, m2=m2, out=out,
                                    w_out=w_out, hist=hist)
        if m2 is not None:
            m = (m, m2)
        w = w_out if w_out is not None else (scratch if scratch is not None else torch.empty_like(src))
        self.convert(src, m, row_index, w, to_x0, t_scalar)
        return self.update(src, w, row_index, out, hist)

    def convert(self, src, m, row_index, w, to_x0, t_scalar):
        """``w = conv(src, m)``, corrected (thresholding / callable) when it is an x0 prediction."""
        backend = self.solver.backend
        conv = self.tables["conv"][row_index]
        m, m2 = m if isinstance(m, tuple) else (m, None)
        if to_x0 and self.mode == MODE_THRESHOLD:
            return thresholded_step(src, m, conv, self.solver.dynamic_thresholding_ratio, backend, m2=m2, out=w)
        fused_step(src, m, conv, out=w, m2=m2, backend=backend)
        if to_x0 and self.mode == MODE_CALLABLE:
            res = self.correct_x0(w, t_scalar)
            if res is not w:
                w.copy_(res)
        return w

    def update(self, base, w, row_index, out, hist):
        """The update of a split stage: ``out = A base + B0 w + sum Bk hist_k``."""
        return fused_step(base, w, self.tables["upd"][row_index], out=out, hist=hist, backend=self.solver.backend)

    # -- the whole plan
    def run(self, plan, return_intermediate):
        x = self.x_ref
        bufs = [None] * 5
        owned = [False] * 5
        bufs[0] = x
        times = self.tables["times"]
        xt_fn = self.solver.correcting_xt_fn
        scratch = None
        inter = []

        def writable(i):
            if bufs[i] is None or not owned[i]:
                bufs[i] = torch.empty_like(x)
                owned[i] = True
            return bufs[i]

        last = 0
        for st in plan.stages:
            src = bufs[st.src]
            t_scalar = times[st.t_index, 0]
            m = self.evaluate(src, times[st.t_index])
            hist = tuple(bufs[h] for h in st.hist)
            if st.pre is not None and xt_fn is not None:
                # the authors convert the model output with the sample it was evaluated at, and then
                # correct the sample before the update: split the stage around correcting_xt_fn
                w = writable(st.w_out) if st.w_out is not None else torch.empty_like(x)
                self.convert(src, m, st.row, w, st.to_x0, t_scalar)
                res = self.correct_xt(src, t_scalar, st.pre)
                if res is not src:
                    bufs[st.src], owned[st.src], src = res, False, res
                if return_intermediate and plan.record_initial:
                    inter.append(src.clone())
                out = writable(st.dst)
                self.update(src, w, st.row, out, hist)
            else:
                if st.pre is not None and return_intermediate and plan.record_initial:
                    inter.append(src.clone())
                w_out = writable(st.w_out) if st.w_out is not None else None
                out = writable(st.dst)
                if self.mode == MODE_CALLABLE and st.to_x0 and w_out is None and scratch is None:
                    scratch = torch.empty_like(x)
                self.apply(src, m, st.row, out, w_out, hist, st.to_x0, t_scalar, scratch)
            last = st.dst
            if st.done is not None:
                if xt_fn is not None:
                    res = self.correct_xt(out, times[st.done_t, 0], st.done)
                    if res is not out:
                        bufs[st.dst], owned[st.dst] = res, False
                if return_intermediate:
                    inter.append(bufs[st.dst].clone())
        result = bufs[last]
        return (result, inter) if return_intermediate else result
