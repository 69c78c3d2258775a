"""A float64, literal transcription of score_sde_pytorch's predictor-corrector sampler (Song et al.,
arXiv:2011.13456, Algorithms 1-5 in the authors' ``sampling.py`` form): the oracle of ``pydiff.score_sde``.

Independent of ``pydiff.ops``, ``pydiff.schedules`` and ``pydiff.plans``: every formula is restated here, in
the reference's own order, on float64 tensors. Random numbers come from torch's global generator in the
reference's order and shapes, drawn in float32 (the dtype the reference and the face draw in, so the numbers
are the same) and widened: the prior sample, then for every step the corrector's draws and then the
predictor's. The time grid is the reference's float32 ``linspace(T, eps, N)`` widened to float64, so a step
selects the same discrete index ``floor(t (N-1))`` as the reference.

Where the reference fails this oracle defines the result (as ``pydiff.score_sde`` does):
* Euler-Maruyama with ``probability_flow=True``: zero diffusion (the reference multiplies a float by a
  tensor index and raises); the noise is still drawn, in the same place, so the stream stays aligned;
* Langevin correctors on sub-VP: ``alpha_i = 1 - beta_i`` with VP's DDPM betas (the reference reads
  ``sde.alphas``, which its subVPSDE lacks);
* ``n_steps = 0`` with a Langevin corrector: the corrector returns its input (the reference's ``x_mean``
  is unbound).
``corrector_norm='sample'`` is the paper's per-sample step size (Algorithms 4/5) instead of the reference's
batch-mean norms.

The probability-flow ODE sampler (the reference's ``get_ode_sampler``): ``ode_drift`` is the drift of
``sde.reverse(score_fn, probability_flow=True)`` and ``ode_sample`` runs ``scipy.integrate.solve_ivp`` on it
in float64, with the reference's float32 times ``ones(B) * t``.
"""
from __future__ import annotations

import math

import torch

F64 = torch.float64


class OracleSDE:
    """The SDE parameters: ``kind`` in ('vp', 'subvp', 've')."""

    def __init__(self, kind, N=1000, beta_min=0.1, beta_max=20.0, sigma_min=0.01, sigma_max=50.0):
        self.kind, self.N = kind, N
        self.b0, self.b1 = float(beta_min), float(beta_max)
        self.smin, self.smax = float(sigma_min), float(sigma_max)
        self.T = 1.0
        self.betas = torch.linspace(self.b0 / N, self.b1 / N, N, dtype=F64)
        self.alphas = 1.0 - self.betas
        self.abar = torch.cumprod(self.alphas, 0)
        self.sigmas = torch.exp(torch.linspace(math.log(self.smin), math.log(self.smax), N, dtype=F64))

    # -- continuous time (t: float64 (B,))
    def log_mean(self, t):
        return -0.25 * t ** 2 * (self.b1 - self.b0) - 0.5 * t * self.b0

    def sigma(self, t):
        return self.smin * (self.smax / self.smin) ** t

    def sde(self, x, t):
        """(drift, diffusion)."""
        if self.kind == "ve":
            return torch.zeros_like(x), self.sigma(t) * math.sqrt(2 * (math.log(self.smax) - math.log(self.smin)))
        beta = self.b0 + t * (self.b1 - self.b0)
        drift = -0.5 * bv(beta, x) * x
        if self.kind == "vp":
            return drift, torch.sqrt(beta)
        discount = 1.0 - torch.exp(-2 * self.b0 * t - (self.b1 - self.b0) * t ** 2)
        return drift, torch.sqrt(beta * discount)

    def std(self, t):
        if self.kind == "ve":
            return self.sigma(t)
        lm = self.log_mean(t)
        if self.kind == "vp":
            return torch.sqrt(1.0 - torch.exp(2.0 * lm))
        return 1.0 - torch.exp(2.0 * lm)

    def index(self, t32):
        return (t32 * (self.N - 1) / self.T).long()

    def discretize(self, x, t, i):
        """(f, G) of the forward discretisation."""
        if self.kind == "vp":
            beta, alpha = self.betas[i], self.alphas[i]
            return bv(torch.sqrt(alpha), x) * x - x, torch.sqrt(beta)
        if self.kind == "ve":
            sig = self.sigmas[i]
            adj = torch.where(i == 0, torch.zeros_like(sig), self.sigmas[(i - 1).clamp(min=0)])
            return torch.zeros_like(x), torch.sqrt(sig ** 2 - adj ** 2)
        drift, diffusion = self.sde(x, t)
        return drift / self.N, diffusion * math.sqrt(1.0 / self.N)


def bv(v, x):
    return v.reshape((-1,) + (1,) * (x.ndim - 1))


class Dtype:
    """The dtype of the reference's sample, when a run tracks it: float32 from the prior, and its tensor arithmetic
    promotes it to a wider model output's dtype at the next update (``x + c s``), after that step's draw; every
    ``randn_like(x)`` draws in it (float64 normals are another stream). The model then sees ``x`` in it too."""

    def __init__(self):
        self.x = torch.float32
        self.pending = torch.float32

    def model_input(self, x):
        return x.to(self.x)

    def saw(self, out):
        self.pending = torch.promote_types(self.pending, out.dtype)
        return out.to(F64)

    def update(self):
        self.x = torch.promote_types(self.x, self.pending)


def score_fn(sde, model, x, t, t32, continuous, rdt=None):
    """The reference's ``get_score_fn`` in float64 (labels from the float32 time where it makes them)."""
    call = model if rdt is None else (lambda x, labels: rdt.saw(model(rdt.model_input(x), labels)))
    if sde.kind == "ve":
        labels = sde.sigma(t) if continuous else torch.round((sde.T - t32) * (sde.N - 1)).long()
        return call(x, labels)
    if continuous or sde.kind == "subvp":
        out = call(x, t * 999)
        std = sde.std(t)
    else:
        i = sde.index(t32)
        out = call(x, t32.double() * (sde.N - 1))
        std = torch.sqrt(1.0 - sde.abar[i])
    return -out / bv(std, x)


def randn_like(x, draw=None, rdt=None):
    """The reference's ``torch.randn_like(x)`` for its float32 ``x`` (or in ``rdt.x``), widened; or ``draw(shape)``
    when given."""
    z = torch.randn(x.shape, dtype=torch.float32 if rdt is None else rdt.x) if draw is None else draw(tuple(x.shape))
    return z.to(F64)


def predictor_step(sde, name, model, x, t, t32, continuous, probability_flow, draw=None, rdt=None):
    """One predictor update: ``(x, x_mean)``."""
    out = _predictor_step(sde, name, model, x, t, t32, continuous, probability_flow, draw, rdt)
    if rdt is not None:
        rdt.update()
    return out


def _predictor_step(sde, name, model, x, t, t32, continuous, probability_flow, draw, rdt):
    lam = 0.5 if probability_flow else 1.0
    i = sde.index(t32)
    if name == "euler_maruyama":
        dt = -1.0 / sde.N
        z = randn_like(x, draw, rdt)
        drift, diffusion = sde.sde(x, t)
        score = score_fn(sde, model, x, t, t32, continuous, rdt)
        drift = drift - bv(diffusion, x) ** 2 * score * lam
        diffusion = torch.zeros_like(diffusion) if probability_flow else diffusion
        x_mean = x + drift * dt
        return x_mean + bv(diffusion, x) * math.sqrt(-dt) * z, x_mean
    if name == "reverse_diffusion":
        f, G = sde.discretize(x, t, i)
        rev_f = f - bv(G, x) ** 2 * score_fn(sde, model, x, t, t32, continuous, rdt) * lam
        rev_G = torch.zeros_like(G) if probability_flow else G
        z = randn_like(x, draw, rdt)
        x_mean = x - rev_f
        return x_mean + bv(rev_G, x) * z, x_mean
    if name == "ancestral_sampling":
        if probability_flow or sde.kind == "subvp":
            raise ValueError("ancestral sampling: VE/VP only, no probability flow")
        score = score_fn(sde, model, x, t, t32, continuous, rdt)
        if sde.kind == "ve":
            sig = sde.sigmas[i]
            adj = torch.where(i == 0, torch.zeros_like(sig), sde.sigmas[(i - 1).clamp(min=0)])
            x_mean = x + score * bv(sig ** 2 - adj ** 2, x)
            std = torch.sqrt((adj ** 2 * (sig ** 2 - adj ** 2)) / (sig ** 2))
        else:
            beta = sde.betas[i]
            x_mean = (x + bv(beta, x) * score) / bv(torch.sqrt(1.0 - beta), x)
            std = torch.sqrt(beta)
        z = randn_like(x, draw, rdt)
        return x_mean + bv(std, x) * z, x_mean
    if name == "none":
        return x, x
    raise ValueError(f"unknown predictor {name!r}")


def corrector_step(sde, name, model, x, t, t32, continuous, snr, n_steps, norm="batch", draw=None, rdt=None):
    """One corrector update (``n_steps`` inner steps): ``(x, x_mean)``."""
    if name == "none":
        return x, x
    i = sde.index(t32)
    alpha = torch.ones_like(t) if sde.kind == "ve" else sde.alphas[i]
    x_mean = x
    for _ in range(n_steps):
        grad = score_fn(sde, model, x, t, t32, continuous, rdt)
        z = randn_like(x, draw, rdt)
        if name == "langevin":
            gn = torch.linalg.norm(grad.reshape(grad.shape[0], -1), dim=-1)
            zn = torch.linalg.norm(z.reshape(z.shape[0], -1), dim=-1)
            if norm == "batch":
                gn, zn = gn.mean(), zn.mean()
            step = (snr * zn / gn) ** 2 * 2 * alpha
        elif name == "ald":
            step = (snr * sde.std(t)) ** 2 * 2 * alpha
        else:
            raise ValueError(f"unknown corrector {name!r}")
        x_mean = x + bv(step, x) * grad
        x = x_mean + bv(torch.sqrt(step * 2), x) * z
        if rdt is not None:
            rdt.update()
    return x, x_mean


def prior_sample(sde, shape):
    z = torch.randn(*shape).to(F64)
    return z * sde.smax if sde.kind == "ve" else z


def pc_sample(sde, model, shape, predictor, corrector, snr, n_steps=1, probability_flow=False, continuous=False,
              denoise=True, eps=1e-3, corrector_norm="batch", draw=None, after_prior=None, track_dtype=False):
    """The reference's ``pc_sampler(model)`` in float64: ``(x, nfe)`` with ``nfe = N (n_steps + 1)`` (the
    reference's count, whatever runs). ``model(x, labels)`` gets float64 ``x``; ``predictor``/``corrector``
    are the reference's registry names. ``draw(shape)``, when given, replaces every ``randn_like`` after the
    prior (e.g. a Philox stream); ``after_prior()`` is called right after the prior sample (e.g. to draw a
    key from torch's generator where the face draws it). ``track_dtype``: the model sees ``x`` in the reference's
    dtype and a wider output promotes it as there (``Dtype``)."""
    with torch.no_grad():
        x = prior_sample(sde, shape)
        if after_prior is not None:
            after_prior()
        timesteps = torch.linspace(sde.T, eps, sde.N)  # float32, as the reference
        x_mean = x
        rdt = Dtype() if track_dtype else None
        for k in range(sde.N):
            t32 = torch.ones(shape[0]) * timesteps[k]
            t = t32.to(F64)
            x, x_mean = corrector_step(sde, corrector, model, x, t, t32, continuous, snr, n_steps, corrector_norm,
                                       draw, rdt)
            x, x_mean = predictor_step(sde, predictor, model, x, t, t32, continuous, probability_flow, draw, rdt)
        return (x_mean if denoise else x), sde.N * (n_steps + 1)


def gaussian_model(sde, continuous, mu=0.3, s=0.8, wiggle=0.0):
    """A score_sde-style ``model(x, labels)`` for data ``N(mu, s^2)`` (every element independent): exact
    (``wiggle = 0``) plus a smooth nonlinearity (``wiggle sin(3 x)`` on the noise prediction,
    ``wiggle sin(3 x / r) / r`` on the VE score, ``r^2 = s^2 + sigma^2``), so that the sampler's arithmetic is
    exercised off the linear case. VP/sub-VP models output the noise prediction
    ``eps = std (x - m mu) / (m^2 s^2 + std^2)`` (``p_t = N(m mu, m^2 s^2 + std^2)``); VE models the score
    ``-(x - mu) / (s^2 + sigma^2)``. The labels are decoded as the reference's ``get_score_fn`` makes them
    (``999 t``; the DDPM step ``(N-1) t``, floored; ``sigma``; the NCSN index from the largest sigma).
    Computes in the dtype of ``x``."""

    def model(x, labels):
        rdt = x.dtype
        lab = labels.to(F64)
        if sde.kind == "ve":
            sig = lab if continuous else sde.sigmas.flip(0)[labels.long()]
            r = bv(torch.sqrt(s * s + sig ** 2), x)
            xs = x.to(F64)
            # the nonlinearity scaled like the score (1/r): sin(3x) itself would make the sampler's map
            # expanding at sigma ~ 50 (the step adds sigma^2 * score), amplifying float32 rounding
            return (-(xs - mu) / (r * r) + wiggle * torch.sin(3.0 * xs / r) / r).to(rdt)
        else:
            if continuous or sde.kind == "subvp":
                t = lab / 999
                m = torch.exp(sde.log_mean(t))
                std = sde.std(t)
            else:
                ab = sde.abar[labels.long()]
                m, std = torch.sqrt(ab), torch.sqrt(1.0 - ab)
            var = m * m * s * s + std * std
            out = bv(std / var, x) * (x.to(F64) - bv(m, x) * mu)
        return (out + wiggle * torch.sin(3.0 * x.to(F64))).to(rdt)

    return model


# ----------------------------------------------------------------------------- the probability-flow ODE
def ode_drift(sde, model, x, t, t32, continuous=True):
    """The probability-flow drift ``f(x, t) - g(t)^2 score / 2`` (Song et al. 2021, eq. 13), float64."""
    drift, diffusion = sde.sde(x, t)
    return drift - bv(diffusion, x) ** 2 * score_fn(sde, model, x, t, t32, continuous) * 0.5


def ode_sample(sde, model, shape, z=None, denoise=False, rtol=1e-5, atol=1e-5, method="RK45", eps=1e-3,
               continuous=True):
    """The reference's ``ode_sampler(model, z)`` in float64: ``(x, nfe, solution)``. ``z`` None draws the prior
    sample (torch's generator, float32 widened); the state is float64 throughout, the model gets float64
    ``x`` and the labels of the float32 time. ``denoise``: the mean of one reverse-diffusion predictor step at
    ``eps`` (which draws and discards its noise, as the reference). The reference always uses continuous
    labels (``continuous=True``)."""
    from scipy import integrate

    with torch.no_grad():
        x = prior_sample(sde, shape) if z is None else z.to(F64)

        def fun(t, y):
            t32 = torch.ones(shape[0]) * t
            xt = torch.from_numpy(y).reshape(shape)
            return ode_drift(sde, model, xt, t32.to(F64), t32, continuous).reshape(-1).numpy()

        sol = integrate.solve_ivp(fun, (sde.T, eps), x.reshape(-1).numpy(), rtol=rtol, atol=atol, method=method)
        x = torch.from_numpy(sol.y[:, -1].copy()).reshape(shape)
        if denoise:
            t32 = torch.ones(shape[0]) * eps
            _, x = predictor_step(sde, "reverse_diffusion", model, x, t32.to(F64), t32, continuous, False)
        return x, sol.nfev, sol
