"""The reference twin of fused_step against the formula of docs/ops.md, evaluated literally in float64 NumPy, and
the guidance / variance columns against the samplers' own formulas (CFG, guided-diffusion's learned range)."""
import math

import numpy as np
import pytest
import torch

from pydiff.ops import COL, COLUMNS, NCOEF, coef_row, fused_step


def _literal(x, m, row, hist=(), z=None, m2=None, v=None, threshold=None):
    """docs/ops.md's fused_step for one sample, element by element, in float64."""
    r = dict(zip(COLUMNS, row))
    out, wout = np.empty_like(x), np.empty_like(x)
    for i in range(x.size):
        me = m[i] if m2 is None else r["M1"] * m[i] + r["M2"] * m2[i]
        w = r["S"] * (r["P"] * x[i] + r["Q"] * me)
        b = r["CLIP"] if threshold is None else threshold
        w = max(min(w, b), -b)
        if threshold is not None:
            w = w / threshold
        e = 1.0 if v is None else math.exp(r["VA"] + r["VB"] * v[i])
        acc = r["A"] * x[i] + r["D"] * me + r["B0"] * w
        for k, h in enumerate(hist, start=1):
            acc += r[f"B{k}"] * h[i]
        if m2 is not None:
            acc += r["G"] * e * e * m2[i]
        if z is not None:
            acc += r["C"] * e * z[i]
        out[i], wout[i] = r["O"] * acc, w
    return out, wout


@pytest.mark.parametrize("case", range(12))
def test_reference_is_the_documented_formula(case):
    rs = np.random.default_rng(case)
    n, k = 23, case % 7
    row = rs.normal(size=NCOEF)
    row[COL["CLIP"]] = abs(row[COL["CLIP"]]) + 0.2
    row[COL["VA"]] *= 0.3
    row[COL["VB"]] *= 0.3
    x, m, z = rs.normal(size=n), rs.normal(size=n), rs.normal(size=n)
    hist = [rs.normal(size=n) for _ in range(k)]
    m2 = rs.normal(size=n) if case % 2 else None
    v = rs.normal(size=n) if case % 3 == 0 else None
    thr = 1.3 if case % 4 == 1 else None
    t = lambda a: None if a is None else torch.from_numpy(a)[None]  # noqa: E731
    wo = torch.empty(1, n, dtype=torch.float64)
    got = fused_step(t(x), t(m), torch.from_numpy(row), hist=[t(h) for h in hist], noise=t(z), m2=t(m2), var=t(v),
                     threshold=None if thr is None else torch.tensor([thr], dtype=torch.float64), w_out=wo,
                     backend="reference")
    out, w = _literal(x, m, row, hist, z, m2, v, thr)
    np.testing.assert_allclose(got[0].numpy(), out, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(wo[0].numpy(), w, rtol=1e-13, atol=1e-13)


def test_classifier_free_guidance_columns():
    """m = eps(x, empty), m2 = eps(x, c), M1 = 1 - s, M2 = s: the step sees uncond + s (cond - uncond)."""
    g = torch.Generator().manual_seed(0)
    x, u, c = (torch.randn(2, 3, 8, 8, generator=g) for _ in range(3))
    s, sa, sb, sap, d = 7.5, 0.3, math.sqrt(1 - 0.09), 0.5, 0.6
    plain = dict(P=1.0, Q=-sb, S=1 / sa, B0=sap, D=d)
    guided = fused_step(x, u, torch.tensor(coef_row(M1=1 - s, M2=s, **plain)), m2=c, backend="reference")
    eps = u + s * (c - u)
    expect = fused_step(x, eps, torch.tensor(coef_row(**plain)), backend="reference")
    torch.testing.assert_close(guided, expect, rtol=1e-5, atol=1e-5 * s)


def test_learned_range_variance_columns():
    """guided-diffusion's learned range: log var = f log(beta) + (1-f) log(beta_tilde), f = (v+1)/2; with
    VA = (max+min)/4 and VB = (max-min)/4 the noise scale e equals exp(log var / 2), and G = 1 adds var * grad."""
    g = torch.Generator().manual_seed(1)
    x, v, z, grad = (torch.randn(2, 5, generator=g, dtype=torch.float64) for _ in range(4))
    max_log, min_log = math.log(0.02), math.log(0.013)
    row = coef_row(A=1.0, C=1.0, G=1.0, VA=(max_log + min_log) / 4, VB=(max_log - min_log) / 4)
    got = fused_step(x, torch.zeros_like(x), torch.tensor(row), var=v, noise=z, m2=grad, backend="reference")
    frac = (v + 1) / 2
    log_var = frac * max_log + (1 - frac) * min_log
    expect = x + torch.exp(log_var) * grad + torch.exp(0.5 * log_var) * z
    torch.testing.assert_close(got, expect, rtol=1e-12, atol=1e-12)
