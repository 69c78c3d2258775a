"""What real users do with a scheduler, run against diffusers and against each pydiff drop-in.

Each scenario is a short loop with one "mistake" (or one legitimate but unusual call) in it. The rule: pydiff
gives diffusers' result (same dtype, layout and values to float32 rounding), or — only where diffusers itself
raises — an error as well, of type ValueError/TypeError/RuntimeError. Never a silent different answer.
"""
import warnings

import numpy as np
import pytest
import torch
import diffusers

import pydiff.diffusers as pd
from helpers import rel_l2

SHAPE = (2, 4, 8, 8)
KINDS = ("DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler")


def _model(x, t):
    """A smooth stand-in for a network: the same function of (x, t) for both libraries."""
    return (0.7 * torch.sin(x.float() * 1.3 + float(t) / 500.0)).to(x.dtype)


def _run(module, kind, scenario):
    sched = getattr(module, kind)()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    return scenario(sched, x)


def _loop(sched, x, steps=6, model=_model, step_kw=None, set_kw=None, t_map=lambda t: t, m_map=lambda m: m):
    sched.set_timesteps(**(set_kw or {"num_inference_steps": steps}))
    gen = torch.Generator().manual_seed(1)
    for t in sched.timesteps:
        m = m_map(model(x, t))
        kw = dict(step_kw or {})
        if isinstance(sched, (diffusers.DDPMScheduler, diffusers.DDIMScheduler)):
            kw.setdefault("generator", gen)
        x = sched.step(m, t_map(t), x, **kw).prev_sample
    return x


SCENARIOS = {
    # autocast: the UNet returns float16 while the latents stay float32 -> float32 result, as diffusers promotes
    "fp16_model_output": lambda s, x: _loop(s, x, m_map=lambda m: m.half()),
    # a float32 model with float16 latents -> diffusers promotes to float32
    "fp32_model_fp16_sample": lambda s, x: _loop(s, x.half(), model=lambda x, t: _model(x.float(), t)),
    # a batch-1 model output (e.g. one shared prediction), broadcast over the batch
    "batch1_model_output": lambda s, x: _loop(s, x, m_map=lambda m: m[:1]),
    # channels_last and transposed latents
    "channels_last_sample": lambda s, x: _loop(s, x.contiguous(memory_format=torch.channels_last)),
    "transposed_sample": lambda s, x: _loop(s, x.transpose(2, 3)),
    # step counts as NumPy ints and 0-d tensors
    "numpy_int_steps": lambda s, x: _loop(s, x, set_kw={"num_inference_steps": np.int64(6)}),
    "tensor_steps": lambda s, x: _loop(s, x, set_kw={"num_inference_steps": torch.tensor(6)}),
    # timesteps passed as Python ints instead of tensors
    "int_timesteps": lambda s, x: _loop(s, x, t_map=int),
    # a NaN in the model output propagates as NaN (no crash, no silent repair)
    "nan_model_output": lambda s, x: _loop(s, x, steps=3, m_map=lambda m: m.index_put_((torch.tensor(0),), torch.tensor(float("nan")))),
}
DDIM_ONLY = {
    "eta_numpy_float": lambda s, x: _loop(s, x, step_kw={"eta": np.float32(0.5)}),
    "eta_numpy_int": lambda s, x: _loop(s, x, step_kw={"eta": np.int64(1)}),
    "eta_0d_tensor": lambda s, x: _loop(s, x, step_kw={"eta": torch.tensor(0.5)}),
}
DDIM_DDPM_ONLY = {
    "float_steps": lambda s, x: _loop(s, x, set_kw={"num_inference_steps": 6.0}),
}
DPM_ONLY = {
    # per-sample timesteps: diffusers fails on them; pydiff must not run one index for the whole batch
    "per_sample_timesteps": lambda s, x: _loop(s, x, t_map=lambda t: torch.stack([t, t - 1])),
}


def _cases():
    for kind in KINDS:
        for name in SCENARIOS:
            yield kind, name
        if kind == "DDIMScheduler":
            yield from ((kind, n) for n in DDIM_ONLY)
        if kind in ("DDIMScheduler", "DDPMScheduler"):
            yield from ((kind, n) for n in DDIM_DDPM_ONLY)
        if kind.startswith("DPM"):
            yield from ((kind, n) for n in DPM_ONLY)


ALL = {**SCENARIOS, **DDIM_ONLY, **DDIM_DDPM_ONLY, **DPM_ONLY}


@pytest.mark.parametrize("kind,name", list(_cases()))
def test_same_result_as_diffusers_or_an_error_where_diffusers_errs(kind, name):
    scenario = ALL[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            expect, ref_error = _run(diffusers, kind, scenario), None
        except Exception as exc:  # diffusers' own failure: pydiff must fail too, clearly
            expect, ref_error = None, exc
        if ref_error is not None:
            with pytest.raises((ValueError, TypeError, RuntimeError)):
                _run(pd, kind, scenario)
            return
        got = _run(pd, kind, scenario)
    assert got.shape == expect.shape and got.dtype == expect.dtype
    assert got.is_contiguous() == expect.is_contiguous()
    assert got.is_contiguous(memory_format=torch.channels_last) == expect.is_contiguous(
        memory_format=torch.channels_last)
    if expect.isnan().any():
        assert torch.equal(got.isnan(), expect.isnan())
        got, expect = got.nan_to_num(), expect.nan_to_num()
    tol = 1e-5 if expect.dtype == torch.float32 else 2e-3
    assert rel_l2(got, expect) < tol


@pytest.mark.parametrize("kind", ["DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler"])
def test_dpm_per_sample_timesteps_raise_naming_the_timestep(kind):
    sched = getattr(pd, kind)()
    sched.set_timesteps(6)
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match="timestep"):
        sched.step(x, torch.tensor([999, 500]), x)


@pytest.mark.parametrize("kind", ["DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler"])
@pytest.mark.parametrize("alg", ["sde-dpmsolver++", "sde-dpmsolver"])
@pytest.mark.parametrize("pred", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("thresholding", [False, True])
def test_sde_noise_of_a_batch_one_model_output(kind, alg, pred, thresholding):
    """diffusers draws the SDE noise in the shape of the converted model output: a batch-1 output that the
    conversion leaves as it is (x0 = output for 'sample' in the ++ family, eps = output for 'epsilon' otherwise)
    draws one sample's noise, shared by the batch; any other conversion broadcasts first and draws the batch's."""
    if kind == "DPMSolverSinglestepScheduler" and alg != "sde-dpmsolver++":
        pytest.skip("diffusers' singlestep has no sde-dpmsolver")
    if thresholding and not alg.endswith("++"):
        pytest.skip("diffusers thresholds only the ++ family")
    cfg = dict(algorithm_type=alg, prediction_type=pred, thresholding=thresholding, final_sigmas_type="sigma_min")
    outs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # diffusers deprecates sde-dpmsolver
        for module in (diffusers, pd):
            sched = getattr(module, kind)(**cfg)
            x = torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(0))

            def one_model(x, t):
                return _model(x[:1], t)  # a batch-1 output that broadcasts over the sample

            outs.append(_loop(sched, x, steps=4, model=one_model,
                              step_kw={"generator": torch.Generator().manual_seed(2)}))
    assert rel_l2(outs[1], outs[0]) < 1e-5


def test_ddpm_schedule_reaching_num_train_timesteps():
    """'leading' spacing with steps_offset=1 and as many steps as training steps puts t = N on the schedule:
    diffusers accepts it and raises only when stepping there; every other step matches."""
    cfg = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="leading",
               steps_offset=1)
    ref, ours = diffusers.DDPMScheduler(**cfg), pd.DDPMScheduler(**cfg)
    ref.set_timesteps(1000)
    ours.set_timesteps(1000)
    assert int(ours.timesteps[0]) == 1000
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    for t in (999, 500, 1):
        m = _model(x, t)
        want = ref.step(m, t, x, generator=torch.Generator().manual_seed(1)).prev_sample
        got = ours.step(m, t, x, generator=torch.Generator().manual_seed(1)).prev_sample
        assert rel_l2(got, want) < 1e-6
        assert ours.last_fallback_reason is None
    with pytest.raises(IndexError):
        ref.step(_model(x, 1000), 1000, x)
    with pytest.raises(IndexError):
        ours.step(_model(x, 1000), 1000, x)


@pytest.mark.parametrize("kind", ["DDIMScheduler", "DDPMScheduler"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_one_element_timestep_tensor_with_half_samples(kind, dtype):
    """A timestep of shape (1,) makes diffusers' schedule factors 1-D float32 tensors, which promote a half
    sample's step to float32: the drop-in gives that result (diffusers' own step, said once), not a float16 one."""
    outs = []
    for module in (diffusers, pd):
        sched = getattr(module, kind)()
        sched.set_timesteps(10)
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)).to(dtype)
        t = sched.timesteps[2:3]
        outs.append(sched.step(_model(x, t), t, x, generator=torch.Generator().manual_seed(1)).prev_sample)
    assert outs[0].dtype == outs[1].dtype == torch.float32
    assert rel_l2(outs[1], outs[0]) < 1e-6


@pytest.mark.parametrize("kind", ["DDIMScheduler", "DDPMScheduler"])
@pytest.mark.parametrize("clip,thresholding", [(False, False), (True, False), (False, True)])
def test_x0_of_a_batch_one_sample_prediction_keeps_its_shape(kind, clip, thresholding):
    """prediction_type='sample': diffusers' x0 is the (clipped / thresholded) model output itself, so a batch-1
    output over a batch gives a batch-1 pred_original_sample; the drop-in returns the same tensor shape."""
    outs = []
    for module in (diffusers, pd):
        sched = getattr(module, kind)(prediction_type="sample", clip_sample=clip, thresholding=thresholding)
        sched.set_timesteps(10)
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
        m = 1.5 * torch.randn((1,) + SHAPE[1:], generator=torch.Generator().manual_seed(3))
        outs.append(sched.step(m, 900, x, generator=torch.Generator().manual_seed(1)))
    assert outs[1].pred_original_sample.shape == outs[0].pred_original_sample.shape == (1,) + SHAPE[1:]
    assert rel_l2(outs[1].pred_original_sample, outs[0].pred_original_sample) < 1e-6
    assert rel_l2(outs[1].prev_sample, outs[0].prev_sample) < 1e-6


@pytest.mark.parametrize("kind,step_kw", [("DDIMScheduler", {}), ("DDIMScheduler", {"eta": 1.0}),
                                          ("DDIMScheduler", {"eta": 0.5, "use_clipped_model_output": True}),
                                          ("DDPMScheduler", {})])
def test_zero_terminal_snr_epsilon_model_with_clipping(kind, step_kw):
    """rescale_betas_zero_snr with an epsilon model: at the first timestep abar = 0 and diffusers' x0 is +-inf,
    which clip_sample takes to +-1; the fused row holds S = inf and the kernel's clip does the same."""
    cfg = dict(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    outs = []
    for module in (diffusers, pd):
        sched = getattr(module, kind)(**cfg)
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
        outs.append(_loop(sched, x, steps=5, step_kw=step_kw))
        if module is pd:
            assert sched.last_fallback_reason is None
    assert torch.isfinite(outs[0]).all()
    assert rel_l2(outs[1], outs[0]) < 1e-5
