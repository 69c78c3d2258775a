"""The fused guided-diffusion loops against the float64 transcription of guided-diffusion (pydiff.testing.guided),
on a Gaussian mixture with the exact eps / x0 models and the exact noisy-classifier gradient.

With ``noise_source='torch'`` and the same seed both see the same noise, so the samples must agree to float32
rounding: 1e-4 relative (L2 over the batch). The oracle itself was checked against guided-diffusion's own code
(docs/guided.md, "Parity").
"""
import itertools

import pytest
import torch

from guided_cases import LABELS, SHAPE, make, rel

TOL = 1e-4
SPACINGS = [(100, None), (1000, "ddim10"), (1000, "ddim25"), (1000, "10,5"), (1000, "25")]
KINDS = [("p", 0.0), ("ddim", 0.0), ("ddim", 0.5), ("ddim", 1.0)]
FLAGS = list(itertools.product(["epsilon", "start_x"], ["fixed_small", "fixed_large", "learned_range"],
                               [False, True], [True, False], [False, True]))  # mean, var, cond, clip, rescale


def run_pair(cfg, kind, eta, cond, clip, seed=3, **loop):
    ours, oracle, model, cond_fn = cfg
    cf = cond_fn if cond else None
    mk = {"y": LABELS}
    torch.manual_seed(seed)
    if kind == "p":
        got = ours.p_sample_loop(model, SHAPE, clip_denoised=clip, cond_fn=cf, model_kwargs=mk, **loop)
    else:
        got = ours.ddim_sample_loop(model, SHAPE, clip_denoised=clip, cond_fn=cf, model_kwargs=mk, eta=eta, **loop)
    torch.manual_seed(seed)
    want = oracle.sample_loop(kind, model, SHAPE, clip_denoised=clip, cond_fn=cf, model_kwargs=mk, eta=eta)
    return got, want


# Every (schedule, spacing, sampler) cell, with the mean/variance/guidance/clip/rescale flags rotating through their
# 24 combinations across the cells (each combination appears at least once per sampler kind).
GRID = []
for c, ((sched, (n, spacing)), (kind, eta)) in enumerate(itertools.product(
        itertools.product(["linear", "cosine"], SPACINGS), KINDS)):
    for j in range(3):
        GRID.append((sched, n, spacing, kind, eta) + FLAGS[(3 * c + 7 * j) % len(FLAGS)])


@pytest.mark.parametrize("sched,n,spacing,kind,eta,mean,var,cond,clip,rescale", GRID)
def test_loop_matches_guided_diffusion_transcription(sched, n, spacing, kind, eta, mean, var, cond, clip, rescale):
    cfg = make(sched, n, spacing, mean, var, rescale)
    got, want = run_pair(cfg, kind, eta, cond, clip)
    assert got.dtype == torch.float32 and got.shape == SHAPE
    assert torch.isfinite(want).all()
    assert rel(got, want) < TOL


@pytest.mark.parametrize("mean,var,cond", list(itertools.product(
    ["epsilon", "start_x"], ["fixed_small", "fixed_large", "learned_range", "learned"], [False, True])))
def test_ancestral_every_mean_and_variance(mean, var, cond):
    got, want = run_pair(make("cosine", 1000, "ddim25", mean, var), "p", 0.0, cond, True)
    assert rel(got, want) < TOL


def test_cosine_eta_one_is_finite_where_float32_is_not():
    """``sqrt(1 - abar_prev - sigma^2)`` at the first step of the 1000-step cosine schedule spaced to "10,5"
    (abar = 2.4e-9, abar_prev = 0.0125): float32 rounds the radicand below zero (the reference's NaN); the float64
    rows give the finite value of the float64 transcription."""
    ours, oracle, model, _ = make("cosine", 1000, "10,5")
    a, ap = (torch.tensor(v[-1], dtype=torch.float32) for v in (ours.alphas_cumprod, ours.alphas_cumprod_prev))
    sigma = torch.sqrt((1 - ap) / (1 - a)) * torch.sqrt(1 - a / ap)  # float32, in the reference's order
    assert (1 - ap - sigma ** 2).item() < 0
    got, want = run_pair((ours, oracle, model, None), "ddim", 1.0, False, False)
    assert torch.isfinite(got).all() and rel(got, want) < TOL


def test_progressive_yields_every_step_with_pred_xstart():
    for kind, cond in (("p", True), ("ddim", True), ("ddim", False)):
        ours, oracle, model, cond_fn = make("linear", 1000, "ddim10")
        mk = {"y": LABELS}
        cf = cond_fn if cond else None
        torch.manual_seed(5)
        f = ours.p_sample_loop_progressive if kind == "p" else ours.ddim_sample_loop_progressive
        extra = {} if kind == "p" else {"eta": 0.5}
        got = list(f(model, SHAPE, clip_denoised=False, cond_fn=cf, model_kwargs=mk, **extra))
        torch.manual_seed(5)
        want = oracle.sample_loop(kind, model, SHAPE, clip_denoised=False, cond_fn=cf, model_kwargs=mk,
                                  eta=extra.get("eta", 0.0), progressive=True)
        assert len(got) == len(want) == 10
        for g, w in zip(got, want):
            assert set(g) == {"sample", "pred_xstart"}
            assert rel(g["sample"], w["sample"]) < TOL and rel(g["pred_xstart"], w["pred_xstart"]) < TOL


def test_denoised_fn_between_conversion_and_clip():
    def denoised_fn(x0):
        return 1.3 * x0 - 0.1  # pushes |x0| past 1, so the clip after it matters
    for kind in ("p", "ddim"):
        ours, oracle, model, cond_fn = make("linear", 1000, "ddim10", var="learned_range")
        mk = {"y": LABELS}
        torch.manual_seed(2)
        f = ours.p_sample_loop if kind == "p" else ours.ddim_sample_loop
        got = f(model, SHAPE, denoised_fn=denoised_fn, cond_fn=cond_fn, model_kwargs=mk)
        torch.manual_seed(2)
        want = oracle.sample_loop(kind, model, SHAPE, denoised_fn=denoised_fn, cond_fn=cond_fn, model_kwargs=mk)
        assert rel(got, want) < TOL


def test_noise_argument_and_model_call_count():
    ours, oracle, model, cond_fn = make("linear", 1000, "ddim10")
    x_T = torch.randn(SHAPE)
    torch.manual_seed(8)
    got = ours.ddim_sample_loop(model, SHAPE, noise=x_T, eta=1.0, model_kwargs={"y": LABELS})
    assert model.calls == 10  # one model call per step
    torch.manual_seed(8)
    want = oracle.sample_loop("ddim", model, SHAPE, noise=x_T, eta=1.0, model_kwargs={"y": LABELS})
    assert rel(got, want) < TOL


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind,eta,mean", [("p", 0.0, "epsilon"), ("p", 0.0, "start_x"), ("ddim", 1.0, "epsilon")])
def test_half_precision_noise_promotes_as_the_reference(dtype, kind, eta, mean):
    """guided-diffusion's schedule factors are float32 tensors: from half-precision noise its first step draws its
    noise in the half type and returns float32, and the later steps (and their model inputs) are float32."""
    ours, oracle, model, cond_fn = make("linear", 1000, "ddim10", mean=mean)
    seen = []

    def model32(x, t, **kw):  # a float32 model output: the comparison then holds to float32 rounding
        seen.append(x.dtype)
        return model(x, t, **kw).float()

    x_T = torch.randn(SHAPE).to(dtype)
    mk = {"y": LABELS}
    torch.manual_seed(8)
    got = ours.p_sample_loop(model32, SHAPE, noise=x_T, model_kwargs=mk, cond_fn=cond_fn) if kind == "p" else \
        ours.ddim_sample_loop(model32, SHAPE, noise=x_T, eta=eta, model_kwargs=mk, cond_fn=cond_fn)
    assert got.dtype == torch.float32
    assert seen == [dtype] + [torch.float32] * 9
    state = torch.get_rng_state()
    torch.manual_seed(8)
    want = oracle.sample_loop(kind, model32, SHAPE, noise=x_T, eta=eta, model_kwargs=mk, cond_fn=cond_fn)
    assert torch.equal(torch.get_rng_state(), state)
    assert rel(got, want) < TOL


def test_loops_run_under_no_grad_and_cond_fn_may_use_autograd():
    ours, _, model, cond_fn = make("linear", 1000, "ddim10")
    seen = []

    def spy(x, t, **kw):
        seen.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
        return model(x, t, **kw)
    ours.p_sample_loop(spy, SHAPE, cond_fn=cond_fn, model_kwargs={"y": LABELS})
    assert seen and all(s == (False, False) for s in seen)
    assert cond_fn.calls == 10


@pytest.mark.parametrize("kind,var", [("p", "learned_range"), ("p", "fixed_large"), ("ddim", "learned_range")])
def test_one_fused_step_per_step(monkeypatch, kind, var):
    """The x0 prediction, clip, posterior mean / DDIM update, variance, guidance shift and noise: one op call."""
    import pydiff.guided.gaussian_diffusion as gd

    calls = []
    real = gd.fused_step

    def counting(*args, **kwargs):
        calls.append(sorted(k for k, v in kwargs.items() if v is not None))
        return real(*args, **kwargs)
    monkeypatch.setattr(gd, "fused_step", counting)
    ours, _, model, cond_fn = make("linear", 1000, "ddim10", var=var)
    f = ours.p_sample_loop if kind == "p" else ours.ddim_sample_loop
    f(model, SHAPE, cond_fn=cond_fn, model_kwargs={"y": LABELS})
    assert len(calls) == 10
    want = {"coef", "m2", "noise"} | ({"var"} if kind == "p" and var == "learned_range" else set())
    assert all(set(c) == want for c in calls), calls[0]


@pytest.mark.parametrize("mean,rescale", [("previous_x", False), ("previous_x", True), ("epsilon", True)])
def test_unspaced_diffusion_and_previous_x(mean, rescale):
    """``GaussianDiffusion`` itself (no spacing): the model sees ``t`` or ``t * 1000/N``; a PREVIOUS_X model (the
    exact posterior mean ``c1 E[x0|x_t] + c2 x_t``) for both samplers, with cond_fn and a denoised_fn."""
    import numpy as np

    import pydiff.guided as pg
    from guided_cases import MIX
    from pydiff.testing.guided import GuidedOracle, MixtureClassifier, MixtureModel, base_index, beta_schedule

    betas = beta_schedule("cosine", 100)
    oracle = GuidedOracle(betas, mean_type=mean, var_type="learned_range", rescale_timesteps=rescale)
    ours = pg.GaussianDiffusion(betas=betas, model_mean_type=getattr(pg.ModelMeanType, mean.upper()),
                                model_var_type=pg.ModelVarType.LEARNED_RANGE, loss_type=pg.LossType.MSE,
                                rescale_timesteps=rescale)
    abar = np.cumprod(1 - betas)
    x0_model = MixtureModel(MIX, abar, "start_x", learned=True)
    seen = []

    def model(x, t, y=None):
        seen.append(t.dtype)
        out = x0_model(x, t, y)
        if mean == "epsilon":
            return MixtureModel(MIX, abar, "epsilon", learned=True)(x, t, y)
        i = base_index(t, 100).numpy()
        c1, c2 = (torch.tensor(c[i], dtype=torch.float64).view(-1, 1, 1) for c in (oracle.c1, oracle.c2))
        C = x.shape[1]
        return torch.cat([c1 * out[:, :C].double() + c2 * x.double(), out[:, C:].double()], 1).to(x.dtype)
    cond_fn = MixtureClassifier(MIX, abar, 1.0)
    for kind in ("p", "ddim"):
        for dfn in (None, lambda x0: 0.9 * x0):
            torch.manual_seed(1)
            f = ours.p_sample_loop if kind == "p" else ours.ddim_sample_loop
            got = f(model, SHAPE, cond_fn=cond_fn, denoised_fn=dfn, model_kwargs={"y": LABELS})
            torch.manual_seed(1)
            want = oracle.sample_loop(kind, model, SHAPE, cond_fn=cond_fn, denoised_fn=dfn, model_kwargs={"y": LABELS})
            assert rel(got, want) < TOL
    assert set(seen) == {torch.float32 if rescale else torch.int64}


class _ChannelsLast:
    """A model whose output comes back in another memory layout (a channels_last network), values unchanged."""

    def __init__(self, model):
        self.model = model

    def __call__(self, x, t, **kw):
        out = self.model(x, t, **kw)
        return out.unsqueeze(-1).contiguous(memory_format=torch.channels_last).squeeze(-1) if out.dim() == 3 else out


@pytest.mark.parametrize("mean", ["epsilon", "start_x"])
@pytest.mark.parametrize("kind,eta,cond", [("p", 0.0, False), ("p", 0.0, True), ("ddim", 1.0, False),
                                           ("ddim", 1.0, True)])
def test_noise_follows_the_reference_sample_layout(mean, kind, eta, cond):
    """randn_like(x) fills x's memory in order, and the reference's x takes the layout of its arithmetic's first
    operand (a START_X model's output, a transposed noise=): the same seed gives the transcription's samples."""
    ours, oracle, model, cond_fn = make("linear", 1000, "ddim10", mean=mean)
    m = _ChannelsLast(model)
    x_T = torch.randn(SHAPE[0], SHAPE[2], SHAPE[1]).transpose(1, 2)  # a permuted, dense noise
    assert not x_T.is_contiguous()
    kw = dict(noise=x_T, model_kwargs={"y": LABELS}, cond_fn=cond_fn if cond else None)
    torch.manual_seed(4)
    got = ours.p_sample_loop(m, SHAPE, **kw) if kind == "p" else ours.ddim_sample_loop(m, SHAPE, eta=eta, **kw)
    torch.manual_seed(4)
    want = oracle.sample_loop(kind, m, SHAPE, eta=eta, **kw)
    assert rel(got, want) < TOL
    torch.manual_seed(4)  # and the layouts matter here: contiguous noise of the same values draws other noise
    plain = oracle.sample_loop(kind, model, SHAPE, eta=eta, **dict(kw, noise=x_T.contiguous()))
    assert rel(plain, want) > 1e-2
