"""``torch_randn``: ``torch.randn`` on the CPU, same numbers and same generator state, about 4x faster.

Why: the diffusers drop-ins draw their noise as diffusers does (``randn_tensor``, i.e. ``torch.randn(shape,
generator=g)`` on the CPU for a CPU sample), so that a seed gives the images it gives in diffusers. torch draws
those normals serially at ~3.4 ns each, several times the cost of the fused step that consumes them.

What it reproduces (torch's ``normal_fill`` for a contiguous float32 tensor of ``n >= 16`` elements): the
generator's mt19937 (Matsumoto & Nishimura 1998) gives each element a uniform ``u = (mt() & 0xFFFFFF) 2^-24``;
Box-Muller (Box & Muller 1958) over each block of 16 turns ``u1 = 1 - d[j]``, ``u2 = d[j+8]`` (``j < 8``) into::

    d[j] = sqrt(-2 ln u1) cos(2 pi u2),    d[j+8] = sqrt(-2 ln u1) sin(2 pi u2)

and when ``n % 16 != 0`` the last 16 values are recomputed from 16 further uniforms. The kernel
(csrc/cpu/torch_normal.cpp) reads the engine state from ``generator.get_state()``, vectorises the twist, the
tempering and the Box-Muller blocks, and the advanced state is ``set_state`` back: the generator afterwards is
bit-identical to the one ``torch.randn`` leaves. The values agree with torch's to float32 rounding (ln, sin and
cos are float32 polynomials here, libm or ATen's vector code there: a few ulp, not the bit).

Cost (single thread; the stream is serial): 0.7-0.8 ns per element with the AVX-512 loops (~1.0 ns AVX2,
~2.7 ns baseline SSE2), against torch's 3.4 ns, plus ~4 us per call (``get_state``/``set_state``, the checks, the
allocation): below ~1500 elements ``torch.randn`` is the quicker of the two (benchmarks/RESULTS.md).

Everything else -- fewer than 16 elements (torch's double normal cache), another dtype or device, ``out`` that
is not a float32 contiguous CPU tensor of the shape, a tensor requiring grad, a ``torch.compile`` trace, no
``pydiff._C`` -- is ``torch.randn`` itself. On first use a self-check draws a few sizes both ways on a scratch
generator; if this torch draws differently (values or state), the fast path is switched off with one warning.
The generator's state is read and written back around the kernel under a lock of this module, so draws of
``torch_randn`` in several threads from one generator are each one of torch's serial draws (none repeated, the
generator advanced by all of them). That lock is not torch's generator lock: a ``torch.randn`` (or any other
draw) from the same generator in another thread at the same moment can still interleave with a draw here.
"""
from __future__ import annotations

import numbers
import threading
import warnings

import torch

__all__ = ["torch_randn", "torch_randn_fast"]

_STATE = {"checked": False, "ok": False, "reason": None, "C": False}  # C: the module once looked up


def _native():
    if _STATE["C"] is False:
        from .backends import cpu  # lazy: importing pydiff.ops must not load the extension
        C = cpu._C if cpu.available() else None
        _STATE["C"] = C if hasattr(C, "torch_normal_fill") else None  # None also for a build from older sources
    return _STATE["C"]


def _shape(shape) -> tuple[int, ...]:
    if type(shape) is tuple and all(type(d) is int and d >= 0 for d in shape):
        return shape  # the common case, without the ABC checks below (~2 us)
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (int(shape),)
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"shape: expected an int or a sequence of ints, got {type(shape).__name__}") from None
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral):
            raise TypeError(f"shape: expected a sequence of ints, got an element {d!r}")
        if d < 0:
            raise ValueError(f"shape: expected non-negative sizes, got {dims}")
    return tuple(int(d) for d in dims)


# get_state, the kernel (which releases the GIL) and set_state of one draw must not interleave with another
# thread's draw from the same generator, or both read one state and draw the same numbers. One lock for every
# generator: a draw holds it for ~70 us of a 98304-element tensor, and draws in two threads contend only here.
_FILL_LOCK = threading.Lock()


def _fill(C, out: torch.Tensor, generator: torch.Generator) -> bool:
    """``out`` (float32, contiguous, CPU, numel >= 16) from ``generator``; False (nothing changed) on refusal."""
    threads = torch.get_num_threads()  # the Box-Muller blocks run on them; the engine's stream is serial
    with _FILL_LOCK:
        state = generator.get_state()
        if C.torch_normal_fill(out.data_ptr(), out.numel(), state.data_ptr(), state.numel(), threads) != 0:
            return False
        generator.set_state(state)
    return True


def _self_check(C) -> str | None:
    """Why this torch's ``randn`` is not the one the kernel reproduces, or None when they agree."""
    g = torch.Generator()
    g.manual_seed(20240607)
    for n in (16, 17, 1000, 1249):
        ref = torch.Generator()
        ref.set_state(g.get_state())
        # explicit dtype and device: the first call may come under set_default_dtype or a device context
        want = torch.randn(n, generator=ref, dtype=torch.float32, device="cpu")
        got = torch.empty(n, dtype=torch.float32, device="cpu")
        if not _fill(C, got, g):
            return f"the kernel refused the generator state of this torch (n={n})"
        if not torch.equal(g.get_state(), ref.get_state()):
            return f"the generator state after {n} draws differs from torch.randn's"
        if not torch.allclose(got, want, rtol=1e-5, atol=1e-6):
            err = (got - want).abs().max().item()
            return f"the values of {n} draws differ from torch.randn's (max abs difference {err:.3g})"
    return None


def torch_randn_fast() -> bool:
    """True when ``torch_randn`` runs the kernel for the requests it can take (``pydiff._C`` is built and the
    first-use self-check found this torch's ``randn`` to be the algorithm the kernel reproduces)."""
    if not _STATE["checked"]:
        C = _native()
        reason = "pydiff._C is not available" if C is None else _self_check(C)
        _STATE.update(checked=True, ok=reason is None, reason=reason)
        if C is not None and reason is not None:
            warnings.warn(f"pydiff.ops.torch_randn: using torch.randn, since {reason}", RuntimeWarning,
                          stacklevel=3)
    return _STATE["ok"]


def _compiling() -> bool:
    comp = getattr(torch, "compiler", None)
    return bool(comp is not None and hasattr(comp, "is_compiling") and comp.is_compiling())


def torch_randn(shape, generator: torch.Generator | None = None, *, out: torch.Tensor | None = None,
                dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
    """``torch.randn(shape, generator=generator, out=out, dtype=dtype, device=device)``: the same tensor (to
    float32 rounding) and the same generator state afterwards (bit for bit), drawn by the C++ kernel for a CPU
    float32 contiguous request of at least 16 elements (see the module docstring); ``generator=None`` is
    ``torch.default_generator``, as in ``torch.randn``."""
    dims = _shape(shape)
    fast = ((dtype is None or dtype == torch.float32) and (device is None or torch.device(device).type == "cpu")
            and (generator is None or (isinstance(generator, torch.Generator) and generator.device.type == "cpu"))
            and not _compiling())
    if fast and out is not None:
        fast = (out.dtype == torch.float32 and out.device.type == "cpu" and out.is_contiguous()
                and tuple(out.shape) == dims and not out.requires_grad)
    elif fast:
        fast = dtype is not None or torch.get_default_dtype() == torch.float32
    if fast:
        n = 1
        for d in dims:
            n *= d
        fast = n >= 16 and torch_randn_fast()
    if fast:
        # without a device, torch.empty follows torch's default device (torch.set_default_device, a device
        # context), as torch.randn does: anything but the CPU goes to torch.randn
        res = torch.empty(dims, dtype=torch.float32) if out is None else out
        if res.device.type == "cpu" and _fill(_native(), res, torch.default_generator if generator is None
                                               else generator):
            if out is not None:  # written through its pointer: tell autograd, as torch.randn(out=) would
                torch.autograd.graph.increment_version(out)
            return res
    kw = {}
    if out is not None:
        kw["out"] = out
    if dtype is not None:
        kw["dtype"] = dtype
    if device is not None:
        kw["device"] = device
    return torch.randn(dims, generator=generator, **kw)
