"""The probability-flow ODE sampler, scipy's ``solve_ivp`` against the device-resident RK45: NFE and wall time.

A small Gaussian problem on the CPU: data N(0.3, 0.8^2) with its exact score (``pydiff.testing.score_sde``'s
``gaussian_model``, ``wiggle = 0``), VP / sub-VP / VE (N = 1000, continuous), one fixed latent per SDE, both
solvers at the same ``rtol = atol``. Reported per row: NFE, accepted/rejected steps, the median wall time of
``--repeats`` runs (the two solvers interleaved run by run), and the relative L2 error against the exact flow
``x_eps = m mu + (sd_eps/sd_T)(x_T - m_T mu)`` (tests/score_sde/test_ode.py derives it)::

    python -m benchmarks.bench_score_sde_ode                       # from the repository root
    python -m benchmarks.bench_score_sde_ode --shape 16x3x32x32 --tol 1e-5 --repeats 5 --json

``python -m`` from the root measures that checkout's ``pydiff``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from pydiff.ops import resolve_backend
from pydiff.score_sde import sampling, sde_lib
from pydiff.testing import score_sde as oracle

SDES = {"vp": sde_lib.VPSDE, "subvp": sde_lib.subVPSDE, "ve": sde_lib.VESDE}
MU, S = 0.3, 0.8


def exact_flow(osde, z, t_end):
    def m_sd(t):
        t = torch.tensor([t], dtype=torch.float64)
        m = torch.ones(1, dtype=torch.float64) if osde.kind == "ve" else torch.exp(osde.log_mean(t))
        return m.item(), torch.sqrt(m * m * S * S + osde.std(t) ** 2).item()

    (mT, sdT), (m0, sd0) = m_sd(osde.T), m_sd(t_end)
    return m0 * MU + (sd0 / sdT) * (z.double() - mT * MU)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="8x3x8x8", help="batch shape, e.g. 8x3x8x8")
    ap.add_argument("--tol", type=float, nargs="+", default=[1e-3, 1e-5], help="rtol = atol values")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backend", default=None)
    # one intra-op thread by default: on a 2-core machine with other load (load average ~7), two OpenMP
    # threads made each run 10-40x slower and erratic (VE, 98 NFE, 8x3x8x8: rk45 0.7-2.4 s against 45 ms)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split("x"))
    torch.set_num_threads(args.threads)
    rows = []
    for kind, cls in SDES.items():
        sde = cls(N=1000)
        osde = oracle.OracleSDE(kind, N=1000)
        model = oracle.gaussian_model(osde, True, mu=MU, s=S, wiggle=0.0)
        torch.manual_seed(0)
        z = sde.prior_sampling(shape)
        exact = exact_flow(osde, z, 1e-3)
        for tol in args.tol:
            samplers = {s: sampling.get_ode_sampler(sde, shape, lambda x: x, rtol=tol, atol=tol, device="cpu",
                                                    solver=s, backend=args.backend) for s in ("scipy", "rk45")}
            times = {s: [] for s in samplers}
            out = {}
            for fn in samplers.values():
                fn(model, z=z)  # warm-up (imports, first calls)
            for _ in range(args.repeats):
                for s, fn in samplers.items():
                    t0 = time.perf_counter()
                    x, _ = fn(model, z=z)
                    times[s].append(time.perf_counter() - t0)
                    out[s] = (x, fn.last_run)
            for s in samplers:
                x, run = out[s]
                err = ((x.double() - exact).norm() / exact.norm()).item()
                rows.append(dict(sde=kind, tol=tol, solver=s, nfe=run.nfe, accepted=run.n_accepted,
                                 rejected=run.n_rejected, ms=1e3 * statistics.median(times[s]), rel_err=err))
    if args.json:
        print(json.dumps(dict(shape=shape, backend=resolve_backend(args.backend, z), rows=rows), indent=1))
        return
    print(f"shape {'x'.join(map(str, shape))}, backend {resolve_backend(args.backend, z)}, "
          f"median of {args.repeats} runs, threads {torch.get_num_threads()}")
    print(f"{'sde':6s} {'tol':>6s} {'solver':6s} {'nfe':>5s} {'acc':>4s} {'rej':>4s} {'ms':>9s} {'ms/nfe':>7s} "
          f"{'rel err':>8s}")
    for r in rows:
        print(f"{r['sde']:6s} {r['tol']:6.0e} {r['solver']:6s} {r['nfe']:5d} {r['accepted']:4d} {r['rejected']:4d} "
              f"{r['ms']:9.2f} {r['ms'] / r['nfe']:7.3f} {r['rel_err']:8.1e}")


if __name__ == "__main__":
    main()
