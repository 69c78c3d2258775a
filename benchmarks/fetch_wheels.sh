#!/usr/bin/env bash
# Run HERE (not on the device) before a GPU session: the device image has torch, triton, numpy,
# huggingface-hub, httpx, safetensors, pillow, regex, requests... but not diffusers, and it has no network.
# This puts the diffusers wheel (pure Python) into .whl/ (ignored by git); gpu_check.sh installs it there.
# Then:  device run  command="bash benchmarks/gpu_check.sh"  carry=[".whl"]  timeout_s=480  ; then give_back.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  -d .whl diffusers==0.42.1 importlib_metadata
ls -la .whl
