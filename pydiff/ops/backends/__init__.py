"""The backend registry: the one answer to "which backend runs on which device and dtype, and why not".

Every backend is a launcher module in this package with the same face: ``available()``,
``unavailable_reason()`` and one function per op with the normalized signature of docs/ops.md.

==========  ==========================================  ===================  ==================================
backend     implementation                              devices              dtypes
==========  ==========================================  ===================  ==================================
reference   plain PyTorch (``pydiff/ops/*.py``)         any                  float16, bfloat16, float32, float64
cpu         C++/OpenMP, ``pydiff._C`` (csrc/cpu)        cpu                  float16, bfloat16, float32, float64
cuda        CUDA C++, ``pydiff._C_cuda`` (csrc/cuda)    cuda                 float16, bfloat16, float32
cuda-jit    the same csrc/cuda sources compiled at run  cuda                 float16, bfloat16, float32
            time by NVRTC, launched by CuPy
            (``pip install pydiff[cupy]``)
triton      Triton, ``pydiff.kernels`` (kernels/)       cuda; cpu under      float16, bfloat16, float32
                                                        ``TRITON_INTERPRET=1``
==========  ==========================================  ===================  ==================================

Automatic choice (``backend=None`` and no ``PYDIFF_BACKEND``): CPU tensors -> cpu -> reference; CUDA tensors ->
cuda -> cuda-jit -> triton -> reference (float64 -> reference): the ahead-of-time kernels when the build has
them, else the same kernels compiled on first use, else Triton. ``backend_report()`` says for every backend whether it is
available here and, if not, why: no backend is ever dropped silently.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import torch

_HALF_AND_SINGLE = (torch.float16, torch.bfloat16, torch.float32)
_ALL = _HALF_AND_SINGLE + (torch.float64,)


@dataclass(frozen=True)
class BackendInfo:
    name: str
    module: str          # the launcher module
    devices: tuple       # device types it runs on (triton on "cpu" only under the interpreter)
    dtypes: tuple


INFO = {
    "reference": BackendInfo("reference", "pydiff.ops.backends.reference", ("*",), _ALL),
    "cpu": BackendInfo("cpu", "pydiff.ops.backends.cpu", ("cpu",), _ALL),
    "cuda": BackendInfo("cuda", "pydiff.ops.backends.cuda", ("cuda",), _HALF_AND_SINGLE),
    "triton": BackendInfo("triton", "pydiff.ops.backends.triton", ("cuda", "cpu"), _HALF_AND_SINGLE),
    "cuda-jit": BackendInfo("cuda-jit", "pydiff.ops.backends.cuda_jit", ("cuda",), _HALF_AND_SINGLE),
}
BACKENDS = tuple(INFO)
AUTOMATIC_ORDER = {"cpu": ("cpu",), "cuda": ("cuda", "cuda-jit", "triton")}
OPS = ("fused_step", "sumsq", "dynamic_threshold", "philox_normal", "fused_step_backward", "langevin_step")

_MODULES: dict = {}
_IMPORT_ERRORS: dict = {}


def check_name(name: str, source: str = "backend") -> str:
    if name not in INFO:
        raise ValueError(f"{source} must be one of {BACKENDS}, got {name!r}")
    return name


def load(name: str):
    """The launcher module of ``name``, or None when it cannot be imported (``unavailable_reason`` says why)."""
    check_name(name)
    if name not in _MODULES:
        try:
            _MODULES[name] = importlib.import_module(INFO[name].module)
        except Exception as exc:  # a broken optional backend must not break the library
            _MODULES[name] = None
            _IMPORT_ERRORS[name] = f"{INFO[name].module} failed to import ({type(exc).__name__}: {exc})"
    return _MODULES[name]


def unavailable_reason(name: str) -> str | None:
    """None when backend ``name`` can run here, else the reason it cannot."""
    mod = load(name)
    if mod is None:
        return _IMPORT_ERRORS[name]
    try:
        if mod.available():
            return None
        return mod.unavailable_reason() or "unavailable (no reason given)"
    except Exception as exc:
        return f"availability check failed ({type(exc).__name__}: {exc})"


def backend_available(name: str) -> bool:
    """True when backend ``name`` can run here (its launcher imports and reports itself usable)."""
    return unavailable_reason(name) is None


def available_backends() -> list:
    """The backends that can run here; ``backend_report()`` gives the reason for each missing one."""
    return [b for b in BACKENDS if backend_available(b)]


def backend_report() -> dict:
    """``{name: None if available else reason}`` for every backend."""
    return {b: unavailable_reason(b) for b in BACKENDS}


def runs_on(name: str, device_type: str, dtype: torch.dtype | None = None) -> bool:
    """Whether backend ``name`` takes tensors of ``device_type`` (and ``dtype``), available or not."""
    info = INFO[check_name(name)]
    if dtype is not None and dtype not in info.dtypes:
        return False
    if "*" in info.devices:
        return True
    if name == "triton" and device_type == "cpu":
        return os.environ.get("TRITON_INTERPRET") == "1"
    return device_type in info.devices


def test_device(name: str) -> torch.device | None:
    """The device on which ``name`` can be exercised here (tests, benchmarks), or None."""
    if not backend_available(name):
        return None
    has_cuda = torch.cuda.is_available()
    for dev in (("cuda", "cpu") if name in ("cuda", "cuda-jit", "triton") else ("cpu",)):
        if (dev != "cuda" or has_cuda) and runs_on(name, dev):
            return torch.device(dev)
    return None


def implements(name: str, op: str) -> bool:
    """Whether backend ``name`` (available) has a kernel for ``op``."""
    return callable(getattr(load(name), op, None))


def implementation(name: str, op: str):
    """The normalized implementation of ``op`` on backend ``name``."""
    return getattr(load(name), op)
