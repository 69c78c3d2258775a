"""The Philox normals as a distribution: one block gives four elements (Box-Muller cos and sin of its two word
pairs, docs/ops.md), so the four positions of a block must each be standard normal and must be independent of
one another -- the property a layout that reuses words would lose first. Checked on 2^20 blocks against the
standard normal's own moments and CDF (nothing of ours is the oracle): per position mean, variance, fourth
moment and the Kolmogorov-Smirnov distance; across positions, the correlations of the values and of their
squares (cos and sin of one pair share the radius: their squares are where a dependence would show).
"""
import math

import pytest
import torch

from pydiff.ops import philox_normal

BLOCKS = 1 << 20


@pytest.fixture(scope="module", params=["cpu", "reference"])
def z4(request):
    backend = request.param
    if backend == "cpu":
        pytest.importorskip("pydiff._C", reason="the cpu backend is not built")
    n = BLOCKS if backend == "cpu" else BLOCKS // 16  # the reference's int64 Philox is slow
    z = philox_normal((4 * n,), seed=2**63 + 2**40 + 17, offset=3, backend=backend)
    return z.double().view(n, 4)


def test_each_position_is_standard_normal(z4):
    n = z4.shape[0]
    for j in range(4):
        v = z4[:, j]
        # mean: SE 1/sqrt(n); variance: SE sqrt(2/n); E z^4 = 3 with SE sqrt(96/n)
        assert abs(v.mean().item()) < 5 / math.sqrt(n), j
        assert abs(v.var().item() - 1) < 5 * math.sqrt(2 / n), j
        assert abs((v ** 4).mean().item() - 3) < 5 * math.sqrt(96 / n), j
        # Kolmogorov-Smirnov distance to Phi; 1.95/sqrt(n) is the 0.1% critical value
        s, _ = v.sort()
        cdf = 0.5 * (1 + torch.erf(s / math.sqrt(2)))
        i = torch.arange(1, n + 1, dtype=torch.float64)
        d = torch.maximum(i / n - cdf, cdf - (i - 1) / n).max().item()
        assert d < 1.95 / math.sqrt(n), (j, d)


def test_positions_are_uncorrelated(z4):
    n = z4.shape[0]
    bound = 5 / math.sqrt(n)  # the SE of a sample correlation of independent variables is ~1/sqrt(n)
    for a in (z4, z4 ** 2):
        c = torch.corrcoef(a.T)
        off = c - torch.diag(torch.diag(c))
        assert off.abs().max().item() < bound, c
    # neighbouring blocks too: the last element of a block against the first of the next
    c = torch.corrcoef(torch.stack([z4[:-1, 3], z4[1:, 0]]))[0, 1].item()
    assert abs(c) < bound
