#!/usr/bin/env bash
# The GPU check in one script: build the extension (CUDA included), run the GPU tests, time the steps, and
# print a short table last. Run it on a CUDA machine from the repo root:
#   bash benchmarks/gpu_check.sh   (without network access there: run benchmarks/fetch_wheels.sh elsewhere
#                                   first and bring .whl/ along; see that script)
# Everything it prints also lands in $OUT (or benchmarks/out/) as gpu_check.log and JSON files.
# STAGES="build tests bench" (the default) selects what runs, so that a time-limited machine can take it in two
# calls (e.g. STAGES="build tests", then STAGES="bench" on the same, still built, checkout).
set -uo pipefail
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
log="$OUT/gpu_check.log"
exec > >(tee "$log") 2>&1
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
STAGES=${STAGES:-build tests bench}
want() { case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
if want build; then
echo "== build"
t0=$(date +%s)
PYDIFF_BUILD_CUDA=1 PYDIFF_CUDA_ARCHS=90 python3 -m pip install -q --no-build-isolation --no-deps -e . || { echo "BUILD FAILED"; exit 1; }
echo "build took $(( $(date +%s) - t0 )) s"
fi
if want tests; then
echo "== GPU tests (gpu-marked: cuda backend, no-sync loops, graph replay)"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests -m gpu 2>&1 | tail -15
echo "== cuda-jit (the csrc/cuda kernels compiled by NVRTC, launched by CuPy): $(python3 -c 'from pydiff.ops import backends as r; print(r.unavailable_reason("cuda-jit") or "available")')"
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/native/test_nvrtc.py tests/ops/test_cuda_jit.py 2>&1 | tail -15
echo "== triton, cuda and cuda-jit backends against the reference, drop-ins on each backend"
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/ops tests/kernels tests/native \
  tests/diffusers/test_diffusers_parity.py tests/diffusers/test_dpmsolver_dropins.py \
  tests/dpm_solver/test_dpm_solver_adaptive_fp32.py -k "triton or cuda" 2>&1 | tail -15
fi
if want bench; then
echo "== step latency (eager, host time included)"
python3 -m pydiff bench --device cuda --dtype fp16 --shape 1x4x64x64 --json "$OUT/step_fp16.json" --min-time 0.5
echo "== bandwidth"
python3 -m pydiff bench --device cuda --dtype fp32 --shape 32x3x512x512 --bandwidth --json "$OUT/bandwidth.json"
echo "== score-SDE PC step from a CUDA graph (goal <= 6 us at 1x3x64x64; corrector <= 1.3x a fused_step)"
for b in cuda triton; do
  python3 -m benchmarks.bench_pc_graph --shape 1x3x64x64 --backend $b --json > "$OUT/pc_graph_$b.json" \
    && python3 -c "import json,sys; d=json.load(open(sys.argv[1])); [print(r['backend'], r['what'], round(r['us_per_replay'],2)) for r in d['rows']]; print('ratio', round(d['corrector_over_fused_step'],2))" "$OUT/pc_graph_$b.json"
done

fi
if want bench; then
echo "== summary"
python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else None
bw = load("bandwidth.json") or []
for r in bw:
    print(f"bandwidth  {r['impl']:28} {r['median_us']:9.1f} us {r['gb_per_s']:8.1f} GB/s {100 * r['fraction_of_copy']:6.1f}% of copy")
for b in ("cuda", "triton"):
    d = load(f"pc_graph_{b}.json")
    if d:
        for r in d["rows"]:
            print(f"pc graph   {r['backend']:8} {r['what']:28} {r['us_per_replay']:8.2f} us")
        print(f"pc graph   {b:8} corrector / fused_step     {d['corrector_over_fused_step']:8.2f}")
PY
fi
