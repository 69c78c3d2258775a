"""pydiff.diffusers.ScoreSdeVeScheduler / ScoreSdeVpScheduler against diffusers' own classes: full
predictor-corrector loops with the same generator, the corrector's noise and norms, the sigma overflow, Philox
noise, bad input."""
import logging
import math

import numpy as np
import pytest
import torch
import diffusers
from diffusers.schedulers.deprecated.scheduling_sde_vp import ScoreSdeVpScheduler as DiffusersVP

import pydiff
import pydiff.diffusers as pd
from helpers import backend_params, rel_l2
from pydiff.diffusers._common import philox_key
from pydiff.ops import philox_normal, sumsq

SHAPE = (2, 3, 8, 8)
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


def ve_score(x, sigma):
    """The score of N(0, 1) data noised to level ``sigma`` plus a smooth nonlinearity in the unit-scale variable
    ``u = x / sqrt(1 + sigma^2)`` (a nonlinearity of ``x`` itself, sin(3x) at |x| ~ 1e3, would make the loop
    amplify float32 rounding ~100x per step, and no two implementations could agree)."""
    r = torch.sqrt(1.0 + sigma.double().reshape(-1, *([1] * (x.ndim - 1))) ** 2)
    u = x.double() / r
    return ((-u + 0.05 * torch.sin(3.0 * u)) / r).to(x.dtype)


def ve_loop(cls, cfg, steps, *, dtype=torch.float32, seed=0, backend=None, noise="diffusers", shape=SHAPE):
    """diffusers' ScoreSdeVePipeline loop (set_timesteps, set_sigmas, correct_steps correctors then one
    predictor per timestep, one generator for everything)."""
    s = cls(**cfg)
    if backend is not None:
        s.pydiff_backend = backend
    if noise != "diffusers":
        s.pydiff_noise = noise
    s.set_timesteps(steps)
    s.set_sigmas(steps)
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * s.init_noise_sigma).to(dtype)
    mean = None
    for i, t in enumerate(s.timesteps):
        sigma = s.sigmas[i] * torch.ones(shape[0])
        for _ in range(s.config.correct_steps):
            x = s.step_correct(ve_score(x, sigma), x, generator=g).prev_sample
        out = s.step_pred(ve_score(x, sigma), t, x, generator=g)
        x, mean = out.prev_sample, out.prev_sample_mean
    return x, mean


VE_CONFIGS = [
    {},
    {"correct_steps": 0},
    {"correct_steps": 2},
    {"snr": 0.075},
    {"snr": 0.3, "correct_steps": 2},
    {"snr": 0.16, "sigma_min": 0.01, "sigma_max": 50.0},           # score_sde's CIFAR-10 VE config
    {"sigma_min": 0.01, "sigma_max": 378.0},                        # CelebA 64
    {"sigma_min": 0.005, "sigma_max": 90.0, "snr": 0.17},
    {"sigma_max": 1.0, "sigma_min": 0.001},
    {"sigma_max": 10.0, "sigma_min": 0.1, "correct_steps": 3},
    {"sampling_eps": 1e-3},
    {"sampling_eps": 0.05, "correct_steps": 2},
    {"sampling_eps": 0.3},
    {"sampling_eps": 1e-7, "snr": 0.2},
    {"num_train_timesteps": 1000},
    {"num_train_timesteps": 1000, "sigma_max": 348.0, "correct_steps": 2},
    {"num_train_timesteps": 10, "snr": 0.05},
    {"num_train_timesteps": 4000, "sampling_eps": 1e-4, "sigma_min": 0.02},
    {"snr": 0.0},                                                   # a zero step: the corrector is the identity
    {"sigma_min": 1e-4, "sigma_max": 1e4, "correct_steps": 1, "snr": 0.1},
    {"sigma_min": 0.5, "sigma_max": 2.0, "correct_steps": 2, "sampling_eps": 0.01},
]


@pytest.mark.parametrize("steps", [10, 30])
@pytest.mark.parametrize("cfg", VE_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "defaults")
def test_ve_pc_loop_matches_diffusers(cfg, steps):
    ref, ref_mean = ve_loop(diffusers.ScoreSdeVeScheduler, cfg, steps)
    got, got_mean = ve_loop(pd.ScoreSdeVeScheduler, cfg, steps)
    assert torch.isfinite(ref).all() and got.dtype == ref.dtype and got.shape == ref.shape
    assert rel_l2(got, ref) < 1e-5
    assert rel_l2(got_mean, ref_mean) < 1e-5


@pytest.mark.parametrize("cfg", [{}, {"correct_steps": 2, "snr": 0.3}, {"sampling_eps": 0.05}])
def test_ve_pc_loop_float64(cfg):
    # diffusers' corrector takes float32 noise and a float32 step size whatever the data: 1e-9 per corrector step
    ref, _ = ve_loop(diffusers.ScoreSdeVeScheduler, cfg, 10, dtype=torch.float64)
    got, _ = ve_loop(pd.ScoreSdeVeScheduler, cfg, 10, dtype=torch.float64)
    assert got.dtype == torch.float64 and rel_l2(got, ref) < 1e-5


@pytest.mark.parametrize("backend", ["reference"] + backend_params(("triton",)))
def test_ve_pc_loop_other_backends(backend):
    ref, _ = ve_loop(diffusers.ScoreSdeVeScheduler, {"correct_steps": 2}, 5)
    got, _ = ve_loop(pd.ScoreSdeVeScheduler, {"correct_steps": 2}, 5, backend=backend)
    assert rel_l2(got, ref) < 1e-5


def test_ve_single_steps_agree_to_float32_rounding():
    """step_pred multiplies by diffusers' float32 scalars in diffusers' order of operations: equal up to a
    contracted multiply-add (one rounding less) in the kernel."""
    a, b = diffusers.ScoreSdeVeScheduler(), pd.ScoreSdeVeScheduler()
    for s in (a, b):
        s.set_timesteps(12)
        s.set_sigmas(12)
    g = torch.Generator().manual_seed(3)
    x, m = torch.randn(SHAPE, generator=g) * 20, torch.randn(SHAPE, generator=g)
    for t in a.timesteps:
        ra = a.step_pred(m, t, x, generator=torch.Generator().manual_seed(1))
        rb = b.step_pred(m, t, x, generator=torch.Generator().manual_seed(1))
        assert rel_l2(rb.prev_sample, ra.prev_sample) < 1e-7 and rel_l2(rb.prev_sample_mean, ra.prev_sample_mean) < 1e-7
    ca = a.step_correct(m, x, generator=torch.Generator().manual_seed(1), return_dict=False)
    cb = b.step_correct(m, x, generator=torch.Generator().manual_seed(1), return_dict=False)
    assert isinstance(cb, tuple) and len(cb) == 1 and rel_l2(cb[0], ca[0]) < 1e-7


def test_ve_corrector_draws_its_noise_like_diffusers():
    """diffusers draws the corrector's z on the CPU in float32 without a device or dtype (global CPU RNG when no
    generator is given): the drop-in consumes the same numbers, so the RNG states after the step agree too."""
    a, b = diffusers.ScoreSdeVeScheduler(), pd.ScoreSdeVeScheduler()
    for s in (a, b):
        s.set_timesteps(5)
    x, m = torch.randn(SHAPE, dtype=torch.float64), torch.randn(SHAPE, dtype=torch.float64)
    torch.manual_seed(7)
    ra = a.step_correct(m, x).prev_sample
    after_a = torch.randn(3)
    torch.manual_seed(7)
    rb = b.step_correct(m, x).prev_sample
    after_b = torch.randn(3)
    assert torch.equal(after_a, after_b) and rb.dtype == ra.dtype == torch.float64
    # float64 data, but diffusers' step size is a float32 number (one float32 ulp: 6e-8)
    assert rel_l2(rb, ra) < 1e-7
    # the same with a list of per-sample generators
    ra = a.step_correct(m, x, generator=[torch.Generator().manual_seed(k) for k in range(2)]).prev_sample
    rb = b.step_correct(m, x, generator=[torch.Generator().manual_seed(k) for k in range(2)]).prev_sample
    assert rel_l2(rb, ra) < 1e-7


def test_ve_corrector_step_size_uses_batch_means_of_norms():
    """eps = 2 (snr mean_b||z_b|| / mean_b||m_b||)^2 -- checked against that formula written out here on a batch
    whose samples have very different norms (so a per-sample or a whole-batch norm would fail)."""
    s = pd.ScoreSdeVeScheduler(snr=0.2)
    s.set_timesteps(4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 7, generator=g, dtype=torch.float64)
    m = torch.randn(3, 5, 7, generator=g, dtype=torch.float64) * torch.tensor([0.1, 1.0, 30.0],
                                                                              dtype=torch.float64)[:, None, None]
    z = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(5)).double()
    got = s.step_correct(m, x, generator=torch.Generator().manual_seed(5)).prev_sample
    eps = 2 * (0.2 * z.flatten(1).norm(dim=1).mean() / m.flatten(1).norm(dim=1).mean()) ** 2
    eps = float(torch.tensor(eps.item(), dtype=torch.float32))  # diffusers' step size is a float32 number
    expect = x + eps * m + math.sqrt(2 * eps) * z
    assert rel_l2(got, expect) < 1e-7


def test_ve_broadcast_layouts_and_per_sample_timesteps():
    a, b = diffusers.ScoreSdeVeScheduler(), pd.ScoreSdeVeScheduler()
    for s in (a, b):
        s.set_timesteps(10)
        s.set_sigmas(10)
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(4, 3, 6, 6, generator=g) * 5).to(memory_format=torch.channels_last)
    m = torch.randn(1, 3, 6, 6, generator=g)   # a batch-1 model output broadcast over the batch
    t = a.timesteps[[0, 3, 5, 9]]              # one timestep per sample
    for args in ((m, a.timesteps[2], x), (m.expand(4, 3, 6, 6).contiguous(), t, x)):
        ra = a.step_pred(*args, generator=torch.Generator().manual_seed(2))
        rb = b.step_pred(*args, generator=torch.Generator().manual_seed(2))
        assert rb.prev_sample.shape == ra.prev_sample.shape
        assert rb.prev_sample.stride() == ra.prev_sample.stride()
        assert rel_l2(rb.prev_sample, ra.prev_sample) < 1e-6 and rel_l2(rb.prev_sample_mean, ra.prev_sample_mean) < 1e-6
    ra = a.step_correct(m, x, generator=torch.Generator().manual_seed(2)).prev_sample
    rb = b.step_correct(m, x, generator=torch.Generator().manual_seed(2)).prev_sample
    assert rb.stride() == ra.stride() and rel_l2(rb, ra) < 1e-6
    assert b.last_fallback_reason is None


def test_ve_half_precision():
    """A float16 sample: diffusers' float32 scalars promote the predictor's result to float32, which the fused
    step reproduces; the corrector (half-precision norms) runs diffusers' own code and says so."""
    a, b = diffusers.ScoreSdeVeScheduler(), pd.ScoreSdeVeScheduler()
    for s in (a, b):
        s.set_timesteps(10)
        s.set_sigmas(10)
    x, m = (torch.randn(SHAPE) * 3).half(), torch.randn(SHAPE).half()
    ra = a.step_pred(m, a.timesteps[4], x, generator=torch.Generator().manual_seed(0))
    rb = b.step_pred(m, a.timesteps[4], x, generator=torch.Generator().manual_seed(0))
    assert rb.prev_sample.dtype == ra.prev_sample.dtype == torch.float32
    assert rel_l2(rb.prev_sample, ra.prev_sample) < 1e-6 and b.last_fallback_reason is None
    ra = a.step_correct(m, x, generator=torch.Generator().manual_seed(0)).prev_sample
    rb = b.step_correct(m, x, generator=torch.Generator().manual_seed(0)).prev_sample
    assert torch.equal(ra, rb) and "norms" in b.last_fallback_reason
    assert "norms" in pydiff.explain(b)


def test_ve_off_range_timestep_falls_back_like_diffusers(caplog):
    a, b = diffusers.ScoreSdeVeScheduler(), pd.ScoreSdeVeScheduler()
    for s in (a, b):
        s.set_timesteps(10)
        s.set_sigmas(10)
    x, m = torch.randn(SHAPE), torch.randn(SHAPE)
    with caplog.at_level(logging.WARNING, logger="pydiff.diffusers"):
        with pytest.raises(IndexError):
            a.step_pred(m, 1.5, x)
        with pytest.raises(IndexError):
            b.step_pred(m, 1.5, x)
    assert "outside" in b.last_fallback_reason and "diffusers' own" in caplog.text


def test_ve_add_noise_and_config_round_trip(tmp_path):
    a, b = diffusers.ScoreSdeVeScheduler(sigma_max=90.0), pd.ScoreSdeVeScheduler(sigma_max=90.0)
    x, z = torch.randn(SHAPE), torch.randn(SHAPE)
    ts = torch.tensor([3, 1500])
    assert torch.equal(a.add_noise(x, z, ts), b.add_noise(x, z, ts))
    b.save_pretrained(tmp_path)
    c = pd.ScoreSdeVeScheduler.from_pretrained(tmp_path)
    assert type(c) is pd.ScoreSdeVeScheduler and c.config.sigma_max == 90.0
    public = lambda s: {k: v for k, v in s.config.items() if not k.startswith("_")}  # noqa: E731
    assert public(diffusers.ScoreSdeVeScheduler.from_config(b.config)) == public(a)
    assert pd.ScoreSdeVeScheduler.__module__ == "pydiff.diffusers"


def test_ve_pipeline(unet):
    """diffusers' ScoreSdeVePipeline with the drop-in: the same image for the same generator."""
    pipe = diffusers.ScoreSdeVePipeline(unet=unet, scheduler=diffusers.ScoreSdeVeScheduler(sigma_max=50.0))
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0),
               output_type="np").images
    pipe.scheduler = pd.ScoreSdeVeScheduler.from_config(pipe.scheduler.config)
    got = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0),
               output_type="np").images
    assert np.abs(got - ref).max() < 1e-5 and pipe.scheduler.last_fallback_reason is None


# ----------------------------------------------------------------------------- the sigma overflow
def test_set_sigmas_overflow_fixed():
    """diffusers evaluates ``sigma_min * (sigma_max / sigma_min) ** t`` with a float32 power: once the ratio
    exceeds 3.4e38 its base is inf and so is every sigma, though each lies in [sigma_min, sigma_max]. The
    drop-in's log-space form is finite and equals the float64 value of the formula."""
    cfg = {"sigma_min": 1e-30, "sigma_max": 1e10}
    a, b = diffusers.ScoreSdeVeScheduler(**cfg), pd.ScoreSdeVeScheduler(**cfg)
    for s in (a, b):
        s.set_timesteps(10)
        s.set_sigmas(10)
    assert torch.isinf(a.sigmas).all()
    expect = torch.tensor([1e-30 * (1e40 ** float(t)) for t in b.timesteps], dtype=torch.float64)
    assert torch.isfinite(b.sigmas).all() and b.sigmas.dtype == torch.float32
    assert ((b.sigmas.double() - expect).abs() / expect).max() < 1e-6
    # the noise levels the steps read are diffusers' own (no overflow there) and so are the steps
    assert torch.equal(a.discrete_sigmas, b.discrete_sigmas)
    x, m = torch.randn(SHAPE), torch.randn(SHAPE)
    ra = a.step_pred(m, a.timesteps[3], x, generator=torch.Generator().manual_seed(0))
    rb = b.step_pred(m, a.timesteps[3], x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ra.prev_sample, rb.prev_sample)


@pytest.mark.parametrize("cfg", [{}, {"sampling_eps": 0.3}, {"sigma_min": 1e-4, "sigma_max": 1e4}])
def test_set_sigmas_matches_diffusers_where_it_is_finite(cfg):
    a, b = diffusers.ScoreSdeVeScheduler(**cfg), pd.ScoreSdeVeScheduler(**cfg)
    for s in (a, b):
        s.set_timesteps(25)
        s.set_sigmas(25)
    assert torch.isfinite(a.sigmas).all() and rel_l2(b.sigmas, a.sigmas) < 1e-6
    assert b.sigmas.shape == a.sigmas.shape and torch.equal(b.timesteps, a.timesteps)


def test_sigma_max_too_large_for_float32_is_named():
    s = pd.ScoreSdeVeScheduler(sigma_min=1.0, sigma_max=1e30)
    s.set_timesteps(5)
    s.set_sigmas(5)
    with pytest.raises(ValueError, match="sigma_max"):
        s.step_pred(torch.randn(SHAPE), s.timesteps[0], torch.randn(SHAPE))


# ----------------------------------------------------------------------------- Philox noise
def test_ve_philox_reproducible_and_not_diffusers_noise():
    run = lambda seed, noise="philox": ve_loop(pd.ScoreSdeVeScheduler, {"correct_steps": 2}, 6, seed=seed,  # noqa
                                               noise=noise)[0]
    first = run(3)
    assert torch.isfinite(first).all() and torch.equal(first, run(3))
    assert not torch.equal(first, run(4)) and not torch.equal(first, run(3, "diffusers"))


def test_ve_philox_corrector_norm_is_of_the_z_it_adds():
    """The corrector's ``sumsq`` regenerates the Philox ``z`` of its update: rebuilding the key from a copy of the
    generator, the step is ``x + eps m + sqrt(2 eps) z`` with ``eps`` from that very ``z``."""
    s = pd.ScoreSdeVeScheduler(snr=0.25)
    s.pydiff_noise = "philox"
    s.set_timesteps(4)
    g = torch.Generator().manual_seed(11)
    x, m = torch.randn(SHAPE, generator=g, dtype=torch.float64), torch.randn(SHAPE, generator=g, dtype=torch.float64)
    key = torch.Generator().manual_seed(0)
    key.set_state(g.get_state())
    seed, offset, _ = philox_key(key, "cpu")
    z = philox_normal(SHAPE, seed=seed, offset=offset, dtype=torch.float64)
    got = s.step_correct(m, x, generator=g).prev_sample
    assert torch.equal(g.get_state(), key.get_state())  # one key drawn, as a noise draw advances it
    sum_m2, sum_z2 = sumsq(m, seed=seed, offset=offset)
    assert torch.allclose(sum_z2, z.flatten(1).square().sum(1), rtol=1e-12)
    eps = 2 * (0.25 * z.flatten(1).norm(dim=1).mean() / m.flatten(1).norm(dim=1).mean()) ** 2
    eps = float(torch.tensor(eps.item(), dtype=torch.float32))
    assert rel_l2(got, x + eps * m + math.sqrt(2 * eps) * z) < 1e-7
    # and the predictor adds the Philox z of its own key
    s.set_sigmas(4)
    key.set_state(g.get_state())
    seed, offset, _ = philox_key(key, "cpu")
    z = philox_normal(SHAPE, seed=seed, offset=offset, dtype=torch.float64)
    out = s.step_pred(m, s.timesteps[1], x, generator=g)
    g2 = s.discrete_sigmas[2].double() ** 2 - s.discrete_sigmas[1].double() ** 2
    assert rel_l2(out.prev_sample - out.prev_sample_mean, g2.sqrt() * z) < 1e-6


# ----------------------------------------------------------------------------- VP
def vp_eps(x, t):
    """A noise prediction of N(0.3, 0.8^2) data under the VP SDE (beta 0.1..20) plus a smooth nonlinearity."""
    t = t.double().reshape(-1, *([1] * (x.ndim - 1)))
    lm = -0.25 * t ** 2 * 19.9 - 0.5 * t * 0.1
    a, std = lm.exp(), (1 - (2 * lm).exp()).sqrt()
    var = a * a * 0.64 + std * std
    eps = std * (x.double() - a * 0.3) / var + 0.02 * torch.sin(2 * x.double())
    return eps.to(x.dtype)


def vp_loop(cls, cfg, steps, *, dtype=torch.float32, seed=0, backend=None, noise="diffusers", per_sample=False):
    s = cls(**cfg)
    if backend is not None:
        s.pydiff_backend = backend
    if noise != "diffusers":
        s.pydiff_noise = noise
    s.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g).to(dtype)
    mean = None
    for t in s.timesteps:
        tt = t * torch.ones(SHAPE[0]) if per_sample else t
        x, mean = s.step_pred(vp_eps(x, tt), x, tt, generator=g)
    return x, mean


VP_CONFIGS = [{}, {"sampling_eps": 1e-5}, {"beta_min": 0.05, "beta_max": 12.0}, {"sampling_eps": 0.01},
              {"num_train_timesteps": 1000, "beta_max": 25.0}]


@pytest.mark.parametrize("steps", [10, 30])
@pytest.mark.parametrize("cfg", VP_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "defaults")
def test_vp_loop_matches_diffusers(cfg, steps):
    ref, ref_mean = vp_loop(DiffusersVP, cfg, steps)
    got, got_mean = vp_loop(pd.ScoreSdeVpScheduler, cfg, steps)
    assert torch.isfinite(ref).all() and got.dtype == ref.dtype
    assert rel_l2(got, ref) < 1e-5 and rel_l2(got_mean, ref_mean) < 1e-5


@pytest.mark.parametrize("dtype,per_sample,backend", [(torch.float64, False, None), (torch.float32, True, None),
                                                      (torch.float32, False, "reference")])
def test_vp_loop_dtypes_per_sample_times_backends(dtype, per_sample, backend):
    ref, _ = vp_loop(DiffusersVP, {}, 10, dtype=dtype, per_sample=per_sample)
    got, _ = vp_loop(pd.ScoreSdeVpScheduler, {}, 10, dtype=dtype, per_sample=per_sample, backend=backend)
    assert got.dtype == ref.dtype and rel_l2(got, ref) < (1e-12 if dtype == torch.float64 else 1e-5)


def test_vp_half_and_fallbacks():
    a, b = DiffusersVP(), pd.ScoreSdeVpScheduler()
    for s in (a, b):
        s.set_timesteps(10)
    x, m = torch.randn(SHAPE).half(), torch.randn(SHAPE).half()
    t = a.timesteps[3]
    ra = a.step_pred(m, x, t, generator=torch.Generator().manual_seed(0))
    rb = b.step_pred(m, x, t, generator=torch.Generator().manual_seed(0))
    assert rb[0].dtype == ra[0].dtype == torch.float32 and rel_l2(rb[0], ra[0]) < 1e-6
    x, m = x.float(), m.float()
    ra = a.step_pred(m, x, t.double(), generator=torch.Generator().manual_seed(0))
    rb = b.step_pred(m, x, t.double(), generator=torch.Generator().manual_seed(0))
    assert rb[0].dtype == ra[0].dtype == torch.float64 and torch.equal(ra[0], rb[0])
    assert "float64 t" in b.last_fallback_reason
    # a Python number works (diffusers' step fails on one: torch.exp of a float)
    rb = b.step_pred(m, x, float(t), generator=torch.Generator().manual_seed(0))
    ra = a.step_pred(m, x, t, generator=torch.Generator().manual_seed(0))
    assert rel_l2(rb[0], ra[0]) < 1e-6


def test_vp_philox_reproducible():
    first = vp_loop(pd.ScoreSdeVpScheduler, {}, 6, noise="philox", seed=2)[0]
    assert torch.equal(first, vp_loop(pd.ScoreSdeVpScheduler, {}, 6, noise="philox", seed=2)[0])
    assert not torch.equal(first, vp_loop(pd.ScoreSdeVpScheduler, {}, 6, seed=2)[0])


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("cls,kwargs,name", [
    (pd.ScoreSdeVeScheduler, {"sigma_min": 0.0}, "sigma_min"),
    (pd.ScoreSdeVeScheduler, {"sigma_min": 10.0, "sigma_max": 5.0}, "sigma_max"),
    (pd.ScoreSdeVeScheduler, {"sigma_max": float("inf")}, "sigma_max"),
    (pd.ScoreSdeVeScheduler, {"snr": -0.1}, "snr"),
    (pd.ScoreSdeVeScheduler, {"snr": float("nan")}, "snr"),
    (pd.ScoreSdeVeScheduler, {"sampling_eps": 0.0}, "sampling_eps"),
    (pd.ScoreSdeVeScheduler, {"sampling_eps": 1.5}, "sampling_eps"),
    (pd.ScoreSdeVeScheduler, {"correct_steps": -1}, "correct_steps"),
    (pd.ScoreSdeVeScheduler, {"num_train_timesteps": 0}, "num_train_timesteps"),
    (pd.ScoreSdeVpScheduler, {"beta_min": -0.1}, "beta_min"),
    (pd.ScoreSdeVpScheduler, {"beta_min": 5.0, "beta_max": 1.0}, "beta_max"),
    (pd.ScoreSdeVpScheduler, {"sampling_eps": 0.0}, "sampling_eps"),
])
def test_bad_config_raises_value_error_naming_it(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls(**kwargs)


@pytest.mark.parametrize("cls,kwargs,name", [
    (pd.ScoreSdeVeScheduler, {"correct_steps": 1.5}, "correct_steps"),
    (pd.ScoreSdeVeScheduler, {"snr": "0.1"}, "snr"),
    (pd.ScoreSdeVpScheduler, {"beta_max": None}, "beta_max"),
])
def test_bad_config_type_raises_type_error_naming_it(cls, kwargs, name):
    with pytest.raises(TypeError, match=name):
        cls(**kwargs)


def test_bad_call_arguments():
    s = pd.ScoreSdeVeScheduler()  # its constructor sets timesteps (diffusers' does too, through set_sigmas)
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(0)
    with pytest.raises(TypeError, match="num_inference_steps"):
        s.set_timesteps(2.5)
    with pytest.raises(ValueError, match="sampling_eps"):
        s.set_timesteps(10, sampling_eps=-1.0)
    s.set_timesteps(10)
    with pytest.raises(ValueError, match="sigma_min"):
        s.set_sigmas(10, sigma_min=-1.0)
    s.set_sigmas(10)
    with pytest.raises(ValueError, match="timestep"):
        s.step_pred(x, torch.ones(3) * 0.5, x)
    with pytest.raises(TypeError, match="model_output"):
        s.step_correct(x.numpy(), x)
    with pytest.raises(ValueError, match="broadcastable"):
        s.step_correct(torch.randn(3, 3, 8, 8), x)
    v = pd.ScoreSdeVpScheduler()
    with pytest.raises(ValueError, match="set_timesteps"):
        v.step_pred(x, x, torch.tensor(0.5))
    v.set_timesteps(10)
    with pytest.raises(ValueError, match="t must be"):
        v.step_pred(x, x, torch.ones(3) * 0.5)
    with pytest.raises(TypeError, match="t must be"):
        v.step_pred(x, x, "0.5")
    with pytest.raises(ValueError, match="pydiff_noise"):
        v.pydiff_noise = "numpy"


def test_explain_names_the_score_sde_fallbacks():
    s = pd.ScoreSdeVeScheduler()
    s.set_timesteps(5)
    s.set_sigmas(5)
    text = pydiff.explain(s)
    assert "half-precision step_correct" in text and "nothing (no step has run diffusers' own code)" in text
    x = torch.randn(2, 3, 4, dtype=torch.float16)
    s.step_correct(x, x, generator=torch.Generator().manual_seed(0))  # diffusers' code, with a logged warning
    assert "torch.float16 corrector step" in pydiff.explain(s)
    assert "float64 t" in pydiff.explain(pd.ScoreSdeVpScheduler())
