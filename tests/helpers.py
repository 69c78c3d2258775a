"""Test helpers: the dtype -> tolerance table, device/backend parametrization, relative errors."""
import pytest
import torch

from pydiff.ops import backends as registry

HAS_CUDA = torch.cuda.is_available()

# Backends compute in float32 (float64 for float64) and round once on store, exactly like the reference,
# so they may differ from it by the float32 rounding of the arithmetic plus one rounding of the dtype.
TOL = {
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float64: dict(atol=1e-12, rtol=1e-12),
}
DTYPES = list(TOL)


def backend_device(name):
    """The device a backend is tested on here, or None when it cannot run (the registry's answer)."""
    return registry.test_device(name)


ALL_BACKENDS = registry.BACKENDS


def backend_params(names=None, op=None):
    """pytest params for backends (default: every compiled one in the registry); GPU-only ones marked ``gpu``,
    unavailable ones (or, with ``op``, ones without that op yet) skipped with the registry's reason."""
    if names is None:
        names = tuple(b for b in registry.BACKENDS if b != "reference")
    out = []
    for n in names:
        gpu_only = "cuda" in registry.INFO[n].devices and "cpu" not in registry.INFO[n].devices
        marks = [pytest.mark.gpu] if gpu_only else []
        if backend_device(n) is None:
            marks.append(pytest.mark.skip(reason=f"backend {n}: {registry.unavailable_reason(n) or 'no device'}"))
        elif op is not None and not registry.implements(n, op):
            marks.append(pytest.mark.skip(reason=f"backend {n} has no {op} yet"))
        out.append(pytest.param(n, marks=marks, id=n))
    return out


def supports_dtype(backend, dtype):
    return dtype in registry.INFO[backend].dtypes


def rel_l2(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


MU, S = 0.3, 1.6  # toy data x0 ~ N(MU, S^2): |x0| often exceeds 1, so clipping and thresholding engage


def toy_model(x, t, sched):
    """A consistent denoiser for a diffusers scheduler: the exact prediction for Gaussian data plus a small
    smooth nonlinearity, in the scheduler's prediction type.

    (An arbitrary nonlinear map would make the sampler's dynamics expanding, so that float32 rounding
    grows step by step and no two implementations could agree.)
    """
    a = float(sched.alphas_cumprod[int(t)])
    sa, sb = a ** 0.5, (1 - a) ** 0.5
    xf = x.double()
    x0 = MU + sa * S * S / (a * S * S + 1 - a) * (xf - sa * MU) + 0.05 * torch.sin(3.0 * xf)
    eps = (xf - sa * x0) / sb
    kind = sched.config.prediction_type
    out = eps if kind == "epsilon" else x0 if kind == "sample" else sa * eps - sb * x0
    return out.to(x.dtype)


def cosine_alphas_cumprod(n=1000, s=0.008, dtype=torch.float64):
    """Nichol & Dhariwal's cosine alpha-bar table (arXiv:2102.09672, eq. 17, betas capped at 0.999), written out
    here independently of ``pydiff.schedules`` so the tests that use it do not test pydiff against itself."""
    import math

    f = [math.cos(((i / n) + s) / (1 + s) * math.pi / 2) ** 2 for i in range(n + 1)]
    out, acc = [], 1.0
    for i in range(n):
        acc *= 1.0 - min(1.0 - f[i + 1] / f[i], 0.999)
        out.append(acc)
    return torch.tensor(out, dtype=dtype)


class TinyModel(torch.nn.Module):
    """A small conv net with parameters, whose output depends on the timestep."""

    def __init__(self, seed=0, dtype=torch.float32):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1).to(dtype)
        with torch.no_grad():
            self.conv.weight.copy_(0.2 * torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.copy_(0.1 * torch.randn(self.conv.bias.shape, generator=g))

    def forward(self, x, t):
        return torch.tanh(self.conv(x)) * (1 + t.to(x.dtype) / 1000) + 0.1 * x
