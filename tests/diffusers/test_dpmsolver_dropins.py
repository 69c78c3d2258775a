"""pydiff.diffusers DPM-Solver drop-ins against diffusers' own schedulers: full loops, same inputs, same generator.

Besides the float32/float16 parity grids, a float64 check compares the fused rows with diffusers' formulas
evaluated in exact (float64) arithmetic: they must agree to 1e-12, which pins every coefficient.
"""
import contextlib
import logging

import numpy as np
import pytest
import torch
import diffusers
import diffusers.schedulers.scheduling_dpmsolver_multistep as dms_mod
import diffusers.schedulers.scheduling_dpmsolver_singlestep as dss_mod

import pydiff.diffusers as pd
import pydiff.diffusers.dpmsolver_multistep as dms_pd
import pydiff.diffusers.dpmsolver_singlestep as pss_mod
from helpers import backend_device, backend_params, rel_l2, toy_model

SHAPE = (2, 3, 8, 8)
STEPS = (10, 20, 25)

logging.getLogger("diffusers").setLevel(logging.ERROR)  # lower_order_final rewrites, deprecations
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning", "ignore:.*deprecated.*")

SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
THR = {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5}
MIN = {"final_sigmas_type": "sigma_min"}

MS_OPTIONS = [
    {},  # diffusers' defaults: dpmsolver++, order 2, midpoint, lower_order_final, final sigma zero
    {"solver_order": 1},
    {"solver_order": 3},
    {"solver_type": "heun"},
    {"solver_order": 3, "lower_order_final": False},
    {"algorithm_type": "dpmsolver", **MIN},
    {"algorithm_type": "dpmsolver", "solver_type": "heun", "solver_order": 3, **MIN},
    {"algorithm_type": "sde-dpmsolver++"},
    {"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "solver_type": "heun", "euler_at_final": True},
    {"prediction_type": "sample", **THR},
    {"prediction_type": "v_prediction", "thresholding": True, "solver_order": 3},
    {"algorithm_type": "dpmsolver", "solver_order": 1, "prediction_type": "v_prediction", **THR, **MIN},
    {"use_karras_sigmas": True, **SD},
    {"use_lu_lambdas": True, "solver_order": 3},
    {"euler_at_final": True, "lower_order_final": False, "solver_order": 3, **MIN},
    {"algorithm_type": "sde-dpmsolver", "solver_type": "heun", **MIN},
    {"prediction_type": "v_prediction", "beta_schedule": "squaredcos_cap_v2", "solver_order": 3,
     "lambda_min_clipped": -5.1},
    {"timestep_spacing": "trailing", "rescale_betas_zero_snr": True, "prediction_type": "v_prediction"},
    {"algorithm_type": "dpmsolver", "prediction_type": "sample", "solver_order": 3, **MIN},
    {"timestep_spacing": "leading", "steps_offset": 1, "algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    {"algorithm_type": "sde-dpmsolver", "solver_order": 1, "prediction_type": "sample", **THR, **MIN},
]
SS_OPTIONS = [
    {},  # dpmsolver++, order 2, midpoint, final sigma zero (forces lower_order_final)
    {"solver_order": 3},
    {"solver_order": 3, "solver_type": "heun"},
    {"solver_order": 1},
    {"solver_type": "heun", "lower_order_final": True},
    {"algorithm_type": "dpmsolver", **MIN},
    {"algorithm_type": "dpmsolver", "solver_order": 3, "solver_type": "heun", **MIN},
    {"algorithm_type": "sde-dpmsolver++"},
    {"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "solver_type": "heun"},
    {"prediction_type": "sample", "solver_order": 3, **THR},
    {"prediction_type": "v_prediction", "thresholding": True},
    {"use_karras_sigmas": True, "solver_order": 3, **SD},
    {"solver_order": 3, **MIN},
    {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction", "lambda_min_clipped": -5.1},
    {"algorithm_type": "dpmsolver", "prediction_type": "v_prediction", "solver_order": 3, **MIN},
    {"algorithm_type": "dpmsolver", "prediction_type": "sample", "solver_type": "heun", "use_karras_sigmas": True,
     **MIN},
]

PAIRS = {
    "multistep": (pd.DPMSolverMultistepScheduler, diffusers.DPMSolverMultistepScheduler, dms_mod),
    "singlestep": (pd.DPMSolverSinglestepScheduler, diffusers.DPMSolverSinglestepScheduler, dss_mod),
}


class _Float64Torch:
    """``torch`` as diffusers' scheduler module sees it inside ``exact_diffusers``: float32 means float64."""

    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


@contextlib.contextmanager
def noise_drawn_in_float32(*modules):
    """``randn_tensor`` in ``modules`` draws float32 noise and widens it (torch's float64 stream differs)."""
    originals = [m.randn_tensor for m in modules]
    orig = originals[0]

    def randn(shape, generator=None, device=None, dtype=None, **kw):
        draw = torch.float32 if dtype in (torch.float64, torch.float32) else dtype
        return orig(shape, generator=generator, device=device, dtype=draw, **kw).to(dtype)

    for m in modules:
        m.randn_tensor = randn
    try:
        yield
    finally:
        for m, o in zip(modules, originals):
            m.randn_tensor = o


@contextlib.contextmanager
def exact_diffusers(module):
    """Run diffusers' step formulas in float64 (its ``sample.to(torch.float32)`` included), with the noise drawn
    as float32 and widened, so a float64 run is the exact-arithmetic twin of the float32 run."""
    orig_torch = module.torch
    module.torch = _Float64Torch()
    try:
        with noise_drawn_in_float32(module):
            yield
    finally:
        module.torch = orig_torch


def run_loop(cls, config, steps, dtype, exact_module=None, noise_arg=False, begin=None, check_fused=True,
             backend=None, device=None):
    """The sampling loop; ``exact_module``: diffusers' steps in float64 (the ground truth of its rounding)."""
    sched = cls(**config)
    if backend is not None:
        sched.pydiff_backend = backend
    sched.set_timesteps(steps, device=device)
    if exact_module is not None:
        sched.sigmas = sched.sigmas.double()
    timesteps = sched.timesteps
    if begin is not None:
        sched.set_begin_index(begin)
        timesteps = timesteps[begin:]
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    for t in timesteps:
        m = toy_model(x, t, sched)
        kw = {"generator": gen}
        if noise_arg:
            kw = {"variance_noise": torch.randn(SHAPE, generator=gen).to(device=device, dtype=dtype)}
        with exact_diffusers(exact_module) if exact_module is not None else contextlib.nullcontext():
            x = sched.step(m, t, x, **kw).prev_sample
        if check_fused:
            assert getattr(sched, "last_fallback_reason", None) is None, sched.last_fallback_reason
    return x


def assert_fp32_parity(kind, config, steps, **kw):
    """1e-5 relative L2 against diffusers in float32 (worst case 2.1e-6 on 2026-11-26).

    It holds because the rows round alpha, sigma and lambda in float32 as diffusers does
    (pydiff.plans.dpm_solver.points_from_sigmas); with float64 scalars a singlestep-3 case differed by 1.15e-5."""
    ours_cls, ref_cls, module = PAIRS[kind]
    ours = run_loop(ours_cls, config, steps, torch.float32, **kw)
    ref = run_loop(ref_cls, config, steps, torch.float32, **kw)
    err = rel_l2(ours, ref)
    assert err < 1e-5, err
    return err


def _cases(options):
    return [pytest.param(cfg, steps, id=f"{i}-{steps}") for i, cfg in enumerate(options) for steps in STEPS]


MS_CASES, SS_CASES = _cases(MS_OPTIONS), _cases(SS_OPTIONS)
assert len(MS_CASES) >= 40 and len(SS_CASES) >= 40


@pytest.mark.parametrize("config,steps", MS_CASES)
def test_multistep_matches_diffusers_fp32(config, steps):
    assert_fp32_parity("multistep", config, steps)


@pytest.mark.parametrize("config,steps", SS_CASES)
def test_singlestep_matches_diffusers_fp32(config, steps):
    assert_fp32_parity("singlestep", config, steps)


@pytest.mark.parametrize("kind,config", [pytest.param("multistep", c, id=f"ms{i}") for i, c in enumerate(MS_OPTIONS)]
                         + [pytest.param("singlestep", c, id=f"ss{i}") for i, c in enumerate(SS_OPTIONS)])
def test_float64_equals_diffusers_exact_arithmetic(kind, config, monkeypatch):
    """In float64 the fused rows reproduce diffusers' update formulas to rounding: every coefficient is right.

    (With exact scalars: by default the drop-ins round alpha, sigma, lambda in float32 like diffusers.)"""
    ours_cls, ref_cls, module = PAIRS[kind]
    monkeypatch.setattr(ours_cls, "pydiff_float64_scalars", True)
    for steps in (10, 25):
        with noise_drawn_in_float32(pss_mod):
            ours = run_loop(ours_cls, config, steps, torch.float64)
        truth = run_loop(ref_cls, config, steps, torch.float64, exact_module=module)
        assert rel_l2(ours, truth) < 1e-12


def _fp16_rule(kind, config, steps):
    ours_cls, ref_cls, _ = PAIRS[kind]
    ref32 = run_loop(ref_cls, config, steps, torch.float32)
    ref16 = run_loop(ref_cls, config, steps, torch.float16)
    ours16 = run_loop(ours_cls, config, steps, torch.float16)
    assert ours16.dtype == torch.float16
    bound = max(2e-3, 2.0 * rel_l2(ref16, ref32))
    assert rel_l2(ours16, ref32) <= bound


@pytest.mark.parametrize("config,steps", MS_CASES[::3])
def test_multistep_fp16_error_within_twice_diffusers(config, steps):
    _fp16_rule("multistep", config, steps)


@pytest.mark.parametrize("config,steps", SS_CASES[::3])
def test_singlestep_fp16_error_within_twice_diffusers(config, steps):
    _fp16_rule("singlestep", config, steps)


@pytest.mark.parametrize("config", [{"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
                                    {"algorithm_type": "sde-dpmsolver", **MIN}])
def test_multistep_variance_noise_argument(config):
    assert_fp32_parity("multistep", config, 10, noise_arg=True)


@pytest.mark.parametrize("kind", ["multistep", "singlestep"])
@pytest.mark.parametrize("begin", [3, 4])
def test_set_begin_index_and_mid_schedule_start(kind, begin):
    """img2img: set_begin_index, or (without it) the first timestep looked up like diffusers looks it up."""
    ours_cls, ref_cls, _ = PAIRS[kind]
    cfg = {"solver_order": 3}
    ours = run_loop(ours_cls, cfg, 20, torch.float32, begin=begin)
    ref = run_loop(ref_cls, cfg, 20, torch.float32, begin=begin)
    assert rel_l2(ours, ref) < 1e-5
    # no begin index: step() is first called with timesteps[begin]
    scheds = [c(**cfg) for c in (ours_cls, ref_cls)]
    outs = []
    for sched in scheds:
        sched.set_timesteps(20)
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
        for t in sched.timesteps[begin:]:
            x = sched.step(toy_model(x, t, sched), t, x).prev_sample
        outs.append(x)
    assert scheds[0].last_fallback_reason is None and scheds[0].step_index == scheds[1].step_index == 20
    assert rel_l2(*outs) < 1e-5


@pytest.mark.parametrize("kind,config", [("multistep", {"solver_order": 3}), ("singlestep", {"solver_order": 3}),
                                         ("multistep", {"solver_order": 2, "algorithm_type": "sde-dpmsolver++"})])
def test_state_matches_diffusers_and_history_uses_order_minus_one_buffers(kind, config):
    """model_outputs, step_index, lower_order_nums / sample match diffusers' after every step (float64, against
    diffusers' exact arithmetic); the converted outputs rotate through solver_order - 1 tensors."""
    ours_cls, ref_cls, module = PAIRS[kind]
    a, b = ours_cls(**config), ref_cls(**config)
    a.pydiff_float64_scalars = True  # exact scalars, to compare with diffusers' exact arithmetic
    for s in (a, b):
        s.set_timesteps(10)
    b.sigmas = b.sigmas.double()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ga, gb = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    seen = set()
    for t in a.timesteps:
        m = toy_model(x, t, a)
        xa = a.step(m, t, x, generator=ga).prev_sample
        with exact_diffusers(module):
            xb = b.step(m, t, x, generator=gb).prev_sample
        assert a.step_index == b.step_index
        assert getattr(a, "lower_order_nums", 0) == getattr(b, "lower_order_nums", 0)
        assert rel_l2(a.model_outputs[-1], b.model_outputs[-1]) < 1e-12
        if kind == "singlestep":
            assert a.sample is b.sample
        seen.update(id(o) for o in a.model_outputs if o is not None)
        assert rel_l2(xa, xb) < 1e-12
        x = xb
    assert len(seen) == a.config.solver_order - 1


@pytest.mark.parametrize("kind", ["multistep", "singlestep"])
def test_fused_and_diffusers_steps_can_alternate(kind):
    """model_outputs is the shared state: a parent step in the middle of a fused run changes nothing."""
    ours_cls, ref_cls, _ = PAIRS[kind]
    cfg = {"solver_order": 3, "prediction_type": "sample"}  # sample: diffusers stores the caller's tensor
    a, b = ours_cls(**cfg), ref_cls(**cfg)
    for s in (a, b):
        s.set_timesteps(12)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    given = []
    for k, t in enumerate(a.timesteps):
        m = toy_model(x, t, a)
        given.append((m, m.clone()))
        xa = (ref_cls.step(a, m, t, x) if k in (3, 4, 7) else a.step(m, t, x)).prev_sample
        xb = b.step(m, t, x).prev_sample
        assert rel_l2(xa, xb) < 1e-5
        x = xb
    assert all(torch.equal(m, kept) for m, kept in given)  # the caller's model outputs are never overwritten


@pytest.mark.parametrize("kind,config", [
    ("multistep", {"solver_order": 3, **THR, "prediction_type": "v_prediction"}),
    ("multistep", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    ("multistep", {"algorithm_type": "dpmsolver", "solver_order": 3, **MIN}),
    ("singlestep", {"solver_order": 3, **THR}),
    ("singlestep", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
])
def test_step_never_syncs(kind, config, monkeypatch):
    """CPU stand-in for the GPU sync check: step() calls neither .item() nor .nonzero() (diffusers' first-step
    index lookup does both), with tensor timesteps; and it runs exactly one fused_step per step."""
    ours_cls, ref_cls, _ = PAIRS[kind]
    ref = run_loop(ref_cls, config, 10, torch.float32)
    sched = ours_cls(**config)
    sched.set_timesteps(10)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    module = dms_pd  # both drop-ins step through dpmsolver_multistep.FusedDPMStep
    calls = []
    real = module.fused_step
    monkeypatch.setattr(module, "fused_step", lambda *a, **k: calls.append(1) or real(*a, **k))

    def forbidden(*a, **k):
        raise AssertionError("host sync inside step()")

    for t in sched.timesteps:
        m = toy_model(x, t, sched)  # the toy model reads t itself: outside the patched region
        with monkeypatch.context() as mp:
            mp.setattr(torch.Tensor, "item", forbidden)
            mp.setattr(torch.Tensor, "nonzero", forbidden)
            mp.setattr(torch.Tensor, "tolist", forbidden)
            x = sched.step(m, t, x, generator=gen).prev_sample
        assert sched.last_fallback_reason is None
    assert len(calls) == len(sched.timesteps)  # one fused kernel per step
    assert rel_l2(x, ref) < 1e-5


@pytest.mark.parametrize("backend", [pytest.param("reference", id="reference")] + backend_params())
@pytest.mark.parametrize("kind,config", [
    ("multistep", {"solver_order": 3, "prediction_type": "v_prediction", "thresholding": True}),
    ("multistep", {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"}),
    ("singlestep", {"solver_order": 3, "solver_type": "heun"}),
    ("singlestep", {"algorithm_type": "sde-dpmsolver++", **THR}),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_dropins_on_each_backend(backend, kind, config, dtype):
    """Each backend drives the whole loop on its device (timesteps there too) and agrees with diffusers."""
    device = backend_device(backend)
    ours_cls, ref_cls, _ = PAIRS[kind]
    ours = run_loop(ours_cls, config, 10, dtype, backend=backend, device=device)
    ref = run_loop(ref_cls, config, 10, torch.float32, device=device)
    if dtype == torch.float32:
        assert rel_l2(ours, ref) < 1e-5
    else:
        assert rel_l2(ours, ref) < 3e-2


@pytest.mark.gpu
@pytest.mark.parametrize("kind,config", [
    ("multistep", {"solver_order": 3}),
    ("multistep", {"algorithm_type": "sde-dpmsolver++", "prediction_type": "v_prediction", "thresholding": True}),
    ("singlestep", {"solver_order": 3, "solver_type": "heun"}),
    ("singlestep", {"algorithm_type": "sde-dpmsolver++"}),
])
def test_gpu_loop_has_no_host_sync(kind, config):
    """On a GPU, with timesteps on the device and a CUDA generator, no step (the first included) syncs."""
    sched = PAIRS[kind][0](**config)
    sched.set_timesteps(10, device="cuda")  # uploads the coefficient table
    x = torch.randn(2, 4, 32, 32, device="cuda", dtype=torch.float16)
    gen = torch.Generator("cuda").manual_seed(0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in sched.timesteps:
            x = sched.step(x * 0.5, t, x, generator=gen).prev_sample
            assert sched.last_fallback_reason is None
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(x).all()


def test_device_timestep_is_not_read():
    """A timestep tensor off the CPU is never read (a sync): the run is taken to start at the first step."""
    from pydiff.diffusers.dpmsolver_multistep import host_step_index
    sched = pd.DPMSolverMultistepScheduler()
    sched.set_timesteps(10)
    assert host_step_index(sched, torch.tensor(999, device="meta")) == 0
    assert host_step_index(sched, sched.timesteps[4]) == 4
    assert host_step_index(sched, 12345) == 9  # diffusers: absent -> the last step
    sched.set_begin_index(2)
    assert host_step_index(sched, torch.tensor(999, device="meta")) == 2


# ---------------------------------------------------------------------------------------------- fallbacks

def _compare_with_parent(kind, config, steps=10, model=None, expect_reason=None):
    ours_cls, ref_cls, _ = PAIRS[kind]
    results = []
    for cls in (ours_cls, ref_cls):
        sched = cls(**config)
        sched.set_timesteps(steps)
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
        gen = torch.Generator().manual_seed(1)
        try:
            for t in sched.timesteps:
                m = model(x, t, sched) if model else toy_model(x, t, sched)
                x = sched.step(m, t, x, generator=gen).prev_sample
            results.append(x)
        except Exception as e:  # noqa: BLE001 - the fallback must fail exactly like diffusers
            results.append(type(e))
        if cls is ours_cls:
            assert expect_reason in sched.last_fallback_reason
    if isinstance(results[1], type):
        assert results[0] is results[1]
    else:
        torch.testing.assert_close(results[0], results[1])


def _learned(x, t, sched):
    m = toy_model(x, t, sched)
    return torch.cat([m, torch.zeros_like(m)], dim=1)


@pytest.mark.parametrize("kind,config,reason,model", [
    ("multistep", {"variance_type": "learned_range"}, "learned_range", _learned),
    ("multistep", {"use_exponential_sigmas": True}, "use_exponential_sigmas", None),
    ("multistep", {"use_beta_sigmas": True}, "use_beta_sigmas", None),
    ("multistep", {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}, "use_flow_sigmas", None),
    ("multistep", {"prediction_type": "flow_prediction"}, "flow_prediction", None),
    ("multistep", {"solver_order": 4}, "solver_order=4", None),
    ("multistep", {"algorithm_type": "sde-dpmsolver", "solver_order": 3, **MIN}, "sde-dpmsolver", None),
    ("multistep", {"algorithm_type": "dpmsolver", "solver_order": 2, "thresholding": True, **MIN}, "thresholding",
     None),
    ("singlestep", {"variance_type": "learned"}, "learned", _learned),
    ("singlestep", {"use_exponential_sigmas": True}, "use_exponential_sigmas", None),
    ("singlestep", {"use_beta_sigmas": True, "solver_order": 3}, "use_beta_sigmas", None),
    ("singlestep", {"algorithm_type": "dpmsolver", "thresholding": True, **MIN}, "thresholding", None),
])
def test_unsupported_options_fall_back_to_diffusers(kind, config, reason, model):
    _compare_with_parent(kind, config, model=model, expect_reason=reason)


@pytest.mark.parametrize("kind", ["multistep", "singlestep"])
def test_step_past_the_end_falls_back_and_raises_like_diffusers(kind):
    ours_cls, _, _ = PAIRS[kind]
    sched = ours_cls()
    sched.set_timesteps(5)
    x = torch.randn(SHAPE)
    for t in sched.timesteps:
        x = sched.step(toy_model(x, t, sched), t, x).prev_sample
    with pytest.raises(IndexError):
        sched.step(x, sched.timesteps[-1], x)
    assert "past the last step" in sched.last_fallback_reason


def test_fallback_is_logged(caplog):
    sched = pd.DPMSolverMultistepScheduler(solver_order=4)
    sched.set_timesteps(5)
    x = torch.randn(SHAPE)
    with caplog.at_level(logging.DEBUG, logger="pydiff.diffusers"):
        sched.step(toy_model(x, sched.timesteps[0], sched), sched.timesteps[0], x)
    assert "solver_order=4" in caplog.text


# ------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kind", ["multistep", "singlestep"])
@pytest.mark.parametrize("option,value", [
    ("algorithm_type", "dpmsolver+++"), ("solver_type", "rk4"), ("prediction_type", "noise"),
    ("final_sigmas_type", "one"), ("beta_schedule", "cosine"), ("variance_type", "fixed_small"),
    ("solver_order", 0), ("solver_order", 2.0), ("time_shift_type", "linear"),
])
def test_unknown_option_values_raise_naming_the_option(kind, option, value):
    with pytest.raises(ValueError, match=option):
        PAIRS[kind][0](**{option: value})


def test_bad_options_specific_to_each_scheduler():
    with pytest.raises(ValueError, match="timestep_spacing"):
        pd.DPMSolverMultistepScheduler(timestep_spacing="uniform")
    with pytest.raises(ValueError, match="solver_order"):
        pd.DPMSolverSinglestepScheduler(solver_order=4)  # diffusers' singlestep supports orders 1-3 only
    with pytest.raises(ValueError, match="algorithm_type"):
        pd.DPMSolverSinglestepScheduler(algorithm_type="sde-dpmsolver")  # not in diffusers' singlestep
    pd.DPMSolverMultistepScheduler(solver_order=4)  # accepted (diffusers accepts it), falls back


@pytest.mark.parametrize("kind", ["multistep", "singlestep"])
def test_bad_step_inputs(kind):
    sched = PAIRS[kind][0]()
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match="set_timesteps"):
        sched.step(x, 999, x)
    with pytest.raises(ValueError, match="num_inference_steps"):
        sched.set_timesteps(0)
    with pytest.raises(TypeError, match="num_inference_steps"):
        sched.set_timesteps(10.0)
    sched.set_timesteps(10)
    t = sched.timesteps[0]
    with pytest.raises(ValueError, match="model_output has shape"):
        sched.step(torch.randn(2, 3, 8, 4), t, x)
    with pytest.raises(TypeError, match="model_output must be a torch.Tensor"):
        sched.step(x.numpy(), t, x)
    with pytest.raises(ValueError, match="timestep"):
        sched.step(x, torch.stack([t, t]), x)  # per-sample timesteps: diffusers fails too
    assert sched.step_index is None  # a rejected call changes no state
    # a float16 model output with a float32 sample (autocast): diffusers promotes, and so does the drop-in
    assert sched.step(x.half(), t, x).prev_sample.dtype == torch.float32


def test_bad_variance_noise_shape_falls_back():
    sched = pd.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")
    sched.set_timesteps(10)
    x = torch.randn(SHAPE)
    t = sched.timesteps[0]
    sched.step(toy_model(x, t, sched), t, x, variance_noise=torch.randn(1, 3, 8, 8))  # diffusers broadcasts it
    assert "variance_noise" in sched.last_fallback_reason


# ------------------------------------------------------------------------------------ configs and compat

def test_from_config_round_trip_and_other_schedulers_configs():
    ref = diffusers.DPMSolverMultistepScheduler(solver_order=3, algorithm_type="sde-dpmsolver++",
                                                use_karras_sigmas=True, **SD)
    ours = pd.DPMSolverMultistepScheduler.from_config(ref.config)
    assert isinstance(ours, diffusers.DPMSolverMultistepScheduler)
    assert dict(ours.config) == dict(ref.config)
    back = diffusers.DPMSolverSinglestepScheduler.from_config(pd.DPMSolverSinglestepScheduler(solver_order=3).config)
    assert back.config.solver_order == 3
    # pipelines swap schedulers through from_config: DEIS's and UniPC's configs map to dpmsolver++/midpoint
    for other in (diffusers.DEISMultistepScheduler(), diffusers.UniPCMultistepScheduler()):
        cfg = {k: v for k, v in pd.DPMSolverMultistepScheduler.from_config(other.config).config.items()
               if not k.startswith("_")}
        assert cfg["algorithm_type"] == "dpmsolver++" and cfg["solver_type"] == "midpoint"
        assert_fp32_parity("multistep", cfg, 10)


@pytest.mark.parametrize("kind", ["multistep", "singlestep"])
def test_custom_timesteps_and_return_dict_false(kind):
    custom = [999, 800, 650, 400, 180, 20]
    outs = []
    for cls in PAIRS[kind][:2]:
        s = cls(solver_order=3, final_sigmas_type="sigma_min")
        s.set_timesteps(timesteps=custom, device="cpu")
        assert s.timesteps.dtype == torch.int64 and s.timesteps.tolist() == custom
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
        for t in s.timesteps:
            out = s.step(toy_model(x, t, s), t, x, return_dict=False)
            assert isinstance(out, tuple) and len(out) == 1
            x = out[0]
        assert getattr(s, "last_fallback_reason", None) is None
        outs.append(x)
    assert rel_l2(*outs) < 1e-5


def test_duplicate_first_timestep_follows_diffusers_lookup():
    """diffusers picks the second match when the first timestep occurs twice (karras + squaredcos rounds
    several sigmas to 998): the run then starts at step 1 and runs past the end, in both."""
    cfg = {"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True}
    sched = pd.DPMSolverMultistepScheduler(**cfg)
    sched.set_timesteps(10)
    x = torch.randn(SHAPE)
    sched.step(toy_model(x, sched.timesteps[0], sched), sched.timesteps[0], x)
    ref = diffusers.DPMSolverMultistepScheduler(**cfg)
    ref.set_timesteps(10)
    ref.step(toy_model(x, ref.timesteps[0], ref), ref.timesteps[0], x)
    assert sched.step_index == ref.step_index == 2


def test_final_step_to_sigma_zero_returns_x0():
    """dpmsolver++ order 1 into sigma = 0: x' = x0 exactly (A = 0, B0 = 1), from the named columns."""
    import pydiff.plans.dpm_solver_diffusers as plans
    from pydiff.ops import COL
    from pydiff.schedules import vp_from_ve_sigma
    row = plans.multistep_row(np.array([14.0, 2.0, 0.0]), 1, 1, algorithm="dpmsolver++", solver_type="midpoint",
                              prediction_type="epsilon")
    assert row[COL["B0"]] == pytest.approx(1.0) and row[COL["A"]] == 0.0 and row[COL["C"]] == 0.0
    a, s, _ = vp_from_ve_sigma(np.float64(2.0))  # diffusers' alpha_t, sigma_t of sigma = 2
    # x0 = (x - sigma eps) / alpha, the division last (column S), as diffusers computes it
    assert (row[COL["P"]], row[COL["Q"]], row[COL["S"]]) == pytest.approx((1.0, -s, 1 / a))
