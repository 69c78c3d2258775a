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


@pytest.mark.parametrize("method,kw", [("multistep", dict(skip_type="logSNR")), ("multistep", {}),
                                       ("singlestep", dict(skip_type="time_quadratic")), ("adaptive", {})])
def test_times_below_the_first_level_of_a_discrete_schedule_raise(method, kw):
    """Below 1/N the discrete schedule's log alpha is extrapolated and turns positive (sigma NaN): the authors' code
    returns NaN or never ends; here a ValueError names the time."""
    ns = NoiseScheduleVP("discrete", betas=torch.linspace(1e-4, 2e-2, 1000))
    solver = DPM_Solver(model_wrapper(lambda x, t: torch.tanh(x), ns), ns)
    with pytest.raises(ValueError, match="t_start/t_end must be >= 1/N"):
        solver.sample(torch.randn(2, 3), steps=5, t_end=1e-4, method=method, order=2, **kw)
    with pytest.raises(ValueError, match="t_start/t_end must be >= 1/N"):
        solver.inverse(torch.randn(2, 3), steps=5, t_start=5e-4)
    out = solver.sample(torch.randn(2, 3), steps=5, t_end=1e-3, method=method, order=2, **kw)  # 1/N itself
    assert torch.isfinite(out).all()


def test_channels_last_and_transposed_samples():
    """A dense non-contiguous x (channels_last, a transpose) is read as is: the same result as its contiguous copy."""
    ns = NoiseScheduleVP("linear")
    solver = DPM_Solver(model_wrapper(lambda x, t: torch.tanh(x) * 0.5, ns), ns)
    x = torch.randn(2, 3, 4, 5)
    for xin in (x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3).contiguous().transpose(2, 3)):
        for method in ("multistep", "singlestep", "adaptive"):
            torch.testing.assert_close(solver.sample(xin, steps=6, order=2, method=method),
                                       solver.sample(x, steps=6, order=2, method=method), rtol=0, atol=0)
