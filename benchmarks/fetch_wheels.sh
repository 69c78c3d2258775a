#!/usr/bin/env bash
# For a GPU machine without network access: run this on a machine that has one, then copy .whl/ along with
# the checkout. It puts the diffusers wheel (pure Python, for Python 3.12) into .whl/ (ignored by git);
# gpu_check.sh installs it from there. The GPU machine needs torch, triton, numpy, cmake, ninja, pybind11, nvcc.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  -d .whl diffusers==0.42.1 importlib_metadata
ls -la .whl
