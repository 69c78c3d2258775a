"""Bad input raises a ValueError/TypeError that names the argument; nothing is silently wrong."""
import math

import pytest
import torch

import pydiff.diffusers as pd
from pydiff.ops import NCOEF, coef_row, dynamic_threshold, fused_step, philox_normal, sumsq
from pydiff.schedules import continuous_timesteps, diffusers_timesteps, make_betas, VPLinear

X = torch.randn(2, 3, 5)
ROW = torch.tensor(coef_row(P=1.0, B0=1.0))


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(model_output=torch.randn(2, 3, 4)), ValueError, "model_output has shape"),
    (dict(model_output=X.half()), TypeError, "model_output has dtype"),
    (dict(model_output=X.numpy()), TypeError, "model_output must be a torch.Tensor"),
    (dict(coef=torch.zeros(9)), ValueError, "coef must have shape"),
    (dict(coef=torch.zeros(3, NCOEF)), ValueError, "coef has 3 rows"),
    (dict(coef=torch.zeros(NCOEF, dtype=torch.int64)), TypeError, "coef must be a floating"),
    (dict(index=torch.tensor([0, 1, 2])), ValueError, "index must hold"),
    (dict(index=torch.tensor([0.0])), TypeError, "index must be an int64"),
    (dict(hist=[X] * 7), ValueError, "hist holds at most 6"),
    (dict(hist=X), TypeError, "hist must be a tuple"),
    (dict(hist=[X[:1]]), ValueError, r"hist\[0\] has shape"),
    (dict(noise=X, seed=1), ValueError, "either noise or seed"),
    (dict(seed=-2**63 - 1), ValueError, "seed must be an int"),  # -1 is the int64 pattern of 2**64 - 1: fine
    (dict(seed=1.0), TypeError, "seed must be an int"),
    (dict(seed=1, offset=2**64), ValueError, "offset must be an int"),
    (dict(seed=1, offset=1.0), TypeError, "offset must be an int"),
    (dict(seed=1, rng=torch.zeros(2, dtype=torch.int64)), ValueError, "either seed or rng"),
    (dict(rng=torch.zeros(3, dtype=torch.int64)), TypeError, "rng must be an int64 tensor of shape"),
    (dict(rng=torch.zeros(2, dtype=torch.int32)), TypeError, "rng must be an int64 tensor"),
    (dict(m2=X[:1]), ValueError, "m2 has shape"),
    (dict(var=X.double()), TypeError, "var has dtype"),
    (dict(index=torch.tensor([2, 0])), IndexError, "index 2 is out of range"),
    (dict(out=torch.empty(2, 5, 3).transpose(1, 2)), ValueError, "out must be contiguous"),
    (dict(w_out=torch.empty(2, 3)), ValueError, "w_out has shape"),
    (dict(threshold=torch.ones(3)), ValueError, "threshold must hold B=2"),
    (dict(backend="cuda-graphs"), ValueError, "backend must be one of"),
    (dict(backend="cuda"), ValueError, "cannot run on cpu"),
])
def test_fused_step_rejects(kwargs, exc, match):
    args = dict(model_output=X.clone(), coef=ROW)
    args.update(kwargs)
    x = args.pop("x", X)
    with pytest.raises(exc, match=match):
        fused_step(x, args.pop("model_output"), args.pop("coef"), **args)


def test_fused_step_rejects_scalar_x_and_int_data():
    with pytest.raises(ValueError, match="batch dimension"):
        fused_step(torch.tensor(1.0), torch.tensor(1.0), ROW)
    with pytest.raises(TypeError, match="x must be float16"):
        fused_step(torch.ones(2, 3, dtype=torch.int32), torch.ones(2, 3, dtype=torch.int32), ROW)


def test_env_backend_is_checked(monkeypatch):
    monkeypatch.setenv("PYDIFF_BACKEND", "fast")
    with pytest.raises(ValueError, match="PYDIFF_BACKEND must be one of"):
        fused_step(X, X, ROW)


def test_coef_row_unknown_column():
    with pytest.raises(ValueError, match="unknown coefficient 'E'"):
        coef_row(E=1.0)


def test_other_ops_reject():
    with pytest.raises(ValueError, match="ratio must be"):
        dynamic_threshold(X, ratio=1.5)
    with pytest.raises(ValueError, match="max_val must be"):
        dynamic_threshold(X, max_val=0)
    with pytest.raises(ValueError, match="coef is required"):
        dynamic_threshold(X, X)
    with pytest.raises(ValueError, match="either b or seed"):
        sumsq(X, X, seed=3)
    with pytest.raises(TypeError, match="dtype must be a floating"):
        philox_normal((3,), seed=1, dtype=torch.int32)


def test_schedules_reject():
    with pytest.raises(ValueError, match="beta_schedule must be one of"):
        make_betas("cosine")
    with pytest.raises(ValueError, match="num_inference_steps must be <= 1000"):
        diffusers_timesteps(1000, 1001)
    with pytest.raises(ValueError, match="num_inference_steps must be >= 1"):
        diffusers_timesteps(1000, 0)
    with pytest.raises(ValueError, match="timestep_spacing must be one of"):
        diffusers_timesteps(1000, 10, "uniform")
    with pytest.raises(ValueError, match="t_start"):
        continuous_timesteps(VPLinear(), 10, 0.5, 0.9)
    with pytest.raises(ValueError, match="skip_type must be one of"):
        continuous_timesteps(VPLinear(), 10, 1.0, 1e-3, "uniform")


@pytest.mark.parametrize("cls", [pd.DDIMScheduler, pd.DDPMScheduler])
def test_dropins_reject_unknown_options_and_steps(cls):
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        cls(prediction_type="eps")
    with pytest.raises(ValueError, match="beta_schedule must be one of"):
        cls(beta_schedule="cosine")
    with pytest.raises(ValueError, match="timestep_spacing must be one of"):
        cls(timestep_spacing="uniform")
    s = cls()
    with pytest.raises(ValueError, match="num_inference_steps must be >= 1"):
        s.set_timesteps(0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(1001)
    if cls is pd.DDIMScheduler:  # diffusers' DDIM takes 10.0 in set_timesteps, then its step fails indexing
        with pytest.raises(TypeError, match="num_inference_steps must be an int"):
            s.set_timesteps(10.0)
    else:  # diffusers' DDPM runs with 10.0
        s.set_timesteps(10.0)
        assert s.num_inference_steps == 10
    with pytest.raises(TypeError, match="num_inference_steps must be an int"):
        s.set_timesteps(10.5)
    s.set_timesteps(10)
    t = s.timesteps[0]
    with pytest.raises(ValueError, match="model_output has shape"):
        s.step(torch.randn(1, 3, 4, 4), t, torch.randn(1, 3, 4, 5))
    # a float16 model output with a float32 sample (autocast) is what diffusers promotes: float32 out
    assert s.step(torch.randn(1, 3, 4, 4).half(), t, torch.randn(1, 3, 4, 4)).prev_sample.dtype == torch.float32


def test_ddpm_rejects_unknown_variance_type():
    with pytest.raises(ValueError, match="variance_type must be one of"):
        pd.DDPMScheduler(variance_type="small")


def test_ddim_nan_producing_configurations():
    s = pd.DDIMScheduler(clip_sample=False)
    s.set_timesteps(10)
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="eta=1.5.* non-finite"):
        s.step(x, s.timesteps[0], x, eta=1.5)  # 1 - a_prev - sigma^2 < 0: diffusers returns NaN
    with pytest.raises(ValueError, match="eta must be"):
        s.step(x, s.timesteps[0], x, eta=-0.1)
    # zero terminal SNR with an epsilon model and no clip: x0 = (x - eps)/0 at t = 999 (diffusers: inf; with the
    # default clip_sample it is clipped to +-1 and runs, see tests/diffusers/test_dropin_misuse.py)
    z = pd.DDIMScheduler(rescale_betas_zero_snr=True, timestep_spacing="trailing", clip_sample=False)
    z.set_timesteps(10)
    with pytest.raises(ValueError, match="prediction_type='epsilon'.*rescale_betas_zero_snr=True.*timestep 999"):
        z.step(x, z.timesteps[0], x)


def test_ddim_generator_and_variance_noise_together():
    s = pd.DDIMScheduler()
    s.set_timesteps(10)
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="generator"):
        s.step(x, s.timesteps[0], x, eta=1.0, generator=torch.Generator(), variance_noise=x)
    assert math.isfinite(float(s.step(x, s.timesteps[0], x).prev_sample.sum()))


def test_dropin_noise_source_is_checked():
    s = pd.DDPMScheduler()
    s.set_timesteps(10)
    with pytest.raises(ValueError, match="pydiff_noise must be one of"):
        s.pydiff_noise = "cuRAND"
    assert s.pydiff_noise == "diffusers"
