"""Measured convergence order of pydiff.dpm_solver on the Gaussian oracle (float64, uniform-logSNR steps).

The error is the relative L2 distance to the exact probability-flow ODE solution (pydiff.testing.gaussian)
at t_end = 1e-3 on the continuous linear VP schedule; the slope is the least-squares slope of
-log(error) against log(steps) over 24, 48, 96 steps. benchmarks/convergence_order.py plots the same
measurement for every solver (docs/dpm_solver.md explains the third-order results).
"""
import numpy as np
import pytest

from pydiff.testing import gaussian as go
from pydiff.dpm_solver import DPM_Solver, NoiseScheduleVP

STEPS = [24, 48, 96]
T_END = 1e-3
SHAPE = (4, 64)
ALGS = ["dpmsolver++", "dpmsolver"]


@pytest.fixture(scope="module")
def problem():
    ns = NoiseScheduleVP("linear")
    return (ns,) + go.vp_ode_problem(ns, SHAPE, T_END, seed=0)


def errors(problem, alg, steps=STEPS, **kw):
    ns, model_fn, x_T, exact = problem
    solver = DPM_Solver(model_fn, ns, algorithm_type=alg)
    return [float((solver.sample(x_T, steps=n, t_end=T_END, skip_type="logSNR", **kw) - exact).norm()
                  / exact.norm()) for n in steps]


def slope(errs, steps=STEPS):
    return float(-np.polyfit(np.log(steps), np.log(errs), 1)[0])


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("method", ["multistep", "singlestep", "singlestep_fixed"])
@pytest.mark.parametrize("order,expected,tol", [(1, 1.0, 0.15), (2, 2.0, 0.3)])
def test_first_and_second_order(problem, alg, method, order, expected, tol):
    k = slope(errors(problem, alg, method=method, order=order))
    assert abs(k - expected) <= tol, f"measured slope {k:.3f}, expected {expected} +- {tol}"


@pytest.mark.parametrize("alg", ALGS)
def test_multistep_third_order_is_second_order_like_the_authors(problem, alg):
    # The authors' D2 = (D1_0 - D1_1)/(r0 + r1) estimates h^2 f''/2 where the phi_3 term needs h^2 f''.
    k = slope(errors(problem, alg, method="multistep", order=3))
    assert abs(k - 2.0) <= 0.3, k


@pytest.mark.parametrize("alg", ALGS)
def test_multistep_third_order_warmup_is_not_the_cause(problem, alg):
    base = errors(problem, alg, method="multistep", order=3)
    warm = errors(problem, alg, method="multistep", order=3, warmup="singlestep")
    assert np.allclose(base, warm, rtol=0.05), (base, warm)


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("warmup", ["lower_order", "singlestep"])
def test_multistep_consistent_d2_is_third_order(problem, alg, warmup):
    k = slope(errors(problem, alg, method="multistep", order=3, third_order="consistent", warmup=warmup))
    assert k >= 2.8, k


@pytest.mark.parametrize("alg", ALGS)
def test_singlestep_third_order(problem, alg):
    # DPM-Solver-fast ends 24/48/96-step runs with a 2nd- and a 1st-order step, so it tends to order 2
    # for many steps; in this window it measures ~3 (3.1 / 3.3), as the authors' code does.
    k = slope(errors(problem, alg, method="singlestep", order=3))
    assert abs(k - 3.0) <= 0.45, k


def test_singlestep_fixed_third_order_asymptotic(problem):
    steps = [96, 192, 384]
    for alg in ALGS:
        k = slope(errors(problem, alg, steps=steps, method="singlestep_fixed", order=3), steps)
        assert abs(k - 3.0) <= 0.3, (alg, k)
