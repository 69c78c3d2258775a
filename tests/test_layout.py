"""pydiff.runtime.layout: the layout rule of torch's elementwise arithmetic, on meta tensors, against real
arithmetic (torch is the oracle), and the row-major shortcut."""
import pytest
import torch

from pydiff.runtime.layout import follow, randn_in_layout, row_major

X = torch.randn(2, 3, 4, 5)
LAYOUTS = {
    "contiguous": X,
    "channels_last": X.contiguous(memory_format=torch.channels_last),
    "transposed": X.transpose(2, 3).contiguous().transpose(2, 3),
    "sliced": torch.cat([X, X], 1)[:, :3],
    "strided": torch.cat([X, X], 3)[..., ::2],
}


@pytest.mark.parametrize("a", list(LAYOUTS))
@pytest.mark.parametrize("b", list(LAYOUTS))
def test_follow_is_torchs_rule(a, b):
    ta, tb = LAYOUTS[a], LAYOUTS[b]
    assert follow(ta, tb).stride() == (0.5 * ta + 2.0 * tb).stride()
    assert follow(ta).stride() == (ta * 1.0).stride()
    if row_major(ta, tb):  # the shortcut a face takes: then the result is contiguous
        assert (ta + tb).is_contiguous()


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_randn_in_layout_is_randn_like(name):
    t = LAYOUTS[name]
    torch.manual_seed(3)
    want = torch.randn_like(t)
    torch.manual_seed(3)
    assert torch.equal(randn_in_layout(t, dtype=t.dtype, device=t.device), want)
    torch.manual_seed(3)
    got = randn_in_layout(follow(t), dtype=t.dtype, device=t.device)  # a meta stand-in of t's layout
    torch.manual_seed(3)
    assert torch.equal(got, torch.randn_like(t * 1.0))
