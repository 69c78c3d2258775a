"""The non-loop methods, the spacing, the CFG hook, Philox noise and bad input of the guided-diffusion face."""
import itertools
import math

import numpy as np
import pytest
import torch

import pydiff.guided as pg
from guided_cases import LABELS, SHAPE, make, rel
from pydiff.testing.guided import beta_schedule, spacing


# ---- schedules and spacing

@pytest.mark.parametrize("name,n", [("linear", 1000), ("linear", 37), ("cosine", 1000), ("cosine", 50)])
def test_named_schedules(name, n):
    np.testing.assert_allclose(pg.get_named_beta_schedule(name, n), beta_schedule(name, n), rtol=1e-13, atol=0)


SPECS = ["ddim10", "ddim25", "ddim50", "ddim100", "ddim250", "10,5", "25", "10", "50,30,20", "1,2,3", "999", "1000",
         [10, 15, 20], [1], [7, 1, 5]]


@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("n", [1000, 300, 97])
def test_space_timesteps_exact(spec, n):
    try:
        want = spacing(n, spec)
    except ValueError:
        with pytest.raises(ValueError):
            pg.space_timesteps(n, spec)
        return
    assert pg.space_timesteps(n, spec) == want


def test_space_timesteps_known_values():
    assert sorted(pg.space_timesteps(1000, "ddim10")) == list(range(0, 1000, 100))
    assert sorted(pg.space_timesteps(300, [10, 15, 20]))[:3] == [0, 11, 22]  # round(11.0), round(22.1)
    assert len(pg.space_timesteps(1000, "25")) == 25 and 999 in pg.space_timesteps(1000, "25")


# ---- the non-loop methods against the float64 transcription

@pytest.mark.parametrize("mean,var,rescale", list(itertools.product(
    ["epsilon", "start_x"], ["fixed_small", "fixed_large", "learned_range", "learned"], [False, True])))
def test_p_mean_variance_and_conditioning(mean, var, rescale):
    ours, oracle, model, cond_fn = make("cosine", 1000, "ddim25", mean, var, rescale)
    torch.manual_seed(0)
    x = torch.randn(SHAPE)
    for i in (0, 1, 12, 24):
        t = torch.full((SHAPE[0],), i, dtype=torch.int64)
        mk = {"y": LABELS}
        got = ours.p_mean_variance(model, x, t, clip_denoised=(i % 2 == 0), model_kwargs=mk)
        want = oracle.p_mean_variance(model, x.double(), i, clip_denoised=(i % 2 == 0), model_kwargs=mk)
        assert set(got) == {"mean", "variance", "log_variance", "pred_xstart"}
        for k in got:
            assert got[k].shape == SHAPE
            assert rel(got[k], want[k]) < 1e-4, k
        cm = ours.condition_mean(cond_fn, got, x, t, model_kwargs=mk)
        assert rel(cm, oracle.condition_mean(cond_fn, want, x.double(), i, model_kwargs=mk)) < 1e-4
        cs = ours.condition_score(cond_fn, got, x, t, model_kwargs=mk)
        ws = oracle.condition_score(cond_fn, want, x.double(), i, model_kwargs=mk)
        assert rel(cs["pred_xstart"], ws["pred_xstart"]) < 1e-4 and rel(cs["mean"], ws["mean"]) < 1e-4


def test_q_sample_and_posterior():
    ours, oracle, _, _ = make("linear", 1000, "ddim25")
    torch.manual_seed(1)
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    t = torch.tensor([0, 3, 10, 24, 17])
    a = torch.tensor(oracle.abar[t.numpy()]).view(-1, 1, 1)
    assert rel(ours.q_sample(x0, t, noise=noise), a.sqrt() * x0 + (1 - a).sqrt() * noise) < 1e-6
    xt = torch.randn(SHAPE)
    mean, var, logv = ours.q_posterior_mean_variance(x0, xt, t)
    c1, c2 = (torch.tensor(c[t.numpy()]).view(-1, 1, 1) for c in (oracle.c1, oracle.c2))
    assert rel(mean, c1 * x0 + c2 * xt) < 1e-6
    assert rel(var, torch.tensor(oracle.post_var[t.numpy()]).view(-1, 1, 1).expand(SHAPE)) < 1e-6
    assert rel(logv, torch.tensor(oracle.post_logvar[t.numpy()]).view(-1, 1, 1).expand(SHAPE)) < 1e-6


def test_single_steps_with_per_sample_timesteps():
    ours, oracle, model, cond_fn = make("linear", 1000, "ddim25", var="learned_range")
    torch.manual_seed(4)
    x = torch.randn(SHAPE)
    t = torch.tensor([0, 5, 24, 5, 13])
    mk = {"y": LABELS}
    for kind in ("p", "ddim"):
        torch.manual_seed(9)
        out = (ours.p_sample if kind == "p" else ours.ddim_sample)(model, x, t, cond_fn=cond_fn, model_kwargs=mk)
        torch.manual_seed(9)
        z = torch.randn(SHAPE).double()
        for b in range(SHAPE[0]):
            i = int(t[b])
            pmv = oracle.p_mean_variance(model, x[b:b + 1].double(), i, True, None, {"y": LABELS[b:b + 1]})
            if kind == "p":
                mean = oracle.condition_mean(cond_fn, pmv, x[b:b + 1].double(), i, {"y": LABELS[b:b + 1]})
                want = mean + (torch.exp(0.5 * pmv["log_variance"]) * z[b:b + 1] if i > 0 else 0)
            else:
                pmv = oracle.condition_score(cond_fn, pmv, x[b:b + 1].double(), i, {"y": LABELS[b:b + 1]})
                a, ap = oracle.abar[i], oracle.abar_prev[i]
                eps = (x[b:b + 1].double() / math.sqrt(a) - pmv["pred_xstart"]) / math.sqrt(1 / a - 1)
                want = pmv["pred_xstart"] * math.sqrt(ap) + math.sqrt(1 - ap) * eps
            assert rel(out["sample"][b:b + 1], want) < 1e-4


def test_training_losses():
    for var, loss in (("fixed_small", pg.LossType.MSE), ("learned_range", pg.LossType.RESCALED_MSE),
                      ("learned_range", pg.LossType.KL)):
        ours, oracle, model, _ = make("linear", 1000, "ddim25", var=var)
        ours.loss_type = loss
        torch.manual_seed(2)
        x0, noise = torch.randn(SHAPE).clamp(-1, 1), torch.randn(SHAPE)
        t = torch.tensor([0, 3, 10, 24, 17])
        terms = ours.training_losses(model, x0, t, model_kwargs={"y": LABELS}, noise=noise)
        xt = ours.q_sample(x0, t, noise=noise)
        out = model(xt, torch.tensor([oracle.map[i] for i in t]), y=LABELS)
        if loss != pg.LossType.KL:
            eps = out[:, :SHAPE[1]]
            assert rel(terms["mse"], ((noise - eps) ** 2).mean(dim=(1, 2))) < 1e-5
        if var == "fixed_small":
            assert set(terms) == {"loss", "mse"}
            continue
        # the bound at t > 0: KL between the true posterior and the model's Gaussian, in bits
        kl = []
        for b in range(SHAPE[0]):
            i = int(t[b])
            pmv = oracle.p_mean_variance(model, xt[b:b + 1].double(), i, False, None, {"y": LABELS[b:b + 1]})
            tm = oracle.c1[i] * x0[b:b + 1].double() + oracle.c2[i] * xt[b:b + 1].double()
            tl = oracle.post_logvar[i]
            k = 0.5 * (pmv["log_variance"] - tl - 1 + math.exp(tl) / pmv["log_variance"].exp()
                       + (tm - pmv["mean"]) ** 2 / pmv["log_variance"].exp())
            kl.append(k.mean().item() / math.log(2.0))
        vb = terms["loss"] if loss == pg.LossType.KL else terms["vb"] / (25 / 1000.0)
        assert torch.allclose(vb[1:].double(), torch.tensor(kl[1:], dtype=torch.float64), rtol=1e-4, atol=1e-6)


# ---- classifier-free guidance

@pytest.mark.parametrize("kind,var", [("p", "fixed_large"), ("p", "learned_range"), ("ddim", "fixed_small")])
def test_classifier_free_guidance(kind, var):
    ours, oracle, model, _ = make("linear", 1000, "ddim25", var=var)
    s = 2.5
    C = SHAPE[1]

    def combined(x, t, y=None):  # the oracle's model: (1 - s) eps(x) + s eps(x | y), the conditional variance
        u, c = model(x, t, y=None), model(x, t, y=y)
        mean = (1 - s) * u[:, :C] + s * c[:, :C]
        return torch.cat([mean, c[:, C:]], 1) if var.startswith("learned") else mean
    cfg = pg.ClassifierFreeGuidance(model, s, {"y": None})
    torch.manual_seed(6)
    f = ours.p_sample_loop if kind == "p" else ours.ddim_sample_loop
    got = f(cfg, SHAPE, model_kwargs={"y": LABELS})
    torch.manual_seed(6)
    want = oracle.sample_loop(kind, combined, SHAPE, model_kwargs={"y": LABELS})
    assert rel(got, want) < 1e-4
    x = torch.randn(SHAPE)
    t = torch.full((SHAPE[0],), 7)
    assert rel(ours.p_mean_variance(cfg, x, t, model_kwargs={"y": LABELS})["mean"],
               oracle.p_mean_variance(combined, x.double(), 7, model_kwargs={"y": LABELS})["mean"]) < 1e-4


# ---- Philox noise

def test_philox_reproducible_and_distinct():
    ours, _, model, _ = make("linear", 1000, "ddim10")
    outs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        outs.append(ours.p_sample_loop(model, SHAPE, model_kwargs={"y": LABELS}, noise_source="philox"))
    assert torch.equal(outs[0], outs[1]) and not torch.allclose(outs[0], outs[2])


def test_philox_moments():
    """One DDPM step from x_t with the exact model: x_{t-1} | x_t is Gaussian with the step's mean and variance,
    so the noise term's sample mean and variance must be 0 and Sigma within 4 standard errors."""
    ours, oracle, model, _ = make("linear", 1000, "ddim10", var="fixed_large")
    n = 40_000
    x = torch.full((n, 1, 1), 0.3)
    mean = None
    torch.manual_seed(0)
    gen = ours.p_sample_loop_progressive(lambda x, t, **kw: torch.zeros_like(x), (n, 1, 1), noise=x,
                                         noise_source="philox", clip_denoised=False)
    step = next(gen)["sample"].double().flatten()
    i = 9
    mean = oracle.c2[i] * 0.3 + oracle.c1[i] * (0.3 / math.sqrt(oracle.abar[i]))
    var = oracle.betas[i]
    d = step - mean
    assert abs(d.mean().item()) < 4 * math.sqrt(var / n)
    assert abs(d.var().item() / var - 1) < 4 * math.sqrt(2 / n)


def test_progress_bar(capsys):
    ours, _, model, _ = make("linear", 1000, "ddim10")
    ours.ddim_sample_loop(model, SHAPE, model_kwargs={"y": LABELS}, progress=True)
    assert "10/10" in capsys.readouterr().err


# ---- bad input

def test_bad_input():
    ours, _, model, cond_fn = make("linear", 1000, "ddim10", var="learned_range")
    mk = {"y": LABELS}
    with pytest.raises(ValueError, match="model output must have shape"):
        ours.p_sample_loop(lambda x, t, **kw: x, SHAPE)
    with pytest.raises(ValueError, match="cond_fn must return the gradient"):
        ours.p_sample_loop(model, SHAPE, cond_fn=lambda x, t, **kw: x[:, :1], model_kwargs=mk)
    with pytest.raises(ValueError, match="noise_source must be one of"):
        ours.ddim_sample_loop(model, SHAPE, model_kwargs=mk, noise_source="numpy")
    with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0"):
        pg.ClassifierFreeGuidance(model, -1.0, {"y": None})
    with pytest.raises(TypeError, match="guidance_scale must be a real number"):
        pg.ClassifierFreeGuidance(model, "2", {"y": None})
    with pytest.raises(ValueError, match="cannot create exactly 7 steps"):
        pg.space_timesteps(10, "ddim7")
    with pytest.raises(ValueError, match="cannot divide a section of 5 steps into 6"):
        pg.space_timesteps(10, "6,5")
    with pytest.raises(ValueError, match="section_counts must be"):
        pg.space_timesteps(10, "ten")
    with pytest.raises(ValueError, match="ddim_sample with eta=2"):
        ours.ddim_sample_loop(model, SHAPE, model_kwargs=mk, eta=2.0)
    with pytest.raises(TypeError, match="model_mean_type must be a ModelMeanType"):
        pg.GaussianDiffusion(betas=ours.betas, model_mean_type="epsilon", model_var_type=pg.ModelVarType.FIXED_SMALL,
                             loss_type=pg.LossType.MSE)
    with pytest.raises(ValueError, match="betas must lie in"):
        pg.GaussianDiffusion(betas=[0.1, 1.5], model_mean_type=pg.ModelMeanType.EPSILON,
                             model_var_type=pg.ModelVarType.FIXED_SMALL, loss_type=pg.LossType.MSE)
    with pytest.raises(ValueError, match="schedule_name must be one of"):
        pg.get_named_beta_schedule("quadratic", 10)
    with pytest.raises(NotImplementedError):  # what guided-diffusion raises there
        pg.get_named_beta_schedule("quadratic", 10)


def test_betas_for_alpha_bar_and_losses_module():
    from scipy.stats import norm

    from pydiff.guided import gaussian_diffusion as gd
    from pydiff.guided.losses import approx_standard_normal_cdf, discretized_gaussian_log_likelihood, normal_kl

    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    np.testing.assert_allclose(gd.betas_for_alpha_bar(50, f), beta_schedule("cosine", 50), rtol=1e-13)
    x = torch.linspace(-3, 3, 13, dtype=torch.float64)
    assert torch.allclose(approx_standard_normal_cdf(x), torch.tensor(norm.cdf(x.numpy())), atol=2e-3)
    # KL(N(1, e^0) || N(0, e^1)) = 1/2 (1 - 0 - 1 + e^-1 + e^-1)
    assert normal_kl(torch.tensor(1.0), 0.0, 0.0, 1.0).item() == pytest.approx(math.exp(-1), rel=1e-6)
    # a tight Gaussian centred on a bin gives that bin probability ~1 (log ~0)
    ll = discretized_gaussian_log_likelihood(torch.zeros(3), means=torch.zeros(3), log_scales=torch.full((3,), -8.0))
    assert torch.all(ll > -1e-3)
