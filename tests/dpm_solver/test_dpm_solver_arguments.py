"""One rule for the int and bool arguments of DPM_Solver.sample: ints are ints (not floats, not bools), bools are
bools; anything else is a TypeError that names the argument, before any model evaluation."""
import pytest
import torch

from pydiff.dpm_solver import DPM_Solver, NoiseScheduleVP, model_wrapper


def _solver():
    ns = NoiseScheduleVP("linear")
    return DPM_Solver(model_wrapper(lambda x, t: torch.zeros_like(x), ns), ns)


@pytest.mark.parametrize("kwargs,name", [
    (dict(order=2.0), "order"),
    (dict(order=True), "order"),
    (dict(steps=10.0), "steps"),
    (dict(lower_order_final="yes"), "lower_order_final"),
    (dict(lower_order_final=1), "lower_order_final"),
    (dict(return_intermediate=1), "return_intermediate"),
    (dict(denoise_to_zero="no"), "denoise_to_zero"),
])
def test_int_and_bool_arguments_follow_one_rule(kwargs, name):
    with pytest.raises(TypeError, match=name):
        _solver().sample(torch.randn(2, 3), **kwargs)


def test_numpy_ints_are_ints():
    import numpy as np

    out = _solver().sample(torch.randn(2, 3), steps=np.int64(4), order=np.int64(2))
    assert out.shape == (2, 3)
