"""Host-side helpers shared by the Triton launchers (argument packing and dtype checks)."""
from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
DATA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def split_u64(v: int) -> tuple[int, int]:
    """``v`` in [0, 2^64) -> (low word, high word), each as a signed int32 bit pattern.

    Passed to ``do_not_specialize`` kernel parameters, every such value has Triton type ``i32``
    whatever its magnitude, so a new seed/offset never selects another compiled kernel; the kernel
    bit-casts the words back to uint32.
    """
    v = int(v)
    if not 0 <= v < 1 << 64:
        raise ValueError(f"expected an int in [0, 2**64), got {v}")
    lo, hi = v & _MASK32, v >> 32

    def s32(w):
        return w - (1 << 32) if w >= 1 << 31 else w

    return s32(lo), s32(hi)


def check_dtype(name: str, t: torch.Tensor) -> None:
    """Triton computes in float32 and takes no float64 data (docs/ops.md)."""
    if t.dtype == torch.float64:
        raise TypeError(f"the triton backend computes in float32 and does not take float64 tensors ({name})")
    if t.dtype not in DATA_DTYPES:
        raise TypeError(f"the triton backend takes float16, bfloat16 or float32 tensors, got {t.dtype} ({name})")


def check_f32(name: str, t) -> None:
    """Coefficient tables and thresholds arrive in the compute type, float32 (docs/ops.md)."""
    if t is not None and t.dtype != torch.float32:
        raise TypeError(f"the triton backend needs {name} in float32, got {t.dtype}")


def check_index(index) -> None:
    if index is not None and index.dtype != torch.int64:
        raise TypeError(f"index must be int64, got {index.dtype}")
