"""``pydiff.ops.torch_randn`` against ``torch.randn`` itself, on cloned generators.

Values: ``assert_close(rtol=1e-5, atol=1e-6)``. The kernel's ln/sin/cos are float32 polynomials, torch's are
libm's or ATen's vector code, so the two differ by a few ulp: the worst over 100 draws of ~98304 values was
2.4e-7 absolute at the avx512 and avx2 levels and 3.6e-7 at the baseline level, for values up to ~5.7 (ulp
4.8e-7). Forming 2 pi u2 as ATen's scalar loop does (a double product) instead of torch 2.13's float32 product
gave 1.9e-6 and fails. States: bit-identical (``torch.equal`` on ``get_state()``), for every starting point.
"""
import warnings

import pytest
import torch

from pydiff.ops import torch_normal
from pydiff.ops import torch_randn, torch_randn_fast
from pydiff.ops.backends import cpu

pytestmark = pytest.mark.skipif(not cpu.available(), reason=f"pydiff._C: {cpu.unavailable_reason()}")

SIZES = [16, 17, 31, 32, 623, 624, 625, 1248, 1249, 10007, 98304, 98309]
STARTS = ["fresh", "after_odd_randn", "after_small_randn", "after_rand", "mid_twist"]


def clone(g):
    g2 = torch.Generator()
    g2.set_state(g.get_state())
    return g2


def start_generator(start, seed):
    g = torch.Generator()
    g.manual_seed(seed)
    if start == "after_odd_randn":
        torch.randn(1001, generator=g)
    elif start == "after_small_randn":  # numel < 16: torch's double normal cache, 4 words per pair
        torch.randn(5, generator=g)
    elif start == "after_rand":
        torch.rand(77, generator=g)
    elif start == "mid_twist":  # left == 1: the next draw twists first
        torch.rand(623, generator=g)
    return g


def assert_same_draw(got, want, g, ref):
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(g.get_state(), ref.get_state())


def test_fast_path_is_on():
    # the tests below compare with torch.randn; they would pass trivially if every call fell back to it
    assert torch_randn_fast(), torch_normal._STATE["reason"]


@pytest.mark.parametrize("start", STARTS)
@pytest.mark.parametrize("n", SIZES)
def test_matches_torch_randn(n, start):
    g = start_generator(start, 1000 + n)
    ref = clone(g)
    want = torch.randn(n, generator=ref)
    got = torch_randn(n, generator=g)
    assert_same_draw(got, want, g, ref)


def test_kernel_direct():
    # the native function itself, without the wrapper's fallbacks: out and state written in place
    g = start_generator("after_small_randn", 7)
    ref = clone(g)
    want = torch.randn(3000, generator=ref)
    state = g.get_state()
    got = torch.full((3000,), float("nan"))
    assert cpu._C.torch_normal_fill(got.data_ptr(), 3000, state.data_ptr(), state.numel()) == 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(state, ref.get_state())


def test_kernel_refuses():
    g = torch.Generator()
    g.manual_seed(3)
    state = g.get_state()
    before = state.clone()
    out = torch.zeros(32)
    assert cpu._C.torch_normal_fill(out.data_ptr(), 32, state.data_ptr(), 100) == -1  # short state
    assert cpu._C.torch_normal_fill(out.data_ptr(), 5, state.data_ptr(), state.numel()) == -3  # n < 16
    bad = state.clone()
    bad[8:12] = 0  # left = 0: not a state the engine accepts
    assert cpu._C.torch_normal_fill(out.data_ptr(), 32, bad.data_ptr(), bad.numel()) == -2
    assert torch.equal(state, before) and torch.equal(out, torch.zeros(32))


def test_shapes_and_out():
    g = start_generator("fresh", 11)
    ref = clone(g)
    want = torch.randn((2, 3, 5, 7), generator=ref)
    got = torch_randn((2, 3, 5, 7), generator=g)
    assert_same_draw(got, want, g, ref)
    out = torch.empty(2, 3, 5, 7)
    want = torch.randn(torch.Size([2, 3, 5, 7]), generator=ref)
    version = out._version
    res = torch_randn(torch.Size([2, 3, 5, 7]), generator=g, out=out)
    assert res is out and out._version > version
    assert_same_draw(out, want, g, ref)


def test_default_generator():
    for k in (0, 5, 123456789):
        torch.manual_seed(k)
        got = torch_randn((4, 3, 9, 9))
        after = torch.default_generator.get_state()
        torch.manual_seed(k)
        want = torch.randn((4, 3, 9, 9))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert torch.equal(after, torch.default_generator.get_state())


def test_mixed_sequence_stays_in_step():
    g = start_generator("fresh", 99)
    ref = clone(g)
    for n in (100, 3, 1249, 7, 16, 640, 98309, 1):
        # ours, torch's, ours: both generators keep drawing the same stream
        assert_same_draw(torch_randn(n, generator=g), torch.randn(n, generator=ref), g, ref)
        assert torch.equal(torch.randn(n + 1, generator=g), torch.randn(n + 1, generator=ref))
        torch.rand(n, generator=g)
        torch.rand(n, generator=ref)
    assert_same_draw(torch_randn(500, generator=g), torch.randn(500, generator=ref), g, ref)


@pytest.mark.parametrize("case", ["float64", "numel5", "numel0", "float16", "bfloat16", "default_float64"])
def test_fallbacks_are_torch(case):
    g = start_generator("after_odd_randn", 5)
    ref = clone(g)
    kw, shape = {}, (8, 9)
    if case in ("float64", "float16", "bfloat16"):
        kw["dtype"] = getattr(torch, case)
    elif case == "numel5":
        shape = (5,)
    elif case == "numel0":
        shape = (0, 4)
    if case == "default_float64":
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            got, want = torch_randn(shape, generator=g), torch.randn(shape, generator=ref)
        finally:
            torch.set_default_dtype(old)
    else:
        got, want = torch_randn(shape, generator=g, **kw), torch.randn(shape, generator=ref, **kw)
    assert got.dtype == want.dtype and torch.equal(got, want)
    assert torch.equal(g.get_state(), ref.get_state())


def test_fallback_noncontiguous_out():
    g = start_generator("fresh", 6)
    ref = clone(g)
    out, out_ref = torch.empty(10, 8).t(), torch.empty(10, 8).t()
    torch_randn((8, 10), generator=g, out=out)
    torch.randn((8, 10), generator=ref, out=out_ref)
    assert torch.equal(out, out_ref) and torch.equal(g.get_state(), ref.get_state())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a CUDA-less torch")
def test_fallback_cuda_device_raises_as_torch():
    g = torch.Generator()
    with pytest.raises(Exception) as ours:
        torch_randn((4, 8), device="cuda")
    with pytest.raises(Exception) as theirs:
        torch.randn((4, 8), device="cuda")
    assert type(ours.value) is type(theirs.value)
    with pytest.raises(Exception):
        torch_randn((4, 8), generator=g, device="cuda")


def test_bad_shape():
    with pytest.raises(TypeError, match="shape"):
        torch_randn("abc")
    with pytest.raises(TypeError, match="shape"):
        torch_randn((2, 2.5))
    with pytest.raises(ValueError, match="shape"):
        torch_randn((2, -1))


def test_self_check_disables_on_mismatch(monkeypatch):
    # a torch whose randn draws otherwise: one warning, then torch.randn for every call
    monkeypatch.setattr(torch_normal, "_STATE", {"checked": False, "ok": False, "reason": None, "C": False})
    real = torch.randn
    monkeypatch.setattr(torch, "randn", lambda *a, **k: real(*a, **k) * 2)
    with pytest.warns(RuntimeWarning, match="torch_randn"):
        assert not torch_randn_fast()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not torch_randn_fast()
    g = start_generator("fresh", 8)
    ref = clone(g)
    got = torch_randn(64, generator=g)
    assert torch.equal(got, torch.randn(64, generator=ref))  # the patched (doubled) draw: it fell back


# ---- the diffusers drop-ins draw their randn_tensor noise through torch_randn

def _spy(monkeypatch, module):
    calls = []
    real = module.torch_randn

    def spy(*a, **k):
        calls.append(a[0])
        return real(*a, **k)
    monkeypatch.setattr(module, "torch_randn", spy)
    return calls


def test_ddpm_dropin_draws_through_torch_randn(monkeypatch):
    diffusers = pytest.importorskip("diffusers")
    import pydiff.diffusers as pd
    from pydiff.diffusers import _common
    calls = _spy(monkeypatch, _common)
    a, b = diffusers.DDPMScheduler(), pd.DDPMScheduler()
    for s in (a, b):
        s.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x, m = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    t = a.timesteps[3]
    ga, gb = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    ra = a.step(m, t, x, generator=ga).prev_sample
    rb = b.step(m, t, x, generator=gb).prev_sample
    assert calls == [(2, 3, 8, 8)]
    torch.testing.assert_close(rb, ra, rtol=1e-5, atol=1e-5)
    assert torch.equal(ga.get_state(), gb.get_state())


def test_ve_corrector_draws_through_torch_randn(monkeypatch):
    diffusers = pytest.importorskip("diffusers")
    import pydiff.diffusers as pd
    from pydiff.diffusers import _common
    calls = _spy(monkeypatch, _common)
    a, b = diffusers.ScoreSdeVeScheduler(), pd.ScoreSdeVeScheduler()
    for s in (a, b):
        s.set_timesteps(5)
    x, m = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    torch.manual_seed(7)
    ra = a.step_correct(m, x).prev_sample
    after_a = torch.default_generator.get_state()
    torch.manual_seed(7)
    rb = b.step_correct(m, x).prev_sample
    assert calls == [(2, 3, 8, 8)]
    assert torch.equal(after_a, torch.default_generator.get_state())
    torch.testing.assert_close(rb, ra, rtol=1e-5, atol=1e-5)


def test_patched_randn_tensor_is_honoured(monkeypatch):
    # a module global patched by the caller (as tests of schedulers do) is drawn with, not bypassed: both
    # schedulers then add the same fixed z
    diffusers = pytest.importorskip("diffusers")
    import diffusers.schedulers.scheduling_sde_ve as ref_mod
    import pydiff.diffusers as pd
    from pydiff.diffusers import _common, score_sde_ve
    calls = _spy(monkeypatch, _common)
    z = torch.linspace(-2, 2, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8)
    for mod in (score_sde_ve, ref_mod):
        monkeypatch.setattr(mod, "randn_tensor", lambda *a, **k: z.clone())
    a, b = diffusers.ScoreSdeVeScheduler(), pd.ScoreSdeVeScheduler()
    for s in (a, b):
        s.set_timesteps(5)
    x, m = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    ra = a.step_correct(m, x, generator=torch.Generator().manual_seed(1)).prev_sample
    rb = b.step_correct(m, x, generator=torch.Generator().manual_seed(1)).prev_sample
    assert calls == []
    torch.testing.assert_close(rb, ra, rtol=1e-5, atol=1e-5)


def test_fallback_default_device_context(monkeypatch):
    # no device argument under a device context: torch.randn's device, not the CPU kernel; and the first-use
    # self-check, when it runs there (or under another default dtype), still draws on the CPU in float32
    monkeypatch.setattr(torch_normal, "_STATE", {"checked": False, "ok": False, "reason": None, "C": False})
    before = torch.default_generator.get_state()
    with torch.device("meta"):
        got, want = torch_randn((8, 9)), torch.randn((8, 9))
    assert got.device == want.device == torch.device("meta") and got.shape == want.shape
    assert torch.equal(torch.default_generator.get_state(), before)

    assert torch_normal._STATE["checked"] and torch_randn_fast()


def test_self_check_under_float64_default(monkeypatch):
    monkeypatch.setattr(torch_normal, "_STATE", {"checked": False, "ok": False, "reason": None, "C": False})
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert torch_randn_fast(), torch_normal._STATE["reason"]
    finally:
        torch.set_default_dtype(old)


def test_float64_steps_keep_torch_randn_exact(monkeypatch):
    # a float64 step draws with torch.randn itself: the noise is then bit-identical to diffusers'
    diffusers = pytest.importorskip("diffusers")
    import pydiff.diffusers as pd
    from pydiff.diffusers import _common
    calls = _spy(monkeypatch, _common)
    a, b = diffusers.DDPMScheduler(), pd.DDPMScheduler()
    for s in (a, b):
        s.set_timesteps(10)
    x, m = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    ga, gb = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    a.step(m, a.timesteps[3], x, generator=ga)
    b.step(m, b.timesteps[3], x, generator=gb)
    assert calls == [] and torch.equal(ga.get_state(), gb.get_state())


def test_threads_sharing_a_generator_get_torch_randn_draws():
    """Two threads drawing from one generator at once (a server running pipelines in threads on the default
    generator): every draw is one of the draws torch.randn makes in some serial order -- no two threads get the
    same numbers -- and the generator ends where 2 x 60 serial draws leave it. The kernel releases the GIL, so
    without the lock around get_state / fill / set_state both threads read the same state and draw alike."""
    import threading

    assert torch_randn_fast()
    n, per_thread = 98304, 60
    g = torch.Generator()
    g.manual_seed(7)
    ref = clone(g)
    serial = [torch.randn(n, generator=ref) for _ in range(2 * per_thread)]
    draws, barrier = [[], []], threading.Barrier(2)

    def work(k):
        barrier.wait()
        for _ in range(per_thread):
            draws[k].append(torch_randn(n, generator=g))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.equal(g.get_state(), ref.get_state())
    got = draws[0] + draws[1]
    # each draw matches exactly one serial draw (its first values identify it), and all of them are used
    key = {tuple(round(v, 4) for v in d[:4].tolist()): i for i, d in enumerate(serial)}
    idx = sorted(key[tuple(round(v, 4) for v in d[:4].tolist())] for d in got)
    assert idx == list(range(2 * per_thread))
    for d in got:
        torch.testing.assert_close(d, serial[key[tuple(round(v, 4) for v in d[:4].tolist())]], rtol=1e-5, atol=1e-6)
