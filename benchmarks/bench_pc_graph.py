"""GPU: one score-SDE predictor-corrector step replayed from a CUDA graph, and the Langevin corrector (both of its
passes) against one fused_step of the same size.

The step is what ``get_pc_sampler`` issues per step with in-kernel Philox noise and a fixed model output:
``langevin_step`` (norms, then the update) and the predictor's ``fused_step``, both reading the Philox key and
offset from a device tensor so that a replayed graph draws new noise once the offset is advanced. Replays run
back to back, ``--replays`` per timing, one synchronisation per timing; the median of ``--repeats`` timings per
replay is reported::

    python -m benchmarks.bench_pc_graph                          # needs a CUDA device
    python -m benchmarks.bench_pc_graph --shape 1x3x64x64 --backend cuda --json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from pydiff.ops import coef_row, fused_step, langevin_step


def _graph(fn):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):  # warm-up outside the capture (kernels compiled, allocator primed)
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


def _replay_us(g, replays, repeats):
    ts = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(replays):
            g.replay()
        torch.cuda.synchronize()
        ts.append((time.perf_counter() - t0) / replays * 1e6)
    return statistics.median(ts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="1x3x64x64")
    ap.add_argument("--backend", default=None)
    ap.add_argument("--replays", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_pc_graph needs a CUDA device")
    shape = tuple(int(v) for v in args.shape.split("x"))
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(shape, generator=gen, device=dev)
    m = -x.clone()
    rng = torch.tensor([7, 0], dtype=torch.int64, device=dev)
    corr = torch.tensor([2 * 0.16 ** 2, 1.0], device=dev)
    pred = torch.tensor(coef_row(P=1.0, Q=0.01, B0=1.0, C=0.1), dtype=torch.float32, device=dev)
    b = args.backend

    def corrector():
        langevin_step(x, m, corr, out=x, rng=rng, offset=0, backend=b)

    def predictor():
        fused_step(x, m, pred, out=x, rng=rng, offset=1, backend=b)

    def pc_step():
        corrector()
        predictor()

    rows = []
    for name, fn in (("pc step (langevin_step + fused_step)", pc_step), ("langevin_step (both passes)", corrector),
                     ("fused_step (philox)", predictor)):
        us = _replay_us(_graph(fn), args.replays, args.repeats)
        rows.append(dict(what=name, shape=args.shape, backend=b or "auto", us_per_replay=us,
                         device=torch.cuda.get_device_name(), torch=torch.__version__))
    ratio = rows[1]["us_per_replay"] / rows[2]["us_per_replay"]
    if args.json:
        print(json.dumps({"rows": rows, "corrector_over_fused_step": ratio}, indent=1))
        return
    for r in rows:
        print(f"{r['what']:40} {r['us_per_replay']:8.2f} us per replay  ({r['shape']}, {r['backend']})")
    print(f"corrector / fused_step: {ratio:.2f}x   (goals: pc step <= 6 us at 1x3x64x64; ratio <= 1.3)")


if __name__ == "__main__":
    main()
