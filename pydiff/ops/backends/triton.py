"""The ``triton`` backend of ``pydiff.ops``: host launchers of the Triton kernels (``pydiff.kernels``).

The ops take the normalized arguments of docs/ops.md (the public functions in ``pydiff.ops`` validate
and normalize first); here they only pack arguments (64-bit seeds and offsets as int32 words, dummies for
absent inputs), pick grids and launch. They run on CUDA tensors, or on CPU tensors under the Triton
interpreter (``TRITON_INTERPRET=1`` set before triton is imported). Data is float16, bfloat16 or float32,
computed in float32; float64 is refused with TypeError.

Finding the kernels. An install maps the top-level ``kernels/`` folder to ``pydiff/kernels``; a source
checkout has it next to ``pydiff/``. The kernels must come from the same tree as the ``pydiff`` that was
imported: with an editable install of one checkout, ``import pydiff.kernels`` from *another* checkout
(whose ``pydiff`` comes first on ``sys.path``) would otherwise resolve to the first checkout's kernels
through the editable finder. So the folder is chosen by path (``<pydiff>/kernels``, then
``<pydiff>/../kernels``) and loaded by file location when the import system would pick another one.

Importing this module never fails and never imports triton; the first ``available()``,
``unavailable_reason()`` or op call loads triton and the kernels. Without them ``available()`` is False,
``unavailable_reason()`` says why, and the ops raise RuntimeError.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

from ..columns import K_MAX, NCOEF

__all__ = ["available", "unavailable_reason", "fused_step", "sumsq", "dynamic_threshold", "philox_normal",
           "langevin_step", "kernels_module", "philox4x32_10_raw"]

_PACKAGE = "pydiff.kernels"
_SUBMODULES = ("_common", "philox", "fused_step", "sumsq", "dynamic_threshold", "langevin_step")
DATA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# No FMA contraction: every product and sum rounds separately, like the reference and the cpu/cuda builds
# (-ffp-contract=off, --fmad=false), so only the transcendentals may differ from them. The kernels are
# memory-bound; an FMA saves no time there. (Triton 3.9 also warns when the option is left implicit.)
_OPTIONS = {"enable_fp_fusion": False}


class _State:
    loaded = False
    package = None      # the pydiff.kernels module
    mods: dict = {}     # submodule name -> module
    error: str | None = None   # why the kernels cannot be used (import-time reason)
    interpreted = False  # the kernels were decorated under TRITON_INTERPRET=1 (they run on CPU tensors)


def _kernels_dir() -> Path:
    """``kernels/`` of the tree the imported ``pydiff`` belongs to: inside it (install) or next to it."""
    import pydiff

    pkg = Path(pydiff.__file__).resolve().parent
    for cand in (pkg / "kernels", pkg.parent / "kernels"):
        if (cand / "__init__.py").is_file():
            return cand
    raise ImportError(f"the Triton kernels are neither in {pkg / 'kernels'} (install) nor in "
                      f"{pkg.parent / 'kernels'} (source checkout)")


def _same_file(a, b) -> bool:
    try:
        return a is not None and Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _load_package(folder: Path):
    init = folder / "__init__.py"
    mod = sys.modules.get(_PACKAGE)
    if mod is not None and _same_file(getattr(mod, "__file__", None), init):
        return mod
    if mod is None:
        spec = importlib.util.find_spec(_PACKAGE)
        if spec is not None and _same_file(spec.origin, init):
            return importlib.import_module(_PACKAGE)
    # Another tree's kernels would be imported (or were): load ours by location under the package name, so
    # that the kernels' relative imports and ``import pydiff.kernels.<op>`` resolve inside ``folder``.
    for name in [n for n in sys.modules if n == _PACKAGE or n.startswith(_PACKAGE + ".")]:
        del sys.modules[name]
    spec = importlib.util.spec_from_file_location(_PACKAGE, init, submodule_search_locations=[str(folder)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[_PACKAGE] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[_PACKAGE]
        raise
    import pydiff

    pydiff.kernels = mod
    return mod


def _load() -> None:
    if _State.loaded:
        return
    _State.loaded = True
    try:
        import triton  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name == "triton" or exc.name is None:
            _State.error = "triton is not installed"
        else:
            _State.error = f"triton failed to import (ModuleNotFoundError: {exc})"
        return
    except Exception as exc:  # a broken triton install must not break the library
        _State.error = f"triton failed to import ({type(exc).__name__}: {exc})"
        return
    try:
        _State.package = _load_package(_kernels_dir())
        _State.mods = {n: importlib.import_module(f"{_PACKAGE}.{n}") for n in _SUBMODULES}
    except Exception as exc:
        _State.error = f"the Triton kernels failed to import ({type(exc).__name__}: {exc})"
        return
    _State.interpreted = bool(_State.mods["_common"].INTERPRETED)


def kernels_module():
    """The loaded ``pydiff.kernels`` package (see the module docstring), or None when it cannot load."""
    _load()
    return _State.package


def unavailable_reason() -> str | None:
    """None when the backend can run here, else why not (missing triton, no device, an import error)."""
    _load()
    if _State.error is not None:
        return _State.error
    if not _State.interpreted and not torch.cuda.is_available():
        return "no CUDA device and TRITON_INTERPRET is not 1"
    return None


def available() -> bool:
    """True when triton and the kernels import and can run: a CUDA device, or the interpreter."""
    return unavailable_reason() is None


def _mods(op: str) -> dict:
    if not _State.loaded:
        _load()
    if _State.error is not None:
        raise RuntimeError(f"the triton backend cannot run {op}: {_State.error}")
    return _State.mods


# ------------------------------------------------------------------------------------------ checks


def _check_data(name: str, t: torch.Tensor) -> None:
    if t.dtype not in DATA_DTYPES:
        if t.dtype == torch.float64:
            raise TypeError(f"the triton backend computes in float32 and does not take float64 tensors ({name})")
        raise TypeError(f"the triton backend takes float16, bfloat16 or float32 tensors, got {t.dtype} ({name})")


def _check_f32(name: str, t) -> None:
    if t is not None and t.dtype != torch.float32:
        raise TypeError(f"the triton backend needs {name} in float32 (the compute type), got {t.dtype}")


def _check_index(index) -> None:
    if index is not None and index.dtype != torch.int64:
        raise TypeError(f"index must be an int64 tensor, got {index.dtype}")


def _check_rng(rng) -> None:
    if rng is not None and (rng.dtype != torch.int64 or tuple(rng.shape) != (2,) or not rng.is_contiguous()):
        raise TypeError(f"rng must be a contiguous int64 tensor of shape (2,), got {rng.dtype} {tuple(rng.shape)}")


def _philox_words(mods, seed, offset, rng):
    """(has_philox, seed_lo, seed_hi, off_lo, off_hi)."""
    split = mods["_common"].split_u64
    if seed is not None and rng is not None:
        raise ValueError("give either seed or rng, not both")
    seed_lo, seed_hi = split(seed) if seed is not None else (0, 0)
    off_lo, off_hi = split(offset)
    return seed is not None or rng is not None, seed_lo, seed_hi, off_lo, off_hi


def _launch_shape(x, coef, threshold, index, rng, noise, seed):
    """The checks fused_step and its backward share, then (B, N) of the launch (None when x is empty)."""
    _check_data("x", x)
    _check_f32("coef", coef)
    _check_f32("threshold", threshold)
    _check_index(index)
    _check_rng(rng)
    if noise is not None and (seed is not None or rng is not None):
        raise ValueError("give at most one of noise, seed and rng")
    if x.numel() == 0:
        return None
    return x.shape[0], x.numel() // x.shape[0]


# --------------------------------------------------------------------------------------------- ops


def fused_step(x, m, coef, index, index_stride, row_stride, out, w_out, hist, noise, seed, offset, rng,
               threshold, m2, var) -> None:
    """docs/ops.md ``fused_step``: writes ``out`` (and ``w_out``) in place."""
    mods = _mods("fused_step")
    hist = tuple(hist)
    if len(hist) > K_MAX:
        raise ValueError(f"hist holds at most {K_MAX} tensors, got {len(hist)}")
    shape = _launch_shape(x, coef, threshold, index, rng, noise, seed)
    if shape is None:
        return
    B, N = shape
    has_philox, seed_lo, seed_hi, off_lo, off_hi = _philox_words(mods, seed, offset, rng)
    km = mods["fused_step"]
    h = hist + (x,) * (K_MAX - len(hist))  # dummies for absent history (never read: NHIST is constexpr)
    block = km.BLOCK_SIZE
    grid = ((N + block - 1) // block, min(B, km.MAX_GRID_Y))
    km.fused_step_kernel[grid](
        x, m, x if m2 is None else m2, x if var is None else var, coef,
        coef if index is None else index,
        out, out if w_out is None else w_out,
        *h,
        x if noise is None else noise,
        coef if rng is None else rng,
        coef if threshold is None else threshold,
        N, B, coef.shape[0],
        seed_lo, seed_hi, off_lo, off_hi,
        HAS_INDEX=index is not None, INDEX_STRIDE=int(index_stride), ROW_STRIDE=int(row_stride),
        HAS_W_OUT=w_out is not None, NHIST=len(hist), HAS_NOISE=noise is not None, HAS_PHILOX=has_philox,
        HAS_RNG=rng is not None, HAS_THRESHOLD=threshold is not None, HAS_M2=m2 is not None,
        HAS_VAR=var is not None, BLOCK=block, PHILOX_TILE=has_philox and N % 4 == 0, num_warps=km.NUM_WARPS,
        **_OPTIONS,
    )


def sumsq(a, b, seed, offset, rng) -> torch.Tensor:
    """docs/ops.md ``sumsq``: ``(S, B)`` float32 per-sample sums of squares."""
    mods = _mods("sumsq")
    _check_data("a", a)
    _check_rng(rng)
    if b is not None and (seed is not None or rng is not None):
        raise ValueError("sumsq: give at most one of b, seed and rng")
    has_philox, seed_lo, seed_hi, off_lo, off_hi = _philox_words(mods, seed, offset, rng)
    B = a.shape[0]
    S = 1 if (b is None and not has_philox) else 2
    numel = a.numel()
    if numel == 0:
        return torch.zeros((S, B), dtype=torch.float32, device=a.device)
    N = numel // B
    km = mods["sumsq"]
    block = km.BLOCK_SIZE
    nblk = (N + block - 1) // block
    part = torch.empty((S, B, nblk), dtype=torch.float32, device=a.device)
    km.sumsq_kernel[(nblk, min(B, km.MAX_GRID_Y))](
        a, a if b is None else b, part if rng is None else rng, part, N, B, nblk, B * nblk,
        seed_lo, seed_hi, off_lo, off_hi,
        HAS_B=b is not None, HAS_PHILOX=has_philox, HAS_RNG=rng is not None, BLOCK=block,
        PHILOX_TILE=has_philox and N % 4 == 0, num_warps=km.NUM_WARPS, **_OPTIONS,
    )
    return part.sum(dim=-1)


def langevin_step(x, m, coef, coef_stride, sample_norm, out, w_out, noise, seed, offset, rng) -> None:
    """docs/ops.md ``langevin_step``: ``sumsq``, the rows kernel (kernels/langevin_step.py), ``fused_step``."""
    mods = _mods("langevin_step")
    _check_data("x", x)
    B = x.shape[0]
    if x.numel() == 0:
        return
    sums = sumsq(m, noise, seed, offset, rng)
    rows = torch.empty((B, NCOEF), dtype=torch.float32, device=x.device)
    mods["langevin_step"].langevin_rows_kernel[(1,)](
        sums, coef, rows, B, COEF_STRIDE=int(coef_stride), SAMPLE=bool(sample_norm),
        NC_BLOCK=1 << (NCOEF - 1).bit_length(), **_OPTIONS)
    fused_step(x, m, rows, None, 0, 1, out, w_out, (), noise, seed, offset, rng, None, None, None)


def dynamic_threshold(x, m, coef, index, index_stride, row_stride, m2, lo, hi, wt, max_val) -> torch.Tensor:
    """docs/ops.md ``dynamic_threshold``: ``(B,)`` float32 scales; ``lo, hi, wt`` from ``quantile_rank``."""
    mods = _mods("dynamic_threshold")
    _check_data("x", x)
    B = x.shape[0]
    numel = x.numel()
    if B == 0:
        return torch.empty((0,), dtype=torch.float32, device=x.device)
    N = numel // B
    if N == 0:
        raise ValueError("dynamic_threshold: samples have no elements (the quantile is undefined)")
    lo, hi = int(lo), int(hi)
    if not (0 <= lo <= hi < N):
        raise ValueError(f"dynamic_threshold: need 0 <= lo <= hi < N={N}, got lo={lo}, hi={hi}")
    if m is None and (m2 is not None or coef is not None):
        raise ValueError("dynamic_threshold: m2 and coef are only used together with m")
    if m is not None:
        if coef is None:
            raise ValueError("dynamic_threshold: coef is required with m")
        _check_f32("coef", coef)
        _check_index(index)
    # wt is rounded once to float32 (docs/ops.md); 1 - wt is then a float32 operation, as in the reference
    wt32 = np.float32(wt)
    one_minus = np.float32(1.0) - wt32
    km = mods["dynamic_threshold"]
    block = km.BLOCK_SIZE
    nblk = (N + block - 1) // block
    absx0 = torch.empty((B, N), dtype=torch.float32, device=x.device)
    nan_flag = torch.empty((B, nblk), dtype=torch.int32, device=x.device)
    has_m = m is not None
    km.abs_x0_kernel[(nblk, min(B, km.MAX_GRID_Y))](
        x, x if m is None else m, x if m2 is None else m2, x if coef is None else coef,
        x if index is None or not has_m else index, absx0, nan_flag,
        N, B, 1 if coef is None else coef.shape[0], nblk,
        HAS_M=has_m, HAS_M2=m2 is not None, HAS_INDEX=has_m and index is not None,
        INDEX_STRIDE=int(index_stride), ROW_STRIDE=int(row_stride), BLOCK=block, num_warps=km.NUM_WARPS,
        **_OPTIONS,
    )
    v_lo = torch.kthvalue(absx0, lo + 1, dim=1).values
    v_hi = v_lo if hi == lo else torch.kthvalue(absx0, hi + 1, dim=1).values
    s = torch.empty((B,), dtype=torch.float32, device=x.device)
    bb = km.BLOCK_B
    km.finish_kernel[((B + bb - 1) // bb,)](
        v_lo, v_hi, nan_flag, s, B, nblk, float(wt32), float(one_minus),
        float("inf") if max_val is None else float(max_val),
        BLOCK_B=bb, BLOCK_FLAGS=km.BLOCK_FLAGS, **_OPTIONS,
    )
    return s


def philox_normal(out, seed, offset, rng) -> None:
    """docs/ops.md ``philox_normal``: fills contiguous ``out`` (element g = flat index) with Philox normals."""
    mods = _mods("philox_normal")
    _check_data("out", out)
    _check_rng(rng)
    if not out.is_contiguous():
        raise ValueError("philox_normal: out must be contiguous")
    if seed is None and rng is None:
        raise ValueError("philox_normal: give seed or rng")
    _, seed_lo, seed_hi, off_lo, off_hi = _philox_words(mods, seed, offset, rng)
    numel = out.numel()
    if numel == 0:
        return
    km = mods["philox"]
    block = km.BLOCK_SIZE
    km.philox_normal_kernel[((numel + block - 1) // block,)](
        out, out if rng is None else rng, numel, seed_lo, seed_hi, off_lo, off_hi,
        HAS_RNG=rng is not None, BLOCK=block, num_warps=km.NUM_WARPS, **_OPTIONS,
    )


def philox4x32_10_raw(ctr: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Raw Philox4x32-10 blocks through the Triton helper (known-answer tests): ``ctr`` (n, 4) and ``key``
    (n, 2) int64 tensors holding uint32 words -> (n, 4) int64 output words."""
    km = _mods("philox4x32_10_raw")["philox"]
    ctr = ctr.to(torch.int64).reshape(-1, 4).contiguous()
    key = key.to(torch.int64).reshape(-1, 2).contiguous()
    if ctr.shape[0] != key.shape[0]:
        raise ValueError("ctr and key must hold the same number of blocks")
    n = ctr.shape[0]
    out = torch.empty((n, 4), dtype=torch.int64, device=ctr.device)
    if n:
        km.philox_raw_kernel[((n + 127) // 128,)](ctr, key, out, n, BLOCK=128, **_OPTIONS)
    return out


def fused_step_backward(grad_out, grad_w, x, m, coef, index, index_stride, row_stride, noise, seed, offset, rng,
                        threshold, m2, var, dx, dm, dm2, dnoise, dvar) -> None:
    """The backward of ``fused_step`` (pydiff/ops/fused_step_backward.py): writes dx, dm (dm2, dnoise, dvar)."""
    mods = _mods("fused_step_backward")
    kb = importlib.import_module(f"{_PACKAGE}.fused_step_backward")  # loaded from the same tree as the others
    shape = _launch_shape(x, coef, threshold, index, rng, noise, seed)
    if shape is None:
        return
    B, N = shape
    has_philox, seed_lo, seed_hi, off_lo, off_hi = _philox_words(mods, seed, offset, rng)
    write_dvar = dvar is not None and var is not None
    block = kb.BLOCK_SIZE
    grid = ((N + block - 1) // block, min(B, kb.MAX_GRID_Y))
    kb.fused_step_backward_kernel[grid](
        grad_out, x if grad_w is None else grad_w, x, m, x if m2 is None else m2, x if var is None else var,
        x if noise is None else noise, coef, coef if index is None else index, coef if rng is None else rng,
        coef if threshold is None else threshold,
        dx, dm, dx if dm2 is None else dm2, dx if dnoise is None else dnoise, dx if dvar is None else dvar,
        N, B, coef.shape[0],
        seed_lo, seed_hi, off_lo, off_hi,
        HAS_INDEX=index is not None, INDEX_STRIDE=int(index_stride), ROW_STRIDE=int(row_stride),
        HAS_GW=grad_w is not None, HAS_M2=m2 is not None, HAS_VAR=var is not None, HAS_NOISE=noise is not None,
        HAS_PHILOX=has_philox, HAS_RNG=rng is not None, HAS_THRESHOLD=threshold is not None,
        WRITE_DM2=dm2 is not None and m2 is not None, WRITE_DNOISE=dnoise is not None and noise is not None,
        WRITE_DVAR=write_dvar, NEED_Z=write_dvar and (noise is not None or has_philox),
        BLOCK=block, num_warps=kb.NUM_WARPS, **_OPTIONS,
    )


__all__ += ["fused_step_backward"]
