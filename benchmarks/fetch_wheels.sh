#!/usr/bin/env bash
# For a GPU machine without network access: run this on a machine that has one, then copy .whl/ along with
# the checkout. It puts the diffusers wheel (pure Python, for Python 3.12) and the cuda-jit backend's wheels
# (CuPy, NVRTC, the CUDA runtime headers) into .whl/ (ignored by git); gpu_check.sh installs them from there. The GPU machine needs torch, triton, numpy, cmake, ninja, pybind11, nvcc.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  -d .whl diffusers==0.42.1 importlib_metadata
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  -d .whl cupy-cuda12x nvidia-cuda-nvrtc-cu12 nvidia-cuda-runtime-cu12 fastrlock
ls -la .whl
