"""``langevin_step`` (docs/ops.md): every backend against the reference, the formula written out here from the
paper and score_sde's code, Philox's second pass adding the z whose norm the first took, the operator, misuse."""
import math

import pytest
import torch

from helpers import DTYPES, TOL, backend_device, backend_params, supports_dtype
from pydiff.ops import langevin_step, philox_normal
from pydiff.ops.langevin_step import langevin_step_op

SHAPES = [(1, 3, 7, 13), (5, 4, 17, 31), (3,), (7, 1), (4, 257)]
NOISE = ["tensor", "seed", "rng"]
# (norm, noise kind): each norm with each noise source across the grid, not the full product (the Triton
# interpreter is slow)
CASES = [("batch", "tensor"), ("sample", "seed"), ("batch", "rng"), ("sample", "tensor"), ("batch", "seed")]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # opcheck's torch.jit use


def _inputs(shape, dtype, device, seed, per_sample):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(dtype).to(device)
    # scores of very different sizes per sample: the batch and sample norms then give different steps
    scale = torch.logspace(-1, 1, shape[0], dtype=torch.float64).reshape((-1,) + (1,) * (len(shape) - 1))
    m = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)
    z = torch.randn(shape, generator=g).to(dtype).to(device)
    T = torch.float64 if dtype == torch.float64 else torch.float32
    B = shape[0]
    coef = torch.rand((B, 2) if per_sample else (2,), generator=g, dtype=torch.float64) * 0.2 + 0.01
    return x, m, z, coef.to(T).to(device)


def _noise_kw(kind, z, device):
    if kind == "tensor":
        return {"noise": z}
    if kind == "seed":
        return {"seed": (1 << 64) - 12345, "offset": 7}
    return {"rng": torch.tensor([-3, 11], device=device), "offset": 2}


def _run(backend, x, m, coef, norm, kind, z, w_out):
    dev = x.device
    out = torch.full_like(x, math.nan)
    w = torch.full_like(x, math.nan) if w_out else None
    got = langevin_step(x, m, coef, norm=norm, out=out, w_out=w, backend=backend, **_noise_kw(kind, z, dev))
    assert got is out
    return out, w


@pytest.mark.parametrize("backend", backend_params(op="langevin_step"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("norm,kind", CASES)
def test_matches_reference(backend, dtype, shape, norm, kind):
    if not supports_dtype(backend, dtype):
        pytest.skip(f"{backend} does not take {dtype}")
    dev = backend_device(backend)
    per_sample = hash((shape, norm, kind)) % 2 == 0
    x, m, z, coef = _inputs(shape, dtype, dev, seed=len(shape) * 31 + shape[0], per_sample=per_sample)
    got, got_w = _run(backend, x, m, coef, norm, kind, z, True)
    ref, ref_w = _run("reference", x.cpu(), m.cpu(), coef.cpu(), norm, kind, z.cpu(), True)
    tol = TOL[dtype]
    if kind != "tensor" and dtype == torch.float64:
        tol = TOL[torch.float32]  # Philox normals are float32 math (libm rounding differs per backend)
    assert not got.isnan().any() and not got_w.isnan().any(), "unwritten output elements"
    torch.testing.assert_close(got.cpu(), ref, **tol)
    torch.testing.assert_close(got_w.cpu(), ref_w, **tol)


@pytest.mark.parametrize("backend", backend_params(op="langevin_step"))
@pytest.mark.parametrize("shape", [(2, 3, 128, 129), (65, 7)], ids=["many-elements", "wide-batch"])
@pytest.mark.parametrize("norm,kind", [("batch", "seed"), ("sample", "tensor")])
def test_beyond_one_block(backend, shape, norm, kind):
    """Past the CUDA backend's one-block limits (64 samples, 64 Ki elements) the step takes the general path
    (sumsq stages, the rows kernel, fused_step); every backend still equals the reference."""
    dev = backend_device(backend)
    x, m, z, coef = _inputs(shape, torch.float32, dev, seed=shape[0], per_sample=norm == "sample")
    got, got_w = _run(backend, x, m, coef, norm, kind, z, True)
    ref, ref_w = _run("reference", x.cpu(), m.cpu(), coef.cpu(), norm, kind, z.cpu(), True)
    torch.testing.assert_close(got.cpu(), ref, **TOL[torch.float32])
    torch.testing.assert_close(got_w.cpu(), ref_w, **TOL[torch.float32])


@pytest.mark.parametrize("backend", backend_params(op="langevin_step"))
@pytest.mark.parametrize("alias", ["out_is_x", "w_is_m"])
def test_aliasing(backend, alias):
    dev = backend_device(backend)
    x, m, z, coef = _inputs((3, 5, 9), torch.float32, dev, seed=4, per_sample=False)
    ref, ref_w = _run("reference", x.cpu(), m.cpu(), coef.cpu(), "batch", "tensor", z.cpu(), True)
    x2, m2 = x.clone(), m.clone()
    if alias == "out_is_x":
        w = torch.empty_like(x)
        langevin_step(x2, m2, coef, noise=z, out=x2, w_out=w, backend=backend)
        got, got_w = x2, w
    else:
        got = langevin_step(x2, m2, coef, noise=z, w_out=m2, backend=backend)
        got_w = m2
    torch.testing.assert_close(got.cpu(), ref, **TOL[torch.float32])
    torch.testing.assert_close(got_w.cpu(), ref_w, **TOL[torch.float32])


@pytest.mark.parametrize("backend", backend_params(names=("reference", "cpu", "cuda", "cuda-jit", "triton"),
                                                   op="langevin_step"))
@pytest.mark.parametrize("norm", ["batch", "sample"])
def test_philox_second_pass_adds_the_normed_z(backend, norm):
    """With a seed, the update must add the very z whose norm the first pass took: the result equals, bit for
    bit, the step given that z as a tensor (float32: the tensor holds z exactly), on each backend."""
    dev = backend_device(backend)
    shape = (4, 3, 11, 13)
    x, m, _, coef = _inputs(shape, torch.float32, dev, seed=9, per_sample=False)
    seed, offset = 2024, 5
    z = philox_normal(shape, seed=seed, offset=offset, dtype=torch.float32, device=dev, backend=backend)
    a = langevin_step(x, m, coef, norm=norm, seed=seed, offset=offset, backend=backend)
    b = langevin_step(x, m, coef, norm=norm, noise=z, backend=backend)
    assert torch.equal(a, b)
    # and another offset is other noise (the test can fail)
    c = langevin_step(x, m, coef, norm=norm, seed=seed, offset=offset + 1, backend=backend)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("norm", ["batch", "sample"])
def test_reference_is_the_papers_step(norm):
    """The reference against the corrector written from score_sde's ``LangevinCorrector`` (batch: means of
    per-sample norms) and the paper's Algorithm 4 (sample), in float64."""
    x, m, z, coef = _inputs((5, 3, 8, 8), torch.float64, "cpu", seed=1, per_sample=True)
    c, kappa = coef[:, 0], coef[:, 1]
    gn = torch.linalg.vector_norm(m.reshape(5, -1), dim=1)
    zn = torch.linalg.vector_norm(z.reshape(5, -1), dim=1)
    if norm == "batch":
        eps = c * (zn.mean() / gn.mean()) ** 2
    else:
        eps = c * (zn / gn) ** 2
    v = (-1, 1, 1, 1)
    x_mean = x + (eps * kappa).view(v) * m
    expect = x_mean + torch.sqrt(2 * eps).view(v) * z
    w = torch.empty_like(x)
    got = langevin_step(x, m, coef, norm=norm, noise=z, w_out=w, backend="reference")
    torch.testing.assert_close(got, expect, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(w, x_mean, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("kind", NOISE)
@pytest.mark.parametrize("per_sample", [False, True])
def test_opcheck(kind, per_sample):
    x, m, z, coef = _inputs((3, 2, 5), torch.float32, "cpu", seed=2, per_sample=per_sample)
    kw = _noise_kw(kind, z, "cpu")
    from pydiff.ops import seed_to_int64
    seed = seed_to_int64(kw["seed"]) if "seed" in kw else None
    args = (x, m, coef.reshape(-1, 2), int(per_sample), kind == "seed", torch.empty_like(x), torch.empty_like(x),
            kw.get("noise"), seed, kw.get("offset", 0), kw.get("rng"), None)
    torch.library.opcheck(langevin_step_op, args)


def test_compile_fullgraph():
    torch._dynamo.reset()
    x, m, z, coef = _inputs((3, 4, 6), torch.float32, "cpu", seed=3, per_sample=False)

    def f(x, m, z, rng):
        y = langevin_step(x, m, coef, noise=z)
        return langevin_step(y, m, coef, norm="sample", rng=rng, offset=1)

    rng = torch.tensor([5, 6])
    expected = f(x, m, z, rng)
    explain = torch._dynamo.explain(f)(x, m, z, rng)
    assert explain.graph_break_count == 0, explain.break_reasons
    got = torch.compile(f, fullgraph=True)(x, m, z, rng)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_empty_batch():
    x = torch.empty(0, 3)
    out = langevin_step(x, x, torch.tensor([0.1, 1.0]), seed=1)
    assert out.shape == (0, 3)


def test_bad_input():
    x, m, z, coef = _inputs((3, 4), torch.float32, "cpu", seed=0, per_sample=False)
    with pytest.raises(ValueError, match="needs its noise"):
        langevin_step(x, m, coef)
    with pytest.raises(ValueError, match="either noise or seed"):
        langevin_step(x, m, coef, noise=z, seed=1)
    with pytest.raises(ValueError, match="norm must be one of"):
        langevin_step(x, m, coef, noise=z, norm="l2")
    with pytest.raises(ValueError, match=r"coef must have shape \(2,\) or \(B, 2\)"):
        langevin_step(x, m, torch.zeros(3), noise=z)
    with pytest.raises(TypeError, match="coef must be torch.float32"):
        langevin_step(x, m, coef.double(), noise=z)
    with pytest.raises(TypeError, match="coef must be a torch.Tensor"):
        langevin_step(x, m, (0.1, 1.0), noise=z)
    with pytest.raises(ValueError, match="model_output has shape"):
        langevin_step(x, m[:2], coef, noise=z)
    with pytest.raises(ValueError, match="overlaps"):
        big = torch.randn(4, 4)
        langevin_step(big[:3], m, coef, noise=z, out=big[1:])
    with pytest.raises(RuntimeError, match="has no backward"):
        langevin_step(x, m.clone().requires_grad_(), coef, noise=z)
