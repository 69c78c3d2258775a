"""Argument checks and normalisation shared by the public ops (docs/ops.md, "Shapes, dtypes, layout").

Every public op validates its arguments here, then calls the chosen backend with the normalized signature:
contiguous tensors on one device, coefficients as an ``(R, NCOEF)`` table in the compute dtype, the index rule
applied on the host where that is free (CPU index tensors), seeds as unsigned 64-bit ints.
"""
from __future__ import annotations

import numpy as np
import torch

from .columns import NCOEF

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_U64 = 1 << 64
_I64_MIN = -(1 << 63)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 data, float32 otherwise (docs/ops.md, "compute type T")."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def seed_to_int64(seed: int) -> int:
    """An unsigned 64-bit seed as the int64 with the same bits (for int64-only interfaces, ``rng[0]``)."""
    seed = check_seed("seed", seed)
    return seed - _U64 if seed >= 1 << 63 else seed


def int64_to_seed(value: int) -> int:
    """The inverse of ``seed_to_int64``: an int64 bit pattern as the unsigned seed in ``[0, 2**64)``."""
    if isinstance(value, bool) or not isinstance(value, int) or not _I64_MIN <= value < 1 << 63:
        raise TypeError(f"value must be an int in [-2**63, 2**63), got {value!r}")
    return value % _U64


def _int(name: str, value, low: int, high: int, what: str) -> int:
    """An int (or NumPy integer) in ``[low, high)``: TypeError for another type, ValueError out of range."""
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int in {what}, got {type(value).__name__} {value!r}")
    if not low <= value < high:
        raise ValueError(f"{name} must be an int in {what}, got {value!r}")
    return value


def check_seed(name: str, seed) -> int:
    """A seed: an int (or NumPy integer) in ``[0, 2**64)``, or a negative int64 taken as its bit pattern (the
    int64 interfaces: ``rng[0]``, ``seed_to_int64``). Returned unsigned."""
    return _int(name, seed, _I64_MIN, _U64, "[0, 2**64) (or an int64 bit pattern)") % _U64


def check_noise_args(seed, offset, rng, like: torch.Tensor, tensor=None, tensor_name="noise"):
    """Validate the Philox arguments: ``(seed or None, offset, rng or None)`` normalized (docs/ops.md).

    ``tensor`` is the op's explicit noise-like input (``noise`` of fused_step, ``b`` of sumsq): at most one of it,
    ``seed`` and ``rng`` may be given.
    """
    given = [n for n, v in ((tensor_name, tensor), ("seed", seed), ("rng", rng)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"give either {given[0]} or {given[1]}, not both")
    if seed is not None:
        seed = check_seed("seed", seed)
    offset = _int("offset", offset, 0, _U64, "[0, 2**64)")
    if rng is not None:
        if not isinstance(rng, torch.Tensor) or rng.dtype != torch.int64 or rng.numel() != 2:
            raise TypeError("rng must be an int64 tensor of shape (2,): [seed bits, offset base]")
        if rng.device != like.device:
            raise ValueError(f"rng is on {rng.device} but the data is on {like.device}")
        rng = rng.reshape(2).contiguous()
    return seed, offset, rng


def check_data(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if t.ndim < 1:
        raise ValueError(f"{name} must have a batch dimension (ndim >= 1), got a scalar")
    return t


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


def check_overlap(outputs, inputs, side=()) -> None:
    """Reject partial overlaps (docs/ops.md, "Aliasing").

    ``outputs``/``inputs``: ``(name, tensor or None)`` pairs of contiguous tensors. An output may *be* an input
    (same start and size); any other intersection of an output with an input, or of two outputs, raises.
    ``side``: inputs an output must not touch at all (the coefficient table, thresholds, index, Philox key: the
    kernels read them while they write). It runs on every step, so it compares byte ranges only (~1 us).
    """
    outs = []
    for name, t in outputs:
        if t is not None:
            start = t.data_ptr()
            end = start + t.nbytes
            for pname, p0, p1 in outs:
                if p0 < end and start < p1:
                    raise ValueError(f"{name} overlaps {pname}: the two outputs must not share memory")
            outs.append((name, start, end))
    for exact_ok, group in ((True, inputs), (False, side)):
        for name, t in group:
            if t is None:
                continue
            a0 = t.data_ptr()
            a1 = a0 + t.nbytes
            for oname, o0, o1 in outs:
                if a0 < o1 and o0 < a1 and not (exact_ok and a0 == o0 and a1 == o1):
                    raise ValueError(f"{oname} partially overlaps {name}: an output must be an input exactly or not "
                                     "overlap it at all" if exact_ok else
                                     f"{oname} overlaps {name}: an output must not share memory with {name}")


def check_threshold(threshold, x: torch.Tensor) -> torch.Tensor:
    """A per-sample dynamic-thresholding scale: a floating tensor of ``B`` values on ``x``'s device, returned as a
    contiguous ``(B,)`` tensor in the compute dtype."""
    B = x.shape[0]
    if not isinstance(threshold, torch.Tensor) or not threshold.is_floating_point():
        raise TypeError("threshold must be a floating tensor of shape (B,)")
    if threshold.device != x.device:
        raise ValueError(f"threshold is on {threshold.device} but x is on {x.device}")
    if threshold.numel() != B:
        raise ValueError(f"threshold must hold B={B} values, got shape {tuple(threshold.shape)}")
    # its values must be > 0 (x0 is divided by it; dynamic_threshold's are >= 1): not checked, because reading them
    # is a host sync, which no step of a sampling loop makes (a NaN scale, from NaN data, gives NaN)
    return threshold.reshape(B).to(compute_dtype(x.dtype)).contiguous()


def check_index_range(coef, index) -> None:
    """The index rule of docs/ops.md for a CPU index: a row outside ``[-R, R)`` raises IndexError. On an
    accelerator the kernels read an all-NaN row instead (checking would be a host sync)."""
    if index is not None and index.device.type == "cpu":
        R = coef.shape[0]
        lo, hi = int(index.min()), int(index.max())
        if lo < -R or hi >= R:
            bad = lo if lo < -R else hi
            raise IndexError(f"index {bad} is out of range for a coefficient table of {R} rows")


def to_int64(value):
    """An unsigned 64-bit host int (seed, offset) as the int64 with the same bits; None stays None."""
    if value is None:
        return None
    return value - _U64 if value >= 1 << 63 else value


def to_uint64(value):
    """The inverse of ``to_int64``, for the backends (they take unsigned seeds and offsets)."""
    if value is None:
        return None
    return value % _U64


def normalize_rows(coef, index, batch: int, like: torch.Tensor):
    """Validate ``coef``/``index`` and return ``(coef2d, index, index_stride, row_stride)``.

    ``coef``: ``(NCOEF,)`` one row for the batch, ``(B, NCOEF)`` one row per sample, or with ``index`` any
    ``(R, NCOEF)`` table whose row ``index[b]`` (``index`` of shape ``()``, ``(1,)`` or ``(B,)``) serves sample
    ``b``. Converted to the compute dtype on ``like``'s device (a no-op for plan tables). The range of the index
    is checked by the operator's implementation (``check_index_range``), where the values are real.
    """
    if not isinstance(coef, torch.Tensor):
        raise TypeError(f"coef must be a torch.Tensor, got {type(coef).__name__}")
    if not coef.is_floating_point():
        raise TypeError(f"coef must be a floating tensor, got {coef.dtype}")
    if coef.device != like.device:
        raise ValueError(f"coef is on {coef.device} but the data is on {like.device}")
    if coef.ndim == 1:
        coef = coef.unsqueeze(0)
    if coef.ndim != 2 or coef.shape[1] != NCOEF:
        raise ValueError(f"coef must have shape ({NCOEF},), (B, {NCOEF}) or (R, {NCOEF}) "
                         f"(columns pydiff.ops.COLUMNS), got {tuple(coef.shape)}")
    if coef.shape[0] == 0:
        raise ValueError("coef has no rows")
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
        if index.dtype != torch.int64:
            index = index.to(torch.int64)
        index = index.contiguous()
        return coef, index, int(index.numel() != 1), 0
    if coef.shape[0] == 1:
        return coef, None, 0, 0
    if coef.shape[0] != batch:
        raise ValueError(
            f"coef has {coef.shape[0]} rows but the batch has {batch} samples; "
            "give one row, one row per sample, or an index into the table"
        )
    return coef, None, 0, 1
