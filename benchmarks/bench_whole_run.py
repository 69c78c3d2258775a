"""Whole scheduler run, diffusers against pydiff's drop-in: ``set_timesteps`` plus every ``step`` of a run.

What a pipeline pays for the scheduler alone (the model is replaced by a fixed tensor, so only scheduler time is
measured): one ``set_timesteps(steps)`` and ``steps`` calls of ``step``, for DDIM (eta=0), DDPM (with a
generator), DPM-Solver++ 2M (multistep) and DPM-Solver++ 2S (singlestep), default configs, on the CPU::

    python -m benchmarks.bench_whole_run                 # table (from the repository root)
    python -m benchmarks.bench_whole_run --json          # machine-readable
    python -m benchmarks.bench_whole_run --shape 1x4x64x64 --steps 20 --repeats 30 --backend reference

``python -m`` from the root measures that checkout's ``pydiff``; ``python benchmarks/bench_whole_run.py``
measures whichever ``pydiff`` is installed. The header names the one measured.

Each figure is the median over ``--repeats`` whole runs, the two libraries interleaved run by run so that a
noisy neighbour slows both alike. Goal: pydiff's whole run >= 1.5x faster than diffusers' for every scheduler.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings

import torch

KINDS = ("DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler")


def _commit(where: str) -> str:
    """The commit of the checkout holding ``where`` (the measured pydiff)."""
    try:
        cmd = ["git", "-C", where, "describe", "--always", "--dirty", "--abbrev=7"]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def whole_run(sched, steps: int, model_output: torch.Tensor, x0: torch.Tensor, seed: int = 0) -> float:
    """Seconds for ``set_timesteps(steps)`` and one ``step`` per timestep (the same model output each time)."""
    gen = torch.Generator().manual_seed(seed)
    kw = {"generator": gen} if type(sched).__name__ == "DDPMScheduler" else {}
    start = time.perf_counter()
    sched.set_timesteps(steps)
    x = x0
    for t in sched.timesteps:
        x = sched.step(model_output, t, x, **kw).prev_sample
    return time.perf_counter() - start


def measure(shape=(1, 4, 64, 64), steps: int = 20, repeats: int = 30, warmup: int = 3, backend=None):
    import diffusers

    import pydiff.diffusers as pd

    x0 = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    m = 0.5 * torch.randn(shape, generator=torch.Generator().manual_seed(1))
    rows = []
    for kind in KINDS:
        scheds = {"diffusers": getattr(diffusers, kind)(), "pydiff": getattr(pd, kind)()}
        scheds["pydiff"].pydiff_backend = backend
        times = {name: [] for name in scheds}
        for rep in range(warmup + repeats):
            for name, s in scheds.items():
                dt = whole_run(s, steps, m, x0, seed=rep)
                if rep >= warmup:
                    times[name].append(dt)
        med = {name: statistics.median(v) for name, v in times.items()}
        rows.append({"scheduler": kind, "diffusers_ms": med["diffusers"] * 1e3, "pydiff_ms": med["pydiff"] * 1e3,
                     "speedup": med["diffusers"] / med["pydiff"]})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="1x4x64x64")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--backend", default=None, help="force pydiff's op backend (default: automatic)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    shape = tuple(int(s) for s in args.shape.lower().split("x"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = measure(shape, args.steps, args.repeats, backend=args.backend)
    import diffusers

    from pydiff.ops import resolve_backend

    backend = resolve_backend(args.backend, torch.empty(1))

    import pydiff

    where = os.path.dirname(os.path.abspath(pydiff.__file__))
    meta = {"machine": _machine(), "pydiff": where, "python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "commit": _commit(where), "shape": list(shape), "steps": args.steps,
            "repeats": args.repeats, "dtype": "float32", "device": "cpu", "pydiff_backend": backend}
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}, indent=2))
        return 0
    print(f"machine: {meta['machine']}")
    print(f"pydiff: {meta['pydiff']}")
    print(f"torch {meta['torch']}, diffusers {meta['diffusers']}, python {meta['python']}, commit {meta['commit']}")
    print(f"whole run: set_timesteps({args.steps}) + {args.steps} steps, {args.shape} fp32 cpu, "
          f"median of {args.repeats}; pydiff's ops on backend {backend!r}")
    print(f"{'scheduler':<30} {'diffusers ms':>13} {'pydiff ms':>10} {'speedup':>8}")
    for r in rows:
        print(f"{r['scheduler']:<30} {r['diffusers_ms']:>13.2f} {r['pydiff_ms']:>10.2f} {r['speedup']:>7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
