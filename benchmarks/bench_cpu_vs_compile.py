"""The fused DDIM step on the cpu backend vs a ``torch.compile``d plain-torch DDIM update, CPU.

Both produce the same two tensors from ``x`` and the model output ``eps`` (DDIM, Song et al.,
arXiv:2010.02502, eq. 12)::

    x0   = (x - sb*eps)/sa                      (w_out of the fused step: P = 1, Q = -sb, S = 1/sa)
    prev = sap*x0 + d*eps [+ std*z]             (out: B0 = sap, D = d, C = std)

with no noise, a given noise tensor ``z`` (both read it), and Philox (the fused step draws ``z`` in-kernel
from (seed, offset); the compiled update still reads a stored ``z``). Every ISA level this CPU runs is
timed. ``copy_us`` is a floor measured in the same run: ``out.copy_(x); w.copy_(eps)`` with torch, which
moves the same bytes as the no-noise step (read two tensors, write two) and does no arithmetic; a step
near it is bound by memory, not by its arithmetic. Plain script:

    python benchmarks/bench_cpu_vs_compile.py [--threads 2] [--shape 8 4 128 128] [--clip 1.0] [--sweeps 3]
                                              [--json out.json]

Each entry is the median (``--stat min``: the minimum) over ``--rounds`` of the mean time of ``--inner``
back-to-back calls, in microseconds; with ``--sweeps S`` the whole table is measured S times, one sweep after
the other, and each entry is the same statistic over its S values (a burst of other work on a shared machine
then has to hit one entry in every sweep to show). ``vs_fp32`` is the default level's fused time over the
fused float32 time with the same noise (the half types' goal: no slower than float32).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import sys

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # time this checkout's pydiff (and its in-place build), not an installed one

from pydiff.ops.backends import cpu as cpu_backend  # noqa: E402
from pydiff.ops.columns import coef_row  # noqa: E402


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        return "unknown"


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _has_cpu_flag(flag: str) -> bool:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return flag in line.split()
    except OSError:
        pass
    return False


STAT = {"median": statistics.median, "min": min}


def _time(fn, rounds: int, inner: int, stat: str) -> float:
    for _ in range(3):
        fn()
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return STAT[stat](samples) * 1e6


def ddim_torch(x, eps, sa, sb, sap, d, clip):
    x0 = (x - sb * eps) / sa
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
    return sap * x0 + d * eps, x0


def ddim_torch_noise(x, eps, z, sa, sb, sap, d, std, clip):
    x0 = (x - sb * eps) / sa
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
    return sap * x0 + d * eps + std * z, x0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", type=int, nargs="+", default=[8, 4, 128, 128])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float16", "bfloat16"])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--inner", type=int, default=20)
    ap.add_argument("--stat", choices=sorted(STAT), default="median",
                    help="statistic over rounds; 'min' is the robust one on a machine shared with other jobs "
                         "(an OpenMP barrier waiting for a descheduled thread costs a whole time slice)")
    ap.add_argument("--clip", type=float, default=None,
                    help="clip x0 to [-CLIP, CLIP] on both sides (diffusers' clip_sample); default: no clip "
                         "(CLIP = +inf in the row, which the kernels recognise and skip)")
    ap.add_argument("--sweeps", type=int, default=1, help="measure the whole table this many times (see above)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if not cpu_backend.available():
        raise SystemExit(f"the cpu backend is not available: {cpu_backend.unavailable_reason()}")
    C = cpu_backend._C
    torch.set_num_threads(args.threads)
    shape = tuple(args.shape)
    # a mid-trajectory DDIM step (alpha_bar 0.5 -> 0.6, eta = 1)
    a_t, a_prev = 0.5, 0.6
    sa, sb, sap = a_t ** 0.5, (1 - a_t) ** 0.5, a_prev ** 0.5
    std = ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
    d = (1 - a_prev - std ** 2) ** 0.5
    clip = args.clip
    if clip is not None and not clip > 0:
        raise SystemExit(f"--clip must be a positive number, got {clip}")
    row = coef_row(P=1.0, Q=-sb, S=1.0 / sa, B0=sap, D=d, C=std, **({} if clip is None else {"CLIP": clip}))
    compiled = torch.compile(ddim_torch, dynamic=False)
    compiled_noise = torch.compile(ddim_torch_noise, dynamic=False)
    isas = list(C.supported_isas())
    if args.sweeps < 1:
        raise SystemExit(f"--sweeps must be >= 1, got {args.sweeps}")
    gen = torch.Generator().manual_seed(0)
    inputs = {}
    for dt_name in args.dtypes:
        dt = getattr(torch, dt_name)
        x = torch.randn(shape, generator=gen).to(dt)
        eps = torch.randn(shape, generator=gen).to(dt)
        z = torch.randn(shape, generator=gen).to(dt)
        coef = torch.tensor(row, dtype=torch.float64 if dt == torch.float64 else torch.float32).reshape(1, -1)
        inputs[dt_name] = (x, eps, z, coef)

    def sweep():
        results = []
        for dt_name in args.dtypes:
            x, eps, z, coef = inputs[dt_name]
            out, w = torch.empty_like(x), torch.empty_like(x)

            def copy_floor():
                out.copy_(x)
                w.copy_(eps)

            t_copy = _time(copy_floor, args.rounds, args.inner, args.stat)
            for noise in ("none", "tensor", "philox"):
                if noise == "none":
                    ref = lambda: compiled(x, eps, sa, sb, sap, d, clip)  # noqa: E731
                else:
                    ref = lambda: compiled_noise(x, eps, z, sa, sb, sap, d, std, clip)  # noqa: E731
                entry = {"dtype": dt_name, "noise": noise, "copy_us": t_copy,
                         "compiled_us": _time(ref, args.rounds, args.inner, args.stat)}
                for isa in isas:
                    C.set_isa(isa)
                    nz = z if noise == "tensor" else None
                    seed = 1234 if noise == "philox" else None
                    fused = lambda: cpu_backend.fused_step(  # noqa: E731
                        x, eps, coef, None, 0, 0, out, w, (), nz, seed, 7, None, None, None, None)
                    entry[f"fused_{isa}_us"] = _time(fused, args.rounds, args.inner, args.stat)
                C.set_isa("")
                results.append(entry)
        return results

    sweeps = [sweep() for _ in range(args.sweeps)]
    results = []
    for entries in zip(*sweeps):
        e = dict(entries[0])
        for key in e:
            if key.endswith("_us"):
                e[key] = round(STAT[args.stat]([s[key] for s in entries]), 1)
        for isa in isas:
            e[f"speedup_{isa}"] = round(e["compiled_us"] / e[f"fused_{isa}_us"], 2)
        results.append(e)
    default = f"fused_{C.isa()}_us"  # the level the kernels run by default (PYDIFF_CPU_ISA may lower it)
    fp32 = {e["noise"]: e[default] for e in results if e["dtype"] == "float32"}
    for e in results:
        e["vs_fp32"] = round(e[default] / fp32[e["noise"]], 2) if e["noise"] in fp32 else None
    meta = {
        "machine": _cpu_name(), "threads": args.threads, "torch": torch.__version__, "commit": _commit(),
        "shape": list(shape), "clip": clip, "build": C.build_info(), "stat": args.stat, "rounds": args.rounds,
        "inner": args.inner, "sweeps": args.sweeps,
        # the avx512 level's bf16 stores use vcvtneps2bf16 where the CPU has AVX512-BF16, unless
        # PYDIFF_CPU_AVX512BF16=0 keeps the integer rounding
        "avx512bf16": _has_cpu_flag("avx512_bf16") and os.environ.get("PYDIFF_CPU_AVX512BF16") != "0",
    }
    print(f"machine: {meta['machine']}  threads: {args.threads}  torch {meta['torch']}  commit {meta['commit']}  "
          f"shape {shape}  clip {clip}  {args.stat} of {args.rounds} rounds x {args.inner} calls, "
          f"{args.sweeps} sweep(s)  "
          f"avx512bf16 {meta['avx512bf16']}")
    cols = (["dtype", "noise", "copy_us", "compiled_us"] + [f"fused_{i}_us" for i in isas]
            + [f"speedup_{i}" for i in isas] + ["vs_fp32"])
    print(" ".join(f"{c:>16}" for c in cols))
    for e in results:
        print(" ".join(f"{str(e[c]):>16}" for c in cols))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
