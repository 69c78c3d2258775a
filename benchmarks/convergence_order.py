"""Measured convergence order of pydiff.dpm_solver on the closed-form Gaussian oracle.

Data ``x0 ~ N(mu, s^2)`` elementwise (per-element mu in [-1, 1], s in [0.1, 1]); the model is the exact noise
prediction; the error is the relative L2 distance at ``t_end = 1e-3`` to the exact probability-flow ODE
solution from the same ``x_T`` (``(x_t - alpha_t mu)/sqrt(alpha_t^2 s^2 + sigma_t^2)`` is constant). Schedule:
continuous linear VP (beta 0.1 -> 20), steps uniform in logSNR, float64 throughout.

The slope is the least-squares slope of ``-log(error)`` against ``log(steps)`` over 24, 48, 96 evaluations
(the acceptance window) and, to show the asymptotic order, over 192, 384, 768.

    python benchmarks/convergence_order.py [--backend reference] [--out benchmarks/convergence_order]

writes ``<out>.csv`` (one row per solver and step count) and ``<out>.png`` (error vs steps, every solver),
and prints the slope table.
"""
from __future__ import annotations

import argparse
import csv
import math
import os

import numpy as np

from pydiff.dpm_solver import DPM_Solver, NoiseScheduleVP
from pydiff.testing import gaussian as go

HERE = os.path.dirname(os.path.abspath(__file__))

STEPS_PLOT = [12, 24, 48, 96, 192, 384, 768]
STEPS_SLOPE = [24, 48, 96]
STEPS_TAIL = [192, 384, 768]
T_END = 1e-3
SHAPE = (4, 64)

# (label, sample kwargs); the last four are pydiff's multistep-3 variants (not the authors' default)
SOLVERS = [
    ("multistep-1", dict(method="multistep", order=1)),
    ("multistep-2", dict(method="multistep", order=2)),
    ("multistep-3", dict(method="multistep", order=3)),
    ("singlestep-1", dict(method="singlestep", order=1)),
    ("singlestep-2", dict(method="singlestep", order=2)),
    ("singlestep-3", dict(method="singlestep", order=3)),
    ("singlestep_fixed-2", dict(method="singlestep_fixed", order=2)),
    ("singlestep_fixed-3", dict(method="singlestep_fixed", order=3)),
    ("multistep-3 warmup=singlestep", dict(method="multistep", order=3, warmup="singlestep")),
    ("multistep-3 third_order=consistent", dict(method="multistep", order=3, third_order="consistent")),
    ("multistep-3 consistent+singlestep warmup",
     dict(method="multistep", order=3, third_order="consistent", warmup="singlestep")),
]
ALGORITHMS = ["dpmsolver++", "dpmsolver"]


def setup(shape=SHAPE, seed=0):
    ns = NoiseScheduleVP("linear")
    return (ns,) + go.vp_ode_problem(ns, shape, T_END, seed=seed)


def relative_error(ns, model_fn, x_T, exact, alg, steps, backend=None, **kwargs):
    solver = DPM_Solver(model_fn, ns, algorithm_type=alg, backend=backend)
    out = solver.sample(x_T, steps=steps, t_end=T_END, skip_type="logSNR", **kwargs)
    return float((out - exact).norm() / exact.norm())


def slope(steps, errors):
    """Least-squares slope of -log(error) against log(steps)."""
    return float(-np.polyfit(np.log(steps), np.log(errors), 1)[0])


def measure(backend=None, steps_list=STEPS_PLOT, solvers=SOLVERS, algorithms=ALGORITHMS):
    """``{(alg, label): {steps: error}}``."""
    ns, model_fn, x_T, exact = setup()
    out = {}
    for alg in algorithms:
        for label, kw in solvers:
            out[(alg, label)] = {n: relative_error(ns, model_fn, x_T, exact, alg, n, backend, **kw)
                                 for n in steps_list}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default=None, help="fused-op backend (default: automatic)")
    p.add_argument("--out", default=os.path.join(HERE, "convergence_order"), help="output path without suffix")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)

    res = measure(args.backend)
    with open(args.out + ".csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["algorithm", "solver", "steps", "relative_error"])
        for (alg, label), errs in res.items():
            for n, e in errs.items():
                w.writerow([alg, label, n, f"{e:.6e}"])

    for window in (STEPS_SLOPE, STEPS_TAIL):
        print(f"slope of -log(error) vs log(steps), steps {window[0]} -> {window[-1]} (pairwise in brackets)")
        print(f"{'solver':42s}" + "".join(f"{a:>28s}" for a in ALGORITHMS))
        for label, _ in SOLVERS:
            cells = []
            for alg in ALGORITHMS:
                errs = [res[(alg, label)][n] for n in window]
                pair = [math.log2(errs[i] / errs[i + 1]) for i in range(len(errs) - 1)]
                cells.append(f"{slope(window, errs):6.2f} [{', '.join(f'{v:.2f}' for v in pair)}]")
            print(f"{label:42s}" + "".join(f"{c:>28s}" for c in cells))
        print()

    if not args.no_plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
        styles = {"multistep": "-", "singlestep": "--", "singlestep_fixed": ":"}
        for ax, alg in zip(axes, ALGORITHMS):
            for i, (label, kw) in enumerate(SOLVERS):
                errs = res[(alg, label)]
                ls = "-." if ("warmup" in label or "consistent" in label) else styles[kw["method"]]
                ax.loglog(list(errs), list(errs.values()), ls, marker="o", ms=3,
                          color=plt.get_cmap("tab20")(i), label=label)
            ns_ = np.array(STEPS_PLOT, dtype=float)
            for k, c in ((1, 0.5), (2, 0.8), (3, 3.0), (4, 30.0)):
                ax.loglog(ns_, c * (ns_ / ns_[0]) ** -k * 10 ** -(k - 1), color="gray", lw=0.6, alpha=0.6)
                ax.text(ns_[-1] * 1.05, c * (ns_[-1] / ns_[0]) ** -k * 10 ** -(k - 1), f"slope {k}",
                        fontsize=7, color="gray", va="center")
            ax.set_title(f"algorithm_type='{alg}'")
            ax.set_xlabel("steps (model evaluations)")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_ylabel("relative L2 error vs exact ODE solution")
        axes[1].legend(fontsize=7, loc="lower left")
        fig.suptitle("DPM-Solver(++) on Gaussian data, linear VP schedule, logSNR steps, float64")
        fig.tight_layout()
        fig.savefig(args.out + ".png", dpi=120)
        print(f"wrote {args.out}.png and {args.out}.csv")
    return res


if __name__ == "__main__":
    main()
