"""pydiff.diffusers drop-ins against diffusers' own schedulers: full loops, same inputs, same generator."""
import itertools

import pytest
import torch
import diffusers

import pydiff.diffusers as pd
from helpers import backend_device, backend_params, rel_l2, toy_model

SHAPE = (2, 3, 8, 8)

DDIM_OPTIONS = [
    ({}, {}),  # diffusers' defaults: clip_sample=True, leading spacing
    ({"clip_sample": False}, {"eta": 1.0}),
    ({}, {"eta": 0.5, "use_clipped_model_output": True}),
    ({"clip_sample_range": 0.5}, {"eta": 0.3}),
    ({"prediction_type": "sample", "clip_sample": False}, {}),
    ({"prediction_type": "sample"}, {"eta": 1.0, "use_clipped_model_output": True}),
    ({"prediction_type": "v_prediction", "clip_sample": False}, {"eta": 0.2}),
    ({"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5}, {}),
    ({"thresholding": True, "prediction_type": "v_prediction"}, {"eta": 1.0, "use_clipped_model_output": True}),
    ({"set_alpha_to_one": False}, {}),
    ({"steps_offset": 1}, {"eta": 0.1}),
    ({"timestep_spacing": "trailing", "clip_sample": False}, {}),
    ({"timestep_spacing": "linspace"}, {"eta": 1.0}),
    ({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "clip_sample": False}, {}),
    ({"beta_schedule": "squaredcos_cap_v2"}, {"eta": 0.5}),
    ({"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"}, {}),
]
DDPM_OPTIONS = [
    {},
    {"clip_sample": False},
    {"clip_sample_range": 0.5},
    {"prediction_type": "sample"},
    {"prediction_type": "v_prediction", "clip_sample": False},
    {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
    {"variance_type": "fixed_small_log"},
    {"variance_type": "fixed_large", "clip_sample": False},
    {"steps_offset": 1, "timestep_spacing": "leading"},
    {"timestep_spacing": "trailing"},
    {"timestep_spacing": "linspace", "beta_schedule": "squaredcos_cap_v2"},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
]
GRID = list(itertools.product([10, 50], [1000, 500]))




def run_loop(cls, config, steps, dtype, step_kwargs=None, backend=None, device="cpu", custom=None, noise_arg=False):
    sched = cls(**config)
    if backend is not None:
        sched.pydiff_backend = backend
    if custom is not None:
        sched.set_timesteps(timesteps=custom)
    else:
        sched.set_timesteps(steps)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    for t in sched.timesteps:
        m = toy_model(x, t, sched)
        kw = dict(step_kwargs or {})
        if noise_arg:
            kw["variance_noise"] = torch.randn(SHAPE, generator=gen).to(device=device, dtype=dtype)
        else:
            kw["generator"] = gen
        out = sched.step(m, t, x, **kw)
        x = out.prev_sample
        assert getattr(sched, "last_fallback_reason", None) is None, sched.last_fallback_reason
    return x, out.pred_original_sample


def assert_fp32_parity(cls_ours, cls_ref, config, steps, step_kwargs=None):
    """1e-5 relative L2 against diffusers in float32, for the final sample and the final x0.

    This holds on the whole grid (worst case 4.6e-7 on 2026-11-26) because the drop-ins evaluate their
    scalars in diffusers' float32 order (plans.ddim_scalars/ddpm_scalars) and divide by alpha last
    (column S); with float64 scalars, ill-conditioned steps (alpha_bar_999 = 2.4e-9 for squaredcos,
    beta_t = 1 - a_t/a_prev near t = 0) differed by up to 5e-5.
    """
    ours, ours_x0 = run_loop(cls_ours, config, steps, torch.float32, step_kwargs)
    ref, ref_x0 = run_loop(cls_ref, config, steps, torch.float32, step_kwargs)
    assert rel_l2(ours, ref) < 1e-5
    assert rel_l2(ours_x0, ref_x0) < 1e-5


def _cases(options, with_step_kwargs):
    cases = []
    for i, opt in enumerate(options):
        cfg, kw = opt if with_step_kwargs else (opt, {})
        for steps, n_train in GRID:
            if steps > n_train:
                continue
            cases.append(pytest.param(dict(cfg, num_train_timesteps=n_train), kw, steps, id=f"{i}-{steps}of{n_train}"))
    return cases


DDIM_CASES = _cases(DDIM_OPTIONS, True)
DDPM_CASES = _cases(DDPM_OPTIONS, False)
assert len(DDIM_CASES) >= 40 and len(DDPM_CASES) >= 40


@pytest.mark.parametrize("config,step_kwargs,steps", DDIM_CASES)
def test_ddim_matches_diffusers_fp32(config, step_kwargs, steps):
    assert_fp32_parity(pd.DDIMScheduler, diffusers.DDIMScheduler, config, steps, step_kwargs)


@pytest.mark.parametrize("config,step_kwargs,steps", DDPM_CASES)
def test_ddpm_matches_diffusers_fp32(config, step_kwargs, steps):
    assert_fp32_parity(pd.DDPMScheduler, diffusers.DDPMScheduler, config, steps)


def _fp16_rule(cls_ours, cls_ref, config, steps, step_kwargs, **kw):
    ref32, _ = run_loop(cls_ref, config, steps, torch.float32, step_kwargs)
    ref16, _ = run_loop(cls_ref, config, steps, torch.float16, step_kwargs)
    ours16, _ = run_loop(cls_ours, config, steps, torch.float16, step_kwargs, **kw)
    assert ours16.dtype == torch.float16
    bound = max(2e-3, 2.0 * rel_l2(ref16, ref32))
    assert rel_l2(ours16, ref32) <= bound


@pytest.mark.parametrize("config,step_kwargs,steps", DDIM_CASES)
def test_ddim_fp16_error_within_twice_diffusers(config, step_kwargs, steps):
    _fp16_rule(pd.DDIMScheduler, diffusers.DDIMScheduler, config, steps, step_kwargs)


@pytest.mark.parametrize("config,step_kwargs,steps", DDPM_CASES)
def test_ddpm_fp16_error_within_twice_diffusers(config, step_kwargs, steps):
    _fp16_rule(pd.DDPMScheduler, diffusers.DDPMScheduler, config, steps, step_kwargs)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cls_name,config,step_kwargs", [
    ("DDIMScheduler", {"thresholding": True}, {"eta": 1.0}),
    ("DDIMScheduler", {"prediction_type": "v_prediction"}, {"eta": 0.5, "use_clipped_model_output": True}),
    ("DDPMScheduler", {"clip_sample_range": 0.7}, {}),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_dropins_on_each_backend(backend, cls_name, config, step_kwargs, dtype):
    """Each compiled backend drives the whole loop (on its device) and agrees with diffusers."""
    device = backend_device(backend)
    ours, _ = run_loop(getattr(pd, cls_name), config, 10, dtype, step_kwargs, backend=backend, device=device)
    ref, _ = run_loop(getattr(diffusers, cls_name), config, 10, torch.float32, step_kwargs, device=device)
    assert rel_l2(ours, ref) < (1e-5 if dtype == torch.float32 else 3e-2)


def test_ddim_variance_noise_argument():
    cfg = {"clip_sample": False}
    ours, _ = run_loop(pd.DDIMScheduler, cfg, 10, torch.float32, {"eta": 1.0}, noise_arg=True)
    ref, _ = run_loop(diffusers.DDIMScheduler, cfg, 10, torch.float32, {"eta": 1.0}, noise_arg=True)
    assert rel_l2(ours, ref) < 1e-5


@pytest.mark.parametrize("custom", [[999, 700, 420, 100, 3, 0], [800, 799, 10]])
def test_ddpm_custom_timesteps(custom):
    ours, _ = run_loop(pd.DDPMScheduler, {}, None, torch.float32, custom=custom)
    ref, _ = run_loop(diffusers.DDPMScheduler, {}, None, torch.float32, custom=custom)
    assert rel_l2(ours, ref) < 1e-5


def test_ddpm_fixed_large_log_is_the_intended_std_not_nan():
    with pytest.warns(UserWarning, match="fixed_large_log"):
        type(pd.DDPMScheduler())._warned_large_log = False
        ours, _ = run_loop(pd.DDPMScheduler, {"variance_type": "fixed_large_log"}, 10, torch.float32)
    ref, _ = run_loop(diffusers.DDPMScheduler, {"variance_type": "fixed_large"}, 10, torch.float32)
    assert torch.isfinite(ours).all()
    assert rel_l2(ours, ref) < 1e-5


def test_from_config_round_trip_keeps_every_option():
    ref = diffusers.DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, steps_offset=1,
                                  prediction_type="v_prediction", timestep_spacing="trailing")
    ours = pd.DDIMScheduler.from_config(ref.config)
    assert isinstance(ours, diffusers.DDIMScheduler)
    assert dict(ours.config) == dict(ref.config)
    back = diffusers.DDPMScheduler.from_config(pd.DDPMScheduler(variance_type="fixed_large").config)
    assert back.config.variance_type == "fixed_large"


def test_off_schedule_int_timestep_keeps_diffusers_behaviour():
    # DDIM accepts any timestep (its coefficients depend on t alone): fused, and equal to diffusers.
    ours, ref = pd.DDIMScheduler(), diffusers.DDIMScheduler()
    for s in (ours, ref):
        s.set_timesteps(10)
    x = torch.randn(SHAPE)
    m = toy_model(x, 555, ours)
    a = ours.step(m, 555, x).prev_sample
    assert ours.last_fallback_reason is None
    torch.testing.assert_close(a, ref.step(m, 555, x).prev_sample, rtol=1e-5, atol=1e-6)
    # DDPM looks the previous timestep up in its schedule: diffusers raises, and so do we (via fallback).
    ddpm = pd.DDPMScheduler()
    ddpm.set_timesteps(10)
    with pytest.raises(IndexError):
        ddpm.step(m, 555, x)
    assert "not on the schedule" in ddpm.last_fallback_reason


def test_learned_range_runs_fused():
    """learned_range used to fall back to diffusers; it now runs fused (tests/diffusers/test_ddpm_learned.py has
    the parity grid) and gives diffusers' result on the same generator."""
    ours, ref = pd.DDPMScheduler(variance_type="learned_range"), diffusers.DDPMScheduler(variance_type="learned_range")
    for s in (ours, ref):
        s.set_timesteps(10)
    x = torch.randn(SHAPE)
    m = torch.randn(SHAPE[0], 2 * SHAPE[1], *SHAPE[2:])
    a = ours.step(m, ours.timesteps[2], x, generator=torch.Generator().manual_seed(3)).prev_sample
    b = ref.step(m, ref.timesteps[2], x, generator=torch.Generator().manual_seed(3)).prev_sample
    assert ours.last_fallback_reason is None
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", ["reference"] + [p.values[0] for p in backend_params(("cpu",)) if not p.marks])
def test_device_timestep_path_uses_guarded_table(backend):
    """The in-kernel row lookup (used for GPU timestep tensors) picks the timestep's row, NaN when off range."""
    from pydiff.diffusers._common import TableCache, select_rows
    from pydiff.ops import fused_step
    sched = pd.DDIMScheduler(clip_sample=False)
    sched.set_timesteps(10)
    rows = sched._rows(0.0, False)
    table = TableCache().device_view("k", rows, "cpu", torch.float32)
    x = torch.randn(SHAPE)
    m = toy_model(x, 901, sched)
    expect = diffusers.DDIMScheduler(clip_sample=False)
    expect.set_timesteps(10)
    coef, index = select_rows("device", torch.tensor([901]), table)
    got = fused_step(x, m, coef, index=index, backend=backend)
    torch.testing.assert_close(got, expect.step(m, 901, x).prev_sample, rtol=1e-5, atol=1e-6)
    for bad in (-5, 1000, 10**6):
        coef, index = select_rows("device", torch.tensor([bad]), table)
        assert fused_step(x, m, coef, index=index, backend=backend).isnan().all()


@pytest.mark.parametrize("cls_name,step_kwargs", [("DDIMScheduler", {"eta": 1.0}), ("DDPMScheduler", {})])
def test_philox_noise_option(cls_name, step_kwargs):
    """pydiff_noise = "philox": in-kernel noise keyed by one draw of two 64-bit words from the step's generator.

    Oracle: diffusers' own step given that noise explicitly (DDIM: variance_noise) or, for DDPM, our default
    path with the same noise tensor patched in; plus reproducibility and backend independence."""
    from pydiff.ops import backend_available, philox_normal

    def loop(backend, seed, mode="philox"):
        s = getattr(pd, cls_name)(clip_sample=False)
        s.pydiff_noise, s.pydiff_backend = mode, backend
        s.set_timesteps(10)
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
        for t in s.timesteps:
            x = s.step(toy_model(x, t, s), t, x, generator=torch.Generator().manual_seed(seed),
                       **step_kwargs).prev_sample
        return x

    a = loop("reference", 5)
    assert torch.equal(a, loop("reference", 5))
    assert rel_l2(a, loop("reference", 6)) > 1e-2
    for b in ("cpu", "triton"):
        if backend_available(b) and (b != "triton" or torch.cuda.is_available() or __import__("os").environ.get("TRITON_INTERPRET") == "1"):
            assert rel_l2(loop(b, 5), a) < 1e-5
    # every step gets a freshly seeded generator here, so every noisy step draws the same key: the words of
    # torch.randint(-2**63, 2**63 - 1, (2,)) from it, as (seed, counter offset) mod 2**64
    words = torch.randint(-2**63, 2**63 - 1, (2,), generator=torch.Generator().manual_seed(5)).tolist()
    key, ctr = words[0] % 2**64, words[1] % 2**64
    ref = getattr(diffusers, cls_name)(clip_sample=False)
    ref.set_timesteps(10)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    for k, t in enumerate(ref.timesteps):
        m = toy_model(x, t, ref)
        z = philox_normal(SHAPE, seed=key, offset=ctr)
        if cls_name == "DDIMScheduler":
            x = ref.step(m, t, x, variance_noise=z, **step_kwargs).prev_sample
        else:  # DDPM draws with randn_tensor only when t > 0
            import diffusers.schedulers.scheduling_ddpm as mod
            orig = mod.randn_tensor
            mod.randn_tensor = lambda *args, z=z, **kw: z
            try:
                x = ref.step(m, t, x).prev_sample
            finally:
                mod.randn_tensor = orig
    assert rel_l2(a, x) < 1e-5
