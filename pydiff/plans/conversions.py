"""The one conversion table: a model output of one parameterization as another, for given ``alpha``, ``sigma``.

With ``x_t = alpha x0 + sigma eps`` (VP: ``alpha^2 + sigma^2 = 1``), the velocity ``v = alpha eps - sigma x0``
(Salimans & Ho 2022) and the score ``-eps / sigma`` (Song et al. 2021), each parameterization is linear in
the sample ``x`` and the raw output ``m``. ``conversion`` gives it as ``target = S (P x + Q m)``::

    from \\ to   x0                      eps
    eps         (1, -sigma, 1/alpha)     (0, 1, 1)
    x0          (0, 1, 1)                (1, -alpha, 1/sigma)
    v           (alpha, -sigma, 1)       (sigma, alpha, 1)
    score       (1, sigma^2, 1/alpha)    (0, -sigma, 1)

    v = alpha eps - sigma x0,   score = -eps / sigma             (the other two targets, combined from these)

A division comes last (column ``S``), as diffusers and the authors divide last: ``x0 = (x - sigma eps)/alpha``
keeps its float32 error at the cancellation error of ``x - sigma eps`` over ``alpha`` (docs/ops.md, column S).
The values are plain arithmetic on ``alpha``, ``sigma``: floats, float64 arrays or tensors.
"""
from __future__ import annotations

# The accepted names of each parameterization: pydiff's, diffusers' prediction_type, the authors' model_type.
KINDS = {
    "eps": "eps", "epsilon": "eps", "noise": "eps",
    "x0": "x0", "sample": "x0", "x_start": "x0",
    "v": "v", "v_prediction": "v",
    "score": "score",
}


def kind(name: str) -> str:
    """The canonical parameterization (``'x0'``, ``'eps'``, ``'v'``, ``'score'``) for any of its names."""
    if name not in KINDS:
        raise ValueError(f"unknown model output type {name!r}; expected one of {tuple(KINDS)}")
    return KINDS[name]


def _to_x0(raw, alpha, sigma):
    return {"eps": (1.0, -sigma, 1.0 / alpha), "x0": (0.0, 1.0, 1.0), "v": (alpha, -sigma, 1.0),
            "score": (1.0, sigma * sigma, 1.0 / alpha)}[raw]


def _to_eps(raw, alpha, sigma):
    return {"eps": (0.0, 1.0, 1.0), "x0": (1.0, -alpha, 1.0 / sigma), "v": (sigma, alpha, 1.0),
            "score": (0.0, -sigma, 1.0)}[raw]


def conversion(target: str, raw: str, alpha, sigma):
    """``(P, Q, S)`` with ``target = S (P x + Q m)`` for a raw output ``m`` of type ``raw`` (any name in KINDS)."""
    t, r = kind(target), kind(raw)
    if t == "x0":
        return _to_x0(r, alpha, sigma)
    if t == "eps":
        return _to_eps(r, alpha, sigma)
    (Px, Qx, Sx), (Pe, Qe, Se) = _to_x0(r, alpha, sigma), _to_eps(r, alpha, sigma)
    if t == "v":  # v = alpha eps - sigma x0
        return alpha * Se * Pe - sigma * Sx * Px, alpha * Se * Qe - sigma * Sx * Qx, 1.0
    return -Pe, -Qe, Se / sigma  # score = -eps / sigma


def eps_from_raw(raw: str, alpha, sigma):
    """``(A, D)`` with ``eps = A x + D m`` (the eps conversion with its scale folded in)."""
    P, Q, S = _to_eps(kind(raw), alpha, sigma)
    return S * P, S * Q


def _is(v, c) -> bool:
    return isinstance(v, float) and v == c


def convert(target: str, raw: str, x, m, alpha, sigma):
    """``S (P x + Q m)`` of ``conversion`` evaluated directly (tensors; the unfused counterpart of the kernel's
    ``w``). Terms whose coefficient is the constant 0 or 1 are skipped, so an inf/NaN in ``x`` does not
    leak through a zero weight."""
    P, Q, S = conversion(target, raw, alpha, sigma)
    out = m if _is(Q, 1.0) else Q * m
    if not _is(P, 0.0):
        out = (x if _is(P, 1.0) else P * x) + out
    return out if _is(S, 1.0) else out * S
