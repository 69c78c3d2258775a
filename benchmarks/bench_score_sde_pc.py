"""A VE predictor-corrector loop (N steps, one Langevin corrector step each): diffusers' scheduler pair against
pydiff's drop-in, and score_sde's ``get_pc_sampler`` with reference noise against in-kernel Philox noise.

The model is trivial (a fixed model output for the drop-ins, the exact score of Gaussian data for
``get_pc_sampler``) so that the
figures are the sampler's own cost. Per row: the median wall time of ``--repeats`` whole loops and the time per
predictor-corrector step. Every pydiff loop is first checked against its baseline (the drop-ins against
diffusers with the same generator; Philox loops, which draw other numbers, only for finiteness)::

    python -m benchmarks.bench_score_sde_pc                              # from the repository root
    python -m benchmarks.bench_score_sde_pc --shape 8x3x64x64 --steps 1000 --threads 2 --json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from pydiff.ops import resolve_backend


def _median_time(fn, repeats):
    fn()  # warm-up (tables, kernels, allocator)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def dropin_loops(shape, steps, backend):
    import diffusers

    from pydiff import diffusers as pd

    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(shape, generator=gen)
    m = torch.randn(shape, generator=gen)

    def make(sched):
        def run():
            sched.set_timesteps(steps)
            sched.set_sigmas(steps)
            g = torch.Generator().manual_seed(1)
            x = x0
            for t in sched.timesteps:
                x = sched.step_correct(m, x, generator=g).prev_sample
                x = sched.step_pred(m, t, x, generator=g).prev_sample
            return x
        return run

    ref = make(diffusers.ScoreSdeVeScheduler())
    ours = pd.ScoreSdeVeScheduler()
    ours.pydiff_backend = backend
    fused = make(ours)
    ph = pd.ScoreSdeVeScheduler()
    ph.pydiff_backend, ph.pydiff_noise = backend, "philox"
    philox = make(ph)
    a, b = ref().double(), fused().double()
    err = ((a - b).norm() / a.norm()).item()
    if not err < 1e-4:
        raise RuntimeError(f"the drop-in loop disagrees with diffusers (rel L2 {err:.2e})")
    if not torch.isfinite(philox()).all():
        raise RuntimeError("the Philox drop-in loop is not finite")
    return {"diffusers ScoreSdeVeScheduler": ref, "pydiff drop-in (diffusers' noise)": fused,
            "pydiff drop-in (philox)": philox}


def pc_sampler_loops(shape, steps, backend):
    from pydiff.score_sde import sampling, sde_lib

    sde = sde_lib.VESDE(N=steps)

    def model(x, labels):
        # a trivial score model: the exact score of data N(0.3, 0.8^2) under VE noise of std sigma = labels
        # (score_sde's continuous VE models take sigma as their label and output the score)
        return (0.3 - x) / (0.64 + labels.view(-1, *([1] * (x.ndim - 1))) ** 2)

    def make(source):
        fn = sampling.get_pc_sampler(sde, shape, "reverse_diffusion", "langevin", lambda x: x, snr=0.16,
                                     n_steps=1, continuous=True, device="cpu", noise_source=source,
                                     backend=backend)

        def run():
            torch.manual_seed(0)
            return fn(model)[0]
        return run

    out = {"get_pc_sampler noise_source='torch'": make("torch"), "get_pc_sampler noise_source='philox'":
           make("philox")}
    for name, fn in out.items():
        if not torch.isfinite(fn()).all():
            raise RuntimeError(f"{name} is not finite")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="8x3x64x64")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--backend", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split("x"))
    torch.set_num_threads(args.threads)
    backend = args.backend or resolve_backend(None, torch.empty(1))
    rows = []
    for group, calls in (("drop-in pair", dropin_loops(shape, args.steps, backend)),
                         ("get_pc_sampler", pc_sampler_loops(shape, args.steps, backend))):
        base = None
        for name, fn in calls.items():
            sec = _median_time(fn, args.repeats)
            base = sec if base is None else base
            rows.append(dict(group=group, impl=name, backend=backend, shape=args.shape, steps=args.steps,
                             threads=args.threads, seconds=sec, us_per_step=sec / args.steps * 1e6,
                             speedup=base / sec))
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"VE PC loop, {args.steps} steps x (1 corrector + 1 predictor), {args.shape} fp32, backend {backend}, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    for r in rows:
        print(f"{r['impl']:40} {r['seconds']:8.3f} s {r['us_per_step']:9.1f} us/step {r['speedup']:6.2f}x")


if __name__ == "__main__":
    main()
