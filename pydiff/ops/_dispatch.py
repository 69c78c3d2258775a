"""Backend selection and argument validation shared by the fused ops.

Every op has one public function (in its own module) that validates and normalizes its arguments,
then calls the chosen backend's function with the normalized signature of docs/ops.md:

* ``reference``: plain PyTorch (``pydiff/ops/*.py``), any device, every dtype; the oracle of the tests.
* ``cpu``: C++/OpenMP (``pydiff._C``), CPU tensors.
* ``cuda``: CUDA C++ (``pydiff._C_cuda``), CUDA tensors.
* ``triton``: Triton (``pydiff.kernels``), CUDA tensors (or CPU under ``TRITON_INTERPRET=1``).

Choice: the ``backend=`` argument, else the environment variable ``PYDIFF_BACKEND``, else by device:
CPU -> cpu (reference when the extension is not built); CUDA -> triton, then cuda, then reference.
"""
from __future__ import annotations

import importlib
import os

import torch

BACKENDS = ("reference", "cpu", "cuda", "triton")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_MODULES = {"cpu": "pydiff._backend_cpu", "cuda": "pydiff._backend_cuda", "triton": "pydiff.kernels"}
_U64 = 1 << 64


def _backend_module(name: str):
    try:
        return importlib.import_module(_MODULES[name])
    except ImportError:
        return None


def backend_available(name: str) -> bool:
    """True when backend ``name`` can run here (its module imports and reports itself usable)."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "reference":
        return True
    mod = _backend_module(name)
    try:
        return bool(mod is not None and mod.available())
    except Exception:  # a broken optional backend must not break the library
        return False


def available_backends() -> list[str]:
    return [b for b in BACKENDS if backend_available(b)]


def _supports(name: str, device: torch.device) -> bool:
    if name == "reference":
        return True
    if name == "cpu":
        return device.type == "cpu"
    if name == "cuda":
        return device.type == "cuda"
    # triton: CUDA tensors, or CPU tensors under the interpreter
    return device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


_RESOLVED: dict = {}
_IMPLS: dict = {}


def resolve_backend(backend: str | None, tensor: torch.Tensor) -> str:
    """Pick the backend for an op on ``tensor`` (see module docstring).

    Successful choices are cached per (argument, environment, device type, dtype): the eager step pays
    ~1 µs here instead of ~10 µs (availability probes, environment reads) — it is on every step's path.
    """
    # TRITON_INTERPRET is left out of the key: triton reads it once, at import, so it cannot change later
    key = (backend, os.environ.get("PYDIFF_BACKEND"), tensor.device.type, tensor.dtype)
    hit = _RESOLVED.get(key)
    if hit is not None:
        return hit
    name = _resolve(backend, tensor)
    _RESOLVED[key] = name
    return name


def _resolve(backend: str | None, tensor: torch.Tensor) -> str:
    if backend is None:
        backend = os.environ.get("PYDIFF_BACKEND") or None
        source = "PYDIFF_BACKEND"
    else:
        source = "backend"
    dev = tensor.device
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"{source} must be one of {BACKENDS}, got {backend!r}")
        if not _supports(backend, dev):
            raise ValueError(f"{source}={backend!r} cannot run on {dev.type} tensors")
        if not backend_available(backend):
            raise RuntimeError(
                f"{source}={backend!r} is not available here "
                f"(cpu/cuda need the compiled extension, triton needs triton and a GPU); "
                f"available: {available_backends()}"
            )
        if backend == "triton" and tensor.dtype == torch.float64:
            raise TypeError("the triton backend computes in float32 and does not take float64 tensors")
        if backend == "cuda" and tensor.dtype == torch.float64:
            raise TypeError("the cuda backend does not take float64 tensors; use backend='reference'")
        return backend
    order = ("cpu",) if dev.type == "cpu" else ("triton", "cuda")
    for name in order:
        if tensor.dtype == torch.float64 and name in ("triton", "cuda"):
            continue
        if backend_available(name) and _supports(name, dev):
            return name
    return "reference"


def dispatch(op: str, backend: str):
    """The normalized implementation of ``op`` for ``backend`` (looked up once, then cached)."""
    impl = _IMPLS.get((op, backend))
    if impl is None:
        impl = _IMPLS[(op, backend)] = _lookup(op, backend)
    return impl


def _lookup(op: str, backend: str):
    if backend == "reference":
        module = {"philox_normal": "philox"}.get(op, op)
        mod = importlib.import_module(f"pydiff.ops.{module}")
        return getattr(mod, f"{op}_reference")
    return getattr(_backend_module(backend), op)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 data, float32 otherwise (docs/ops.md, 'compute type T')."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_seed_offset(seed, offset) -> None:
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < _U64:
            raise TypeError(f"seed must be an int in [0, 2**64), got {seed!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < _U64:
        raise TypeError(f"offset must be an int in [0, 2**64), got {offset!r}")


def check_like(name: str, t, ref: torch.Tensor, ref_name: str) -> torch.Tensor:
    """``t`` must be a tensor with ``ref``'s shape, dtype and device; returns it contiguous."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")
    if t.shape != ref.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)} but {ref_name} has shape {tuple(ref.shape)}")
    return t.contiguous()


def check_output(name: str, t, ref: torch.Tensor, ref_name: str) -> torch.Tensor:
    """Outputs are written in place, so they must already be contiguous."""
    check_like(name, t, ref, ref_name)
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (it is written in place)")
    return t


def check_data(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if t.ndim < 1:
        raise ValueError(f"{name} must have a batch dimension (ndim >= 1), got a scalar")
    return t


def normalize_rows(coef, index, batch: int, like: torch.Tensor, ncoef: int):
    """Validate ``coef``/``index`` and return ``(coef2d, index, index_stride, row_stride)``.

    ``coef``: ``(ncoef,)`` one row for the batch, ``(B, ncoef)`` one row per sample, or with ``index``
    any ``(R, ncoef)`` table whose row ``index[b]`` (``index`` of shape ``()``, ``(1,)`` or ``(B,)``) serves
    sample ``b``. Converted to the compute dtype on ``like``'s device (a no-op for plan tables).
    """
    if not isinstance(coef, torch.Tensor):
        raise TypeError(f"coef must be a torch.Tensor, got {type(coef).__name__}")
    if not coef.is_floating_point():
        raise TypeError(f"coef must be a floating tensor, got {coef.dtype}")
    if coef.device != like.device:
        raise ValueError(f"coef is on {coef.device} but the data is on {like.device}")
    if coef.ndim == 1:
        coef = coef.unsqueeze(0)
    if coef.ndim != 2 or coef.shape[1] != ncoef:
        raise ValueError(f"coef must have shape ({ncoef},), (B, {ncoef}) or (R, {ncoef}), got {tuple(coef.shape)}")
    cdt = compute_dtype(like.dtype)
    if coef.dtype != cdt:
        coef = coef.to(cdt)
    if not coef.is_contiguous():
        coef = coef.contiguous()
    if index is not None:
        if not isinstance(index, torch.Tensor) or index.dtype not in (torch.int64, torch.int32):
            raise TypeError("index must be an int64 (or int32) tensor of row numbers")
        if index.device != like.device:
            raise ValueError(f"index is on {index.device} but the data is on {like.device}")
        index = index.reshape(-1)
        if index.numel() not in (1, batch):
            raise ValueError(f"index must hold 1 or B={batch} row numbers, got {index.numel()}")
        index = index.to(torch.int64).contiguous()
        return coef, index, int(index.numel() != 1), 0
    if coef.shape[0] == 1:
        return coef, None, 0, 0
    if coef.shape[0] != batch:
        raise ValueError(
            f"coef has {coef.shape[0]} rows but the batch has {batch} samples; "
            "give one row, one row per sample, or an index into the table"
        )
    return coef, None, 0, 1
