"""Build script: setuptools drives CMake (CMakeLists.txt) for the native modules.

* ``pydiff._C``       C++/OpenMP kernels (csrc/cpu, csrc/bindings) -- always built.
* ``pydiff._C_cuda``  CUDA kernels (csrc/cuda) -- see PYDIFF_BUILD_CUDA.

Environment switches:
  PYDIFF_BUILD_CUDA   auto (default): build _C_cuda when nvcc is found; 1: required (fail without nvcc);
                      0: skip.
  PYDIFF_CUDA_ARCHS   CMake CUDA_ARCHITECTURES list, default "80;90" (Ampere A100, Hopper H100/H200).
  PYDIFF_NATIVE_ARCH  1: compile the CPU kernels with -march=native only, no run-time ISA dispatch (local
                      builds only, not wheels). The default build compiles the element loops for baseline
                      x86-64, AVX2 and AVX-512 and picks one at import (PYDIFF_CPU_ISA forces a level).
  PYDIFF_BUILD_TYPE   CMake build type, default Release.
  CMAKE_BUILD_PARALLEL_LEVEL  parallel compile jobs (default: number of CPUs).
  CUDACXX / CUDA_HOME  where to look for nvcc (else PATH, then /usr/local/cuda/bin).

Metadata lives in pyproject.toml; packages (incl. the top-level ``kernels/`` folder installed as
``pydiff.kernels``) are declared here. The CUDA sources (``csrc/cuda``, ``csrc/include``) are also installed as
package data under ``pydiff/csrc``: the ``cuda-jit`` backend compiles them at run time with NVRTC.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent

_TRUE = {"1", "on", "yes", "true"}
_FALSE = {"0", "off", "no", "false"}


def _env_flag(name: str, default: str = "0") -> bool:
    v = os.environ.get(name, default).strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE or v == "":
        return False
    raise ValueError(f"{name} must be 0 or 1, got {v!r}")


def _cuda_mode() -> str:
    v = os.environ.get("PYDIFF_BUILD_CUDA", "auto").strip().lower() or "auto"
    if v == "auto":
        return "auto"
    if v in _TRUE:
        return "1"
    if v in _FALSE:
        return "0"
    raise ValueError(f"PYDIFF_BUILD_CUDA must be auto, 0 or 1, got {v!r}")


def _find_nvcc() -> str | None:
    cands = [os.environ.get("CUDACXX"), shutil.which("nvcc")]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            cands.append(os.path.join(home, "bin", "nvcc"))
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


class CMakeExtension(Extension):
    def __init__(self, name: str, target: str):
        super().__init__(name, sources=[])
        self.target = target


class CMakeBuild(build_ext):
    """Configure CMake once per build_ext run, then build one CMake target per extension."""

    def run(self):
        mode = _cuda_mode()
        nvcc = _find_nvcc() if mode != "0" else None
        if mode == "1" and nvcc is None:
            raise RuntimeError("PYDIFF_BUILD_CUDA=1 but nvcc was not found (set CUDACXX or CUDA_HOME, or PATH)")
        want_cuda = nvcc is not None and any(e.target == "_C_cuda" for e in self.extensions)
        self._configured = False
        if self.extensions:
            ok = self._configure(want_cuda, nvcc)
            if not ok and want_cuda and mode == "auto":
                print("pydiff: CUDA configure failed; building the CPU module only (PYDIFF_BUILD_CUDA=auto)",
                      file=sys.stderr)
                want_cuda = False
                ok = self._configure(False, None)
            if not ok:
                raise RuntimeError("pydiff: CMake configure failed (see the output above)")
        if not want_cuda:  # drop _C_cuda from this build's outputs
            self.extensions = [e for e in self.extensions if getattr(e, "target", None) != "_C_cuda"]
            if self.distribution.ext_modules:
                self.distribution.ext_modules = [e for e in self.distribution.ext_modules
                                                 if getattr(e, "target", None) != "_C_cuda"]
        super().run()

    def _configure(self, cuda: bool, nvcc: str | None) -> bool:
        import pybind11

        # All modules go to the directory of pydiff._C's output in build_lib. setuptools' build_ext.run
        # builds with inplace=0 and copies to the source tree afterwards for in-place/editable builds.
        old_inplace, self.inplace = self.inplace, 0
        try:
            extdir = Path(self.get_ext_fullpath("pydiff._C")).parent.resolve()
        finally:
            self.inplace = old_inplace
        self._build_dir = Path(self.build_temp).resolve() / "cmake"
        if self._build_dir.exists() and (self._build_dir / "CMakeCache.txt").exists():
            # a stale cache from another CUDA setting or source dir confuses CMake: start clean
            cache = (self._build_dir / "CMakeCache.txt").read_text(errors="ignore")
            if f"PYDIFF_BUILD_CUDA:BOOL={'ON' if cuda else 'OFF'}" not in cache or str(ROOT) not in cache:
                shutil.rmtree(self._build_dir)
        self._build_dir.mkdir(parents=True, exist_ok=True)
        build_type = os.environ.get("PYDIFF_BUILD_TYPE", "Debug" if self.debug else "Release")
        args = [
            "cmake", str(ROOT),
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DPYDIFF_OUTPUT_DIR={extdir}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DPYTHON_EXECUTABLE={sys.executable}",
            "-DPYBIND11_FINDPYTHON=ON",
            f"-DPYDIFF_NATIVE_ARCH={'ON' if _env_flag('PYDIFF_NATIVE_ARCH') else 'OFF'}",
            f"-DPYDIFF_BUILD_CUDA={'ON' if cuda else 'OFF'}",
        ]
        if cuda:
            args += [f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DPYDIFF_CUDA_ARCHS={os.environ.get('PYDIFF_CUDA_ARCHS', '80;90')}"]
        if "CMAKE_GENERATOR" not in os.environ and shutil.which("ninja") and not (self._build_dir / "Makefile").exists():
            args += ["-G", "Ninja"]
        print("pydiff: " + " ".join(args), flush=True)
        t0 = time.time()
        res = subprocess.run(args, cwd=self._build_dir)
        print(f"pydiff: CMake configure took {time.time() - t0:.1f}s", flush=True)
        self._configured = res.returncode == 0
        return self._configured

    def build_extension(self, ext):
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 1)
        t0 = time.time()
        subprocess.run(["cmake", "--build", ".", "--target", ext.target, "-j", jobs], cwd=self._build_dir, check=True)
        print(f"pydiff: built {ext.name} in {time.time() - t0:.1f}s", flush=True)
        # CMake wrote into the directory of pydiff._C; for in-place builds that is the source tree
        built = Path(self.get_ext_fullpath("pydiff._C")).parent / Path(self.get_ext_fullpath(ext.name)).name
        target = Path(self.get_ext_fullpath(ext.name))
        if built.resolve() != target.resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(built, target)


def _packages():
    pkgs = ["pydiff"] + [f"pydiff.{p}" for p in find_packages(str(ROOT / "pydiff"))]
    pkgs += ["pydiff.kernels"] + [f"pydiff.kernels.{p}" for p in find_packages(str(ROOT / "kernels"))]
    return pkgs + ["pydiff.csrc"]


# the sources NVRTC reads (pydiff/ops/backends/_nvrtc.py finds them at <pydiff>/csrc in an install)
_CSRC_DATA = ["cuda/*.cu", "cuda/*.cuh", "cuda/*.h", "include/*.h"]


_EXTS = [CMakeExtension("pydiff._C", "_C")]
if _cuda_mode() != "0":
    _EXTS.append(CMakeExtension("pydiff._C_cuda", "_C_cuda"))

setup(
    packages=_packages(),
    package_dir={"pydiff.kernels": "kernels", "pydiff.csrc": "csrc"},
    package_data={"pydiff.csrc": _CSRC_DATA},
    ext_modules=_EXTS,
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
