"""NVRTC through ctypes: compile the CUDA sources of ``csrc/`` at run time, with no GPU needed to compile.

Used by the ``cuda-jit`` backend (``cuda_jit.py``) to build the kernels of ``csrc/cuda/*.cu`` for the GPU at
hand, and by ``tests/native/test_nvrtc.py`` to compile every source to PTX for ``compute_80`` and
``compute_90`` on machines without a GPU.

Where things are found
* ``libnvrtc``: ``$PYDIFF_NVRTC`` (a file), then the ``nvidia-cuda-nvrtc-cu12`` / ``nvidia-cuda-nvrtc``
  wheels (``nvidia/cuda_nvrtc/lib``, ``nvidia/cu13/lib``), then ``$CUDA_HOME`` / ``$CUDA_PATH`` /
  ``/usr/local/cuda`` (``lib64``), then the loader's search path (``libnvrtc.so.13``, ``.so.12``, ``.so``).
* ``cuda_fp16.h`` / ``cuda_bf16.h``: NVRTC releases that carry them as builtin headers need nothing; the
  others get the first folder holding ``cuda_fp16.h`` among ``$PYDIFF_CUDA_INCLUDE``, the CUDA install the
  library came from (``<lib>/../include``), the ``nvidia-cuda-runtime-cu12`` wheel
  (``nvidia/cuda_runtime/include``), ``$CUDA_HOME`` / ``$CUDA_PATH`` / ``/usr/local/cuda`` (``include``).
* The pydiff sources: ``<pydiff>/csrc`` (an install: package data) or ``<pydiff>/../csrc`` (a checkout),
  chosen by path like the Triton kernels (``triton.py``).

Nothing here imports CuPy or touches a GPU.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NvrtcError", "NvrtcUnavailable", "library", "unavailable_reason", "version", "supported_archs",
           "source_dir", "cuda_include_dir", "headers_problem", "sources_hash", "compile_program", "Compiled", "BASE_OPTIONS"]

# The options of every compile: the nvcc build's (--fmad=false: every product and sum rounds separately,
# like the reference and the CPU kernels; C++17 for the shared headers).
BASE_OPTIONS = ("--std=c++17", "--fmad=false", "-default-device")


class NvrtcUnavailable(RuntimeError):
    """libnvrtc cannot be loaded here."""


class NvrtcError(RuntimeError):
    """A compile failed; the message carries NVRTC's log."""


def _wheel_dirs(*parts) -> list:
    """``nvidia/<parts>`` inside every installed copy of the ``nvidia`` namespace package."""
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p, *parts) for p in spec.submodule_search_locations]


def _cuda_homes() -> list:
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    return [Path(h) for h in homes if h]


def _library_candidates() -> list:
    env = os.environ.get("PYDIFF_NVRTC")
    if env:
        return [Path(env)]  # an explicit choice is not second-guessed
    names = ("libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so")
    cands = []
    for d in _wheel_dirs("cu13", "lib") + _wheel_dirs("cuda_nvrtc", "lib"):
        cands += [d / n for n in names]
    for h in _cuda_homes():
        cands += [h / "lib64" / n for n in names] + [h / "lib" / n for n in names]
    cands += list(names)
    found = ctypes.util.find_library("nvrtc")
    if found:
        cands.append(found)
    return cands


class _Lib:
    handle = None
    path: str | None = None
    error: str | None = None
    tried = False


def library():
    """The loaded libnvrtc (ctypes.CDLL); raises NvrtcUnavailable naming what was tried."""
    if not _Lib.tried:
        _Lib.tried = True
        errors = []
        for cand in _library_candidates():
            if isinstance(cand, Path) and not cand.is_file():
                continue
            try:
                lib = ctypes.CDLL(str(cand))
                lib.nvrtcVersion  # noqa: B018 -- a library without the symbol is not NVRTC
            except (OSError, AttributeError) as exc:
                errors.append(f"{cand}: {exc}")
                continue
            _Lib.handle, _Lib.path = lib, str(cand)
            _declare(lib)
            break
        else:
            _Lib.error = ("libnvrtc not found (pip install nvidia-cuda-nvrtc-cu12, or set PYDIFF_NVRTC to the "
                          "library file)" + (f"; tried: {'; '.join(errors)}" if errors else ""))
    if _Lib.handle is None:
        raise NvrtcUnavailable(_Lib.error)
    return _Lib.handle


def library_path() -> str | None:
    try:
        library()
    except NvrtcUnavailable:
        return None
    return _Lib.path


def unavailable_reason() -> str | None:
    """None when libnvrtc loads, else why not."""
    try:
        library()
    except NvrtcUnavailable as exc:
        return str(exc)
    return None


def _declare(lib):
    c_int_p = ctypes.POINTER(ctypes.c_int)
    prog_p = ctypes.POINTER(ctypes.c_void_p)
    sig = {
        "nvrtcVersion": [c_int_p, c_int_p],
        "nvrtcGetNumSupportedArchs": [c_int_p],
        "nvrtcGetSupportedArchs": [c_int_p],
        "nvrtcCreateProgram": [prog_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
                               ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p)],
        "nvrtcDestroyProgram": [prog_p],
        "nvrtcCompileProgram": [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)],
        "nvrtcAddNameExpression": [ctypes.c_void_p, ctypes.c_char_p],
        "nvrtcGetLoweredName": [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p)],
        "nvrtcGetProgramLogSize": [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)],
        "nvrtcGetProgramLog": [ctypes.c_void_p, ctypes.c_char_p],
        "nvrtcGetPTXSize": [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)],
        "nvrtcGetPTX": [ctypes.c_void_p, ctypes.c_char_p],
        "nvrtcGetCUBINSize": [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)],
        "nvrtcGetCUBIN": [ctypes.c_void_p, ctypes.c_char_p],
        "nvrtcGetErrorString": [ctypes.c_int],
    }
    for name, args in sig.items():
        fn = getattr(lib, name, None)
        if fn is None:
            continue
        fn.argtypes = args
        fn.restype = ctypes.c_char_p if name == "nvrtcGetErrorString" else ctypes.c_int


def _check(res: int, what: str):
    if res != 0:
        msg = library().nvrtcGetErrorString(res)
        raise NvrtcError(f"{what} failed: {msg.decode() if msg else res}")


def version() -> tuple:
    """(major, minor) of the loaded NVRTC."""
    lib = library()
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


def supported_archs() -> tuple:
    """The SM versions (80 = sm_80) this NVRTC can compile for."""
    lib = library()
    n = ctypes.c_int()
    _check(lib.nvrtcGetNumSupportedArchs(ctypes.byref(n)), "nvrtcGetNumSupportedArchs")
    arr = (ctypes.c_int * n.value)()
    _check(lib.nvrtcGetSupportedArchs(arr), "nvrtcGetSupportedArchs")
    return tuple(arr)


def source_dir() -> Path:
    """``csrc/`` of the tree the imported ``pydiff`` belongs to: inside it (install) or next to it (checkout)."""
    import pydiff

    pkg = Path(pydiff.__file__).resolve().parent
    for cand in (pkg / "csrc", pkg.parent / "csrc"):
        if (cand / "cuda" / "common.cuh").is_file() and (cand / "include" / "pydiff_math.h").is_file():
            return cand
    raise FileNotFoundError(f"the CUDA sources are neither in {pkg / 'csrc'} (install) nor in "
                            f"{pkg.parent / 'csrc'} (source checkout)")


def cuda_include_dir() -> Path | None:
    """A folder with ``cuda_fp16.h`` and ``cuda_bf16.h`` for NVRTC releases without them builtin, or None."""
    cands = []
    env = os.environ.get("PYDIFF_CUDA_INCLUDE")
    if env:
        cands.append(Path(env))
    lib = library_path()
    if lib and os.path.isabs(lib):
        # the toolkit the library belongs to (lib64/ or lib/ next to include/)
        cands.append(Path(lib).resolve().parent.parent / "include")
    cands += _wheel_dirs("cuda_runtime", "include") + _wheel_dirs("cu13", "include")
    cands += [h / "include" for h in _cuda_homes()]
    for c in cands:
        if (c / "cuda_fp16.h").is_file() and (c / "cuda_bf16.h").is_file():
            return c
    return None


_HEADERS: dict = {}


def headers_problem() -> str | None:
    """None when NVRTC can include cuda_fp16.h and cuda_bf16.h here (a folder found above, or builtin
    copies in this NVRTC release), else what to install. The builtin probe compiles once per process."""
    if cuda_include_dir() is not None:
        return None
    if "builtin" not in _HEADERS:
        try:
            compile_program("#include <cuda_fp16.h>\n#include <cuda_bf16.h>\n", "probe.cu", min(supported_archs()))
            _HEADERS["builtin"] = None
        except NvrtcError:
            _HEADERS["builtin"] = ("cuda_fp16.h / cuda_bf16.h not found and not builtin in NVRTC "
                                   f"{'.'.join(map(str, version()))}: pip install nvidia-cuda-runtime-cu12, "
                                   "or set CUDA_HOME or PYDIFF_CUDA_INCLUDE")
    return _HEADERS["builtin"]


def sources_hash(root: Path | None = None) -> str:
    """SHA-256 over every file NVRTC may read from ``csrc/`` (cuda/ and include/, names and contents)."""
    root = root or source_dir()
    h = hashlib.sha256()
    for sub in ("cuda", "include"):
        for f in sorted((root / sub).iterdir()):
            if f.suffix in (".cu", ".cuh", ".h") and f.is_file():
                h.update(f"{sub}/{f.name}\0".encode())
                h.update(f.read_bytes())
                h.update(b"\0")
    return h.hexdigest()


@dataclass
class Compiled:
    """One compiled program: PTX text or a CUBIN image, the lowered (mangled) name of each expression."""

    image: bytes
    kind: str           # "ptx" or "cubin"
    lowered: dict       # name expression -> mangled kernel name
    log: str


def _log(lib, prog) -> str:
    size = ctypes.c_size_t()
    if lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)) != 0 or size.value <= 1:
        return ""
    buf = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, buf)
    return buf.value.decode(errors="replace")


def compile_program(source: str, name: str, arch: int, *, kind: str = "ptx", name_expressions=(),
                    include_dirs=(), options=()) -> Compiled:
    """Compile CUDA ``source`` (file name ``name`` in messages) for SM version ``arch`` (e.g. 90).

    ``kind="ptx"`` targets ``compute_<arch>`` (no GPU needed, any arch NVRTC supports); ``kind="cubin"``
    targets ``sm_<arch>`` (SASS, loaded as it is). ``include_dirs`` are searched for ``#include``; the
    pydiff source folders and the CUDA header folder must be among them (``cuda_jit`` passes them).
    Raises NvrtcError with the compile log, ValueError for an arch NVRTC cannot target.
    """
    if kind not in ("ptx", "cubin"):
        raise ValueError(f"kind must be 'ptx' or 'cubin', got {kind!r}")
    lib = library()
    archs = supported_archs()
    if int(arch) not in archs:
        raise ValueError(f"NVRTC {'.'.join(map(str, version()))} cannot target sm_{arch} "
                         f"(it supports {', '.join(f'sm_{a}' for a in archs)})")
    opts = list(BASE_OPTIONS) + [f"--gpu-architecture={'compute' if kind == 'ptx' else 'sm'}_{int(arch)}"]
    opts += [f"--include-path={d}" for d in include_dirs] + list(options)
    prog = ctypes.c_void_p()
    _check(lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None),
           "nvrtcCreateProgram")
    try:
        for expr in name_expressions:
            _check(lib.nvrtcAddNameExpression(prog, expr.encode()), f"nvrtcAddNameExpression({expr})")
        c_opts = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        res = lib.nvrtcCompileProgram(prog, len(opts), c_opts)
        log = _log(lib, prog)
        if res != 0:
            msg = lib.nvrtcGetErrorString(res)
            raise NvrtcError(f"NVRTC could not compile {name} for {kind} sm_{int(arch)} "
                             f"({msg.decode() if msg else res}):\n{log}")
        lowered = {}
        for expr in name_expressions:
            out = ctypes.c_char_p()
            _check(lib.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(out)), f"nvrtcGetLoweredName({expr})")
            lowered[expr] = out.value.decode()
        size = ctypes.c_size_t()
        if kind == "ptx":
            _check(lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
            buf = ctypes.create_string_buffer(size.value)
            _check(lib.nvrtcGetPTX(prog, buf), "nvrtcGetPTX")
            image = buf.raw[: size.value].rstrip(b"\0")
        else:
            _check(lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize")
            buf = ctypes.create_string_buffer(size.value)
            _check(lib.nvrtcGetCUBIN(prog, buf), "nvrtcGetCUBIN")
            image = buf.raw[: size.value]
        return Compiled(image=image, kind=kind, lowered=lowered, log=log)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
