"""A float64 transcription of guided-diffusion's samplers, and a two-class Gaussian mixture with exact models.

Nothing here uses ``pydiff.ops``, ``pydiff.plans`` or ``pydiff.schedules``.

``GuidedOracle`` restates, step for step and in float64, the update rules of openai/guided-diffusion's
``GaussianDiffusion`` / ``SpacedDiffusion`` (Ho et al. arXiv:2006.11239; Nichol & Dhariwal arXiv:2102.09672;
Dhariwal & Nichol arXiv:2105.05233, Alg. 1 and 2; Song et al. arXiv:2010.02502, eq. 12): the posterior
``q(x_{t-1}|x_t,x_0)``, the fixed and learned(-range) variances, ``condition_mean`` (``mu + Sigma g``),
``condition_score`` (``eps - sqrt(1-abar) g``) and DDIM with eta. It draws every random tensor as float32
``torch.randn`` of the sample's shape in the reference's order (the initial sample, then one per step), so after the
same ``torch.manual_seed`` it sees the noise that the reference and pydiff's ``noise_source='torch'`` see.

The mixture: ``x0 ~ 1/2 N(mu_0, s^2 I) + 1/2 N(mu_1, s^2 I)`` (``mu_y`` of the per-sample shape). With
``x_t = sqrt(abar) x0 + sqrt(1-abar) eps`` the class-conditional marginal is ``p(x_t|y) = N(sqrt(abar) mu_y, v I)``,
``v = abar s^2 + 1 - abar``, so with ``r_y = p(y|x_t)`` (the posterior responsibility, a softmax of
``-|x - sqrt(abar) mu_y|^2 / (2v)``)::

    E[eps | x_t, y] = sqrt(1-abar) (x - sqrt(abar) mu_y) / v          E[eps | x_t] = sum_y r_y E[eps | x_t, y]
    E[x0 | x_t, y]  = mu_y + sqrt(abar) s^2 (x - sqrt(abar) mu_y) / v  E[x0 | x_t] = sum_y r_y E[x0 | x_t, y]
    grad_x log p(y | x_t) = sqrt(abar)/v (mu_y - sum_y' r_y' mu_y')
"""
from __future__ import annotations

import math

import numpy as np
import torch

# ---------------------------------------------------------------- schedules and spacing, restated


def beta_schedule(name: str, n: int) -> np.ndarray:
    """guided-diffusion's 'linear' (1e-4 .. 0.02 scaled by 1000/n) and 'cosine' (capped at 0.999) betas."""
    if name == "linear":
        lo, hi = 1e-4 * 1000 / n, 0.02 * 1000 / n
        return np.array([lo + (hi - lo) * i / (n - 1) for i in range(n)]) if n > 1 else np.array([lo])

    def f(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1.0 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)])


def spacing(num_timesteps: int, section_counts) -> set:
    """The kept timesteps of guided-diffusion's ``space_timesteps`` (restated; raises ValueError where it does)."""
    if isinstance(section_counts, str) and section_counts.startswith("ddim"):
        want = int(section_counts[4:])
        stride = next((k for k in range(1, num_timesteps) if -(-num_timesteps // k) == want), None)
        if stride is None:
            raise ValueError("no integer stride")
        return set(range(0, num_timesteps, stride))
    if isinstance(section_counts, str):
        section_counts = [int(c) for c in section_counts.split(",")]
    n_sec = len(section_counts)
    bounds = [0]
    for i in range(n_sec):
        bounds.append(bounds[-1] + num_timesteps // n_sec + (i < num_timesteps % n_sec))
    kept = []
    for (lo, hi), count in zip(zip(bounds, bounds[1:]), section_counts):
        size = hi - lo
        if count > size:
            raise ValueError("section too short")
        step = (size - 1) / (count - 1) if count > 1 else 1
        pos = 0.0
        for _ in range(count):
            kept.append(lo + round(pos))
            pos = pos + step
    return set(kept)


# ---------------------------------------------------------------- the oracle sampler


class GuidedOracle:
    """guided-diffusion's sampling rules in float64.

    :param betas: the base diffusion's betas.
    :param mean_type: 'epsilon', 'start_x' or 'previous_x'.
    :param var_type: 'fixed_small', 'fixed_large', 'learned' or 'learned_range'.
    :param rescale_timesteps: the model sees ``t_base * 1000 / N_base`` (float) instead of ``t_base``.
    :param use_timesteps: the kept timesteps (a spaced diffusion), or None for all.
    """

    def __init__(self, betas, *, mean_type, var_type, rescale_timesteps=False, use_timesteps=None):
        base = np.asarray(betas, dtype=np.float64)
        n0 = len(base)
        abar0 = np.cumprod(1.0 - base)
        keep = sorted(range(n0) if use_timesteps is None else set(use_timesteps))
        prev = np.concatenate([[1.0], abar0[keep][:-1]])
        self.betas = 1.0 - abar0[keep] / prev
        self.map, self.n0, self.rescale = keep, n0, rescale_timesteps
        self.mean_type, self.var_type = mean_type, var_type
        self.K = len(keep)
        b = self.betas
        self.abar = np.cumprod(1.0 - b)
        self.abar_prev = np.concatenate([[1.0], self.abar[:-1]])
        self.post_var = b * (1.0 - self.abar_prev) / (1.0 - self.abar)
        self.post_logvar = np.log(np.concatenate([[self.post_var[1]], self.post_var[1:]]))
        self.c1 = b * np.sqrt(self.abar_prev) / (1.0 - self.abar)
        self.c2 = (1.0 - self.abar_prev) * np.sqrt(1.0 - b) / (1.0 - self.abar)

    def model_t(self, i: int, B: int) -> torch.Tensor:
        """What the model and ``cond_fn`` receive at step ``i``."""
        t = torch.tensor([self.map[i]] * B)
        return t.float() * (1000.0 / self.n0) if self.rescale else t

    def _col(self, arr, i, x):
        return torch.full((x.shape[0],) + (1,) * (x.dim() - 1), float(arr[i]), dtype=torch.float64)

    def p_mean_variance(self, model, x, i, clip_denoised=True, denoised_fn=None, model_kwargs=None):
        """The reference's ``p_mean_variance`` at step ``i`` on float64 ``x``."""
        kw = model_kwargs or {}
        out = model(x, self.model_t(i, x.shape[0]), **kw).double()
        C = x.shape[1]
        if self.var_type in ("learned", "learned_range"):
            out, vv = out[:, :C], out[:, C:]
            if self.var_type == "learned":
                logvar = vv
            else:
                frac = (vv + 1) / 2
                logvar = frac * math.log(self.betas[i]) + (1 - frac) * self.post_logvar[i]
            var = torch.exp(logvar)
        else:
            if self.var_type == "fixed_large":
                v = self.post_var[1] if i == 0 else self.betas[i]
                var, logvar = self._col([v], 0, x), self._col([math.log(v)], 0, x)
            else:
                var, logvar = self._col(self.post_var, i, x), self._col(self.post_logvar, i, x)
            var, logvar = var.expand_as(x), logvar.expand_as(x)
        a = self.abar[i]
        if self.mean_type == "previous_x":
            x0 = (out - self.c2[i] * x) / self.c1[i]
        elif self.mean_type == "start_x":
            x0 = out
        else:
            x0 = math.sqrt(1.0 / a) * x - math.sqrt(1.0 / a - 1.0) * out
        if denoised_fn is not None:
            x0 = denoised_fn(x0)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        mean = out if self.mean_type == "previous_x" else self.c1[i] * x0 + self.c2[i] * x
        return {"mean": mean, "variance": var, "log_variance": logvar, "pred_xstart": x0}

    def condition_mean(self, cond_fn, pmv, x, i, model_kwargs=None):
        g = cond_fn(x, self.model_t(i, x.shape[0]), **(model_kwargs or {})).double()
        return pmv["mean"] + pmv["variance"] * g

    def condition_score(self, cond_fn, pmv, x, i, model_kwargs=None):
        a = self.abar[i]
        g = cond_fn(x, self.model_t(i, x.shape[0]), **(model_kwargs or {})).double()
        eps = (math.sqrt(1.0 / a) * x - pmv["pred_xstart"]) / math.sqrt(1.0 / a - 1.0)
        eps = eps - math.sqrt(1.0 - a) * g
        out = dict(pmv)
        out["pred_xstart"] = math.sqrt(1.0 / a) * x - math.sqrt(1.0 / a - 1.0) * eps
        out["mean"] = self.c1[i] * out["pred_xstart"] + self.c2[i] * x
        return out

    def sample_loop(self, kind, model, shape, *, noise=None, clip_denoised=True, cond_fn=None, model_kwargs=None,
                    eta=0.0, denoised_fn=None, progressive=False):
        """The reference's ``p_sample_loop`` (kind 'p') or ``ddim_sample_loop`` (kind 'ddim') in float64: the
        final sample, or the list of per-step ``{'sample', 'pred_xstart'}`` with ``progressive``."""
        x = (torch.randn(*shape) if noise is None else noise)
        # the dtype of the reference's sample: the noise's, then float32 or wider (its schedule factors are float32
        # tensors), and randn_like(x) draws in it (torch's normals of a half tensor are not the float32 ones rounded)
        xdt, x = x.dtype, x.double()
        steps = []
        for i in reversed(range(self.K)):
            out = self.p_mean_variance(model, x, i, clip_denoised, denoised_fn, model_kwargs)
            if kind == "p":
                z = torch.randn_like(x, dtype=xdt).double()  # drawn after the model call, before cond_fn; x carries
                # the reference's memory layout (its arithmetic's), in which randn_like fills the noise
                mean = out["mean"] if cond_fn is None else self.condition_mean(cond_fn, out, x, i, model_kwargs)
                x_new = mean + torch.exp(0.5 * out["log_variance"]) * z if i > 0 else mean
            else:
                if cond_fn is not None:
                    out = self.condition_score(cond_fn, out, x, i, model_kwargs)
                z = torch.randn_like(x, dtype=xdt).double()  # drawn after cond_fn
                a, ap = self.abar[i], self.abar_prev[i]
                eps = (math.sqrt(1.0 / a) * x - out["pred_xstart"]) / math.sqrt(1.0 / a - 1.0)
                sigma = eta * math.sqrt((1 - ap) / (1 - a)) * math.sqrt(1 - a / ap)
                x_new = out["pred_xstart"] * math.sqrt(ap) + math.sqrt(1 - ap - sigma ** 2) * eps
                if i > 0:
                    x_new = x_new + sigma * z
            steps.append({"sample": x_new, "pred_xstart": out["pred_xstart"]})
            x, xdt = x_new, torch.promote_types(xdt, torch.float32)
        return steps if progressive else x


# ---------------------------------------------------------------- the two-class Gaussian mixture


class Mixture:
    """``x0 ~ 1/2 N(mu0, s^2 I) + 1/2 N(mu1, s^2 I)``; ``mu0``, ``mu1`` float64 tensors of the per-sample shape."""

    def __init__(self, mu0, mu1, s):
        self.mu = torch.stack([torch.as_tensor(mu0, dtype=torch.float64), torch.as_tensor(mu1, dtype=torch.float64)])
        self.s = float(s)

    def _abar(self, abar, x):
        a = torch.as_tensor(abar, dtype=torch.float64)
        return a.reshape((-1,) + (1,) * (x.dim() - 1)) if a.dim() == 1 else a

    def log_posterior(self, x, abar):
        """``log p(y | x_t = x)`` for y = 0, 1: shape ``(B, 2)`` (differentiable in x)."""
        a = self._abar(abar, x)
        v = a * self.s ** 2 + 1 - a
        d = [-((x - a.sqrt() * self.mu[y]) ** 2 / (2 * v)).flatten(1).sum(1) for y in (0, 1)]
        return torch.log_softmax(torch.stack(d, dim=1), dim=1)

    def eps(self, x, abar, y=None):
        """``E[eps | x_t]`` (``y`` None) or ``E[eps | x_t, y]`` (``y`` a (B,) tensor of labels)."""
        return self._combine(x, abar, y, lambda a, v, mu: (1 - a).sqrt() * (x - a.sqrt() * mu) / v)

    def x0(self, x, abar, y=None):
        """``E[x0 | x_t]`` or ``E[x0 | x_t, y]``."""
        return self._combine(x, abar, y, lambda a, v, mu: mu + a.sqrt() * self.s ** 2 * (x - a.sqrt() * mu) / v)

    def _combine(self, x, abar, y, f):
        a = self._abar(abar, x)
        v = a * self.s ** 2 + 1 - a
        per = torch.stack([f(a, v, self.mu[k]) for k in (0, 1)], dim=1)  # (B, 2, ...)
        if y is None:
            w = torch.exp(self.log_posterior(x, abar))
        else:
            w = torch.nn.functional.one_hot(torch.as_tensor(y).long(), 2).double()
        return (w.reshape(w.shape + (1,) * (x.dim() - 1)) * per).sum(1)

    def grad_log_posterior(self, x, abar, y):
        """``grad_x log p(y | x_t)`` in closed form: ``sqrt(abar)/v (mu_y - sum r mu)``."""
        a = self._abar(abar, x)
        v = a * self.s ** 2 + 1 - a
        r = torch.exp(self.log_posterior(x, abar))
        mbar = (r.reshape(r.shape + (1,) * (x.dim() - 1)) * self.mu[None]).sum(1)
        return a.sqrt() / v * (self.mu[torch.as_tensor(y).long()] - mbar)


def base_index(t, n: int) -> torch.Tensor:
    """The base timestep of what a model receives: ``t`` itself, or ``round(t * n / 1000)`` for a rescaled float."""
    t = torch.as_tensor(t)
    return torch.round(t.double() * n / 1000.0).long() if t.is_floating_point() else t.long()


class MixtureModel:
    """The exact model of a ``Mixture`` for a diffusion whose base ``alphas_cumprod`` is ``abar``.

    Called as guided-diffusion calls a model, ``model(x, t, y=None)``: ``t`` the base timestep (int) or its
    rescaled float ``t * 1000 / N``. Returns float64 math in ``x``'s dtype: ``E[eps|x_t(,y)]`` (epsilon),
    ``E[x0|x_t(,y)]`` (start_x) or the posterior mean ``c1 x0 + c2 x_t`` (previous_x, one base step), followed for
    learned variances by ``var_channels`` channels ``0.5 tanh(x)`` (a smooth, data-dependent value in [-1, 1]).
    """

    def __init__(self, mixture: Mixture, abar, mean_type="epsilon", learned=False):
        self.mix, self.abar = mixture, np.asarray(abar, dtype=np.float64)
        self.mean_type, self.learned = mean_type, learned
        self.calls = 0

    def __call__(self, x, t, y=None):
        self.calls += 1
        idx = base_index(t, len(self.abar)).cpu().numpy()
        a = torch.from_numpy(self.abar[idx])
        xd = x.double()
        if self.mean_type == "epsilon":
            out = self.mix.eps(xd, a, y)
        elif self.mean_type == "start_x":
            out = self.mix.x0(xd, a, y)
        else:
            raise ValueError("MixtureModel supports epsilon and start_x")
        if self.learned:
            out = torch.cat([out, 0.5 * torch.tanh(xd)], dim=1)
        return out.to(x.dtype)


class MixtureClassifier:
    """``cond_fn(x, t, y) = scale * grad_x log p(y | x_t)`` by autograd through the exact log posterior (as
    guided-diffusion's ``classifier_sample.py`` differentiates its classifier: ``torch.enable_grad`` inside)."""

    def __init__(self, mixture: Mixture, abar, scale=1.0):
        self.mix, self.abar, self.scale = mixture, np.asarray(abar, dtype=np.float64), float(scale)
        self.calls = 0

    def __call__(self, x, t, y=None):
        self.calls += 1
        idx = base_index(t, len(self.abar)).cpu().numpy()
        a = torch.from_numpy(self.abar[idx])
        with torch.enable_grad():
            x_in = x.detach().double().requires_grad_(True)
            lp = self.mix.log_posterior(x_in, a)
            sel = lp[torch.arange(x.shape[0]), torch.as_tensor(y).long()]
            g = torch.autograd.grad(sel.sum(), x_in)[0]
        return (g * self.scale).to(x.dtype)


def guided_rate(delta: float, s: float, scale: float, n: int = 20001) -> float:
    """The fraction of the tilted density ``p(x) p(y=1|x)^scale`` (at t = 0) on the side of the Bayes boundary
    that belongs to component 1, for a mixture whose means are ``delta`` apart with per-coordinate std ``s``.

    Only the coordinate ``u`` along ``mu1 - mu0`` matters (the others are the same Gaussian in both components):
    ``p(u) = 1/2 N(u; -delta/2, s^2) + 1/2 N(u; delta/2, s^2)``, ``p(y=1|u) = sigmoid(u delta / s^2)``; the rate is
    ``int_{u>0} p(u) p(1|u)^scale du / int p(u) p(1|u)^scale du`` by the trapezoid rule over +-(delta/2 + 12 s).
    """
    half = delta / 2 + 12 * s
    u = np.linspace(-half, half, n)
    logp = np.logaddexp(-(u + delta / 2) ** 2 / (2 * s * s), -(u - delta / 2) ** 2 / (2 * s * s))
    logr = -np.logaddexp(0.0, -u * delta / (s * s))
    dens = np.exp(logp + scale * logr - np.max(logp + scale * logr))
    total = np.trapezoid(dens, u)
    pos = u >= 0
    return float(np.trapezoid(dens[pos], u[pos]) / total)


# ---------------------------------------------------------------- the exact law of the guided chains


class GuidedChain:
    """The one-dimensional chain that guided-diffusion's Alg. 1 and Alg. 2 run on the symmetric mixture.

    Data as in ``guided_rate``: ``x0 ~ 1/2 N(mu_0, s^2 I) + 1/2 N(mu_1, s^2 I)`` with ``mu_1 - mu_0`` of length
    ``delta`` along the first axis and ``mu_0 + mu_1 = 0``; the guided class is y = 1; ``scale`` multiplies the
    classifier gradient (``cond_fn = scale * grad log p(y|x_t)``). Everything is float64 NumPy written from the
    formulas below; nothing here calls ``pydiff`` (nor ``GuidedOracle``).

    Why the first coordinate ``u`` moves on its own: ``x_t = sqrt(abar) x0 + sqrt(1-abar) eps`` with independent
    coordinates, and ``x0``'s law factorises into ``u0``'s two-component mixture times ``N(0, s^2)`` in every other
    coordinate ``w`` (both components have mean 0 and variance ``s^2`` there). So ``x_t = (u, w)`` has independent
    parts, ``w ~ N(0, v I)`` with ``v = abar s^2 + 1 - abar``, and:

    * the posterior responsibility depends on ``u`` alone: the squared distances ``|x - sqrt(abar) mu_y|^2`` of the
      two classes differ only in their ``u`` term, so ``r_1 = p(y=1|x_t) = sigmoid(k u)``, ``k = sqrt(abar) delta/v``;
    * ``E[eps_u | x_t] = sqrt(1-abar) (u - sqrt(abar) m(u)) / v`` with ``m(u) = sum_y r_y mu_{y,u}
      = (delta/2) tanh(k u / 2)``, a function of ``u`` only; ``E[eps_w | x_t] = sqrt(1-abar) w / v`` is linear in
      ``w`` and free of ``u``;
    * ``grad log p(y=1|x_t) = sqrt(abar)/v (mu_1 - sum_y r_y mu_y)`` has no ``w`` component (``mu_{y,w} = 0``), and
      its ``u`` component is ``k sigmoid(-k u)`` (``d/du log sigmoid(k u)``).

    Every sampler update is coordinate-wise (the x0 prediction, the posterior mean, the guidance shift, DDIM's
    recombination) and its noise ``z`` has independent coordinates, so ``u_{t-1}`` is a function of ``u_t`` and
    ``z_u`` only: the law of ``u`` is a one-dimensional Markov chain, started (as guided-diffusion starts
    ``x_T ~ N(0, I)``) from ``N(0, 1)``.

    The steps are those of a spaced diffusion that keeps the base timesteps ``timesteps`` of ``betas``: with
    ``a = abar`` at the kept step and ``a' = abar`` at the previous kept step (1 before the first), the step's beta is
    ``b = 1 - a/a'`` and the posterior ``q(x_{t-1}|x_t, x0)`` (Ho et al. arXiv:2006.11239 eq. 6-7) has mean
    ``b sqrt(a')/(1-a) x0 + (1-a') sqrt(a/a')/(1-a) x_t`` and variance ``b (1-a')/(1-a)``.

    * Alg. 1 (Dhariwal & Nichol arXiv:2105.05233; ancestral, epsilon model, no clipping): ``x0_hat = (u -
      sqrt(1-a) eps(u))/sqrt(a)``, ``mu(u) = posterior mean(x0_hat, u) + scale * Sigma * k sigmoid(-k u)`` and
      ``u_{t-1} = mu(u_t) + sqrt(Sigma) z`` except at the last step, which is ``mu(u_1)``. ``Sigma`` is the
      posterior variance (``fixed_small``; 0 at the last step, so it is not guided) or ``b`` (``fixed_large``, with
      the second step's posterior variance at the last step).
    * Alg. 2 (DDIM, eta = 0, Song et al. arXiv:2010.02502 eq. 12 with ``condition_score``): ``eps' = eps(u) -
      sqrt(1-a) scale k sigmoid(-k u)``, ``x0' = (u - sqrt(1-a) eps')/sqrt(a)``, ``u_{t-1} = sqrt(a') x0' +
      sqrt(1-a') eps'``: a deterministic map ``u_0 = Phi(u_T)``.
    """

    def __init__(self, betas, timesteps, scale, delta=1.0, s=0.5, var_type="fixed_small"):
        base = np.asarray(betas, dtype=np.float64)
        if base.ndim != 1 or base.size < 2 or not np.all((base > 0) & (base < 1)):
            raise ValueError("betas must be a 1-D array of at least 2 values in (0, 1)")
        keep = sorted({int(t) for t in timesteps})
        if len(keep) < 2 or keep[0] < 0 or keep[-1] >= base.size:
            raise ValueError(f"timesteps must hold at least 2 steps in [0, {base.size}), got {keep[:5]}...")
        if var_type not in ("fixed_small", "fixed_large"):
            raise ValueError(f"var_type must be 'fixed_small' or 'fixed_large', got {var_type!r}")
        if not (delta > 0 and s > 0 and math.isfinite(scale)):
            raise ValueError("delta and s must be > 0 and scale finite")
        self.a = np.cumprod(1.0 - base)[keep]
        self.ap = np.concatenate([[1.0], self.a[:-1]])
        self.b = 1.0 - self.a / self.ap
        self.post = self.b * (1.0 - self.ap) / (1.0 - self.a)
        if var_type == "fixed_small":
            self.sigma2 = self.post.copy()
        else:
            self.sigma2 = np.concatenate([[self.post[1]], self.b[1:]])
        self.K, self.scale, self.delta, self.s = len(keep), float(scale), float(delta), float(s)

    def _k(self, i):
        a = self.a[i]
        return math.sqrt(a) * self.delta / (a * self.s ** 2 + 1.0 - a)

    def eps(self, u, i):
        """``E[eps_u | x_t]`` at step ``i`` (0 the last step)."""
        a, k = self.a[i], self._k(i)
        v = a * self.s ** 2 + 1.0 - a
        return math.sqrt(1.0 - a) * (u - math.sqrt(a) * 0.5 * self.delta * np.tanh(0.5 * k * u)) / v

    def grad(self, u, i):
        """``d/du log p(y=1 | x_t)`` at step ``i``: ``k sigmoid(-k u)``."""
        k = self._k(i)
        return k * 0.5 * (1.0 - np.tanh(0.5 * k * u))

    def ancestral_mean(self, u, i):
        """Alg. 1's guided mean ``mu(u)`` of step ``i``."""
        a, ap, b = self.a[i], self.ap[i], self.b[i]
        x0 = (u - math.sqrt(1.0 - a) * self.eps(u, i)) / math.sqrt(a)
        mean = b * math.sqrt(ap) / (1.0 - a) * x0 + (1.0 - ap) * math.sqrt(a / ap) / (1.0 - a) * u
        return mean + self.scale * self.sigma2[i] * self.grad(u, i)

    def ddim_step(self, u, i):
        """Alg. 2's step ``i`` (eta = 0)."""
        a, ap = self.a[i], self.ap[i]
        e = self.eps(u, i) - math.sqrt(1.0 - a) * self.scale * self.grad(u, i)
        x0 = (u - math.sqrt(1.0 - a) * e) / math.sqrt(a)
        return math.sqrt(ap) * x0 + math.sqrt(1.0 - ap) * e

    def ddim_map(self, u):
        """``Phi(u_T)``: Alg. 2's whole loop on the first coordinate of ``x_T``."""
        u = np.asarray(u, dtype=np.float64)
        for i in reversed(range(self.K)):
            u = self.ddim_step(u, i)
        return u

    def ddim_rate(self, n=40001, half_width=10.0):
        """``P(Phi(u_T) > 0)`` for ``u_T ~ N(0, 1)``: ``Phi`` on ``n`` nodes over ``+-half_width``, linear between
        nodes (so each sign change gives one interpolated root), the N(0, 1) mass of the positive pieces."""
        from scipy.special import ndtr
        u = np.linspace(-half_width, half_width, n)
        f = self.ddim_map(u)
        lo, hi, flo, fhi = u[:-1], u[1:], f[:-1], f[1:]
        root = lo + (hi - lo) * flo / np.where(flo == fhi, 1.0, flo - fhi)
        # the positive piece [left, right] of each segment (empty: left = right)
        left = np.where(flo > 0, lo, np.where(fhi > 0, root, lo))
        right = np.where(fhi > 0, hi, np.where(flo > 0, root, lo))
        mass = np.sum(ndtr(right) - ndtr(left))
        return float(mass + (ndtr(-half_width) if f[-1] > 0 else 0.0) + (ndtr(-half_width) if f[0] > 0 else 0.0))

    def ancestral_rate(self, h=0.002, half_width=8.0):
        """``P(u_0 > 0)`` under Alg. 1, by propagating the law of ``u`` on cells of width ``h`` over
        ``+-half_width``.

        The law is held as cell masses (exact N(0, 1) masses at the start). A noisy step moves each cell's mass to
        ``mu`` of its centre and splits it linearly between the two nearest centres (which keeps mass and mean), then
        convolves with the N(0, Sigma) kernel sampled at the cell spacing and normalised (the identity once
        ``sqrt(Sigma)`` is far below ``h``): a quadrature of ``p_{t-1}(u') = int p_t(u) N(u'; mu(u), Sigma) du``
        with O(h^2) error per step. The last, noiseless step is a push-forward: the rate is the mass of the
        ``u_1`` with ``mu(u_1) > 0``, with each cell's mass uniform over it and ``mu`` linear between its edges.
        """
        from scipy.signal import fftconvolve
        from scipy.special import ndtr
        n = int(round(2 * half_width / h))
        edges = np.linspace(-half_width, half_width, n + 1)
        h = edges[1] - edges[0]
        mid = 0.5 * (edges[:-1] + edges[1:])
        p = np.diff(ndtr(edges))
        for i in reversed(range(1, self.K)):
            pos = (self.ancestral_mean(mid, i) - mid[0]) / h
            j = np.floor(pos).astype(np.int64)
            frac = pos - j
            q = np.bincount(np.clip(j, 0, n - 1), p * (1 - frac), minlength=n)
            q += np.bincount(np.clip(j + 1, 0, n - 1), p * frac, minlength=n)
            sd = math.sqrt(self.sigma2[i])
            half = int(math.ceil(10 * sd / h))
            if half > 0:
                kern = np.exp(-0.5 * (np.arange(-half, half + 1) * h / sd) ** 2)
                q = np.clip(fftconvolve(q, kern / kern.sum(), mode="same"), 0.0, None)
            p = q
        fl, fr = self.ancestral_mean(edges[:-1], 0), self.ancestral_mean(edges[1:], 0)
        cross = np.abs(np.where(fl > 0, fl, fr)) / np.where(fl == fr, 1.0, np.abs(fl - fr))
        share = np.where((fl > 0) & (fr > 0), 1.0, np.where((fl > 0) | (fr > 0), cross, 0.0))
        return float(np.sum(p * share) / np.sum(p))


def guided_chain_rate(alg, scale, betas, timesteps, delta=1.0, s=0.5, var_type="fixed_small", **grid):
    """The exact probability that guided-diffusion's Alg. 1 (``alg=1``, ancestral) or Alg. 2 (``alg=2``, DDIM with
    eta = 0) lands on component 1's side ``u > 0`` of the symmetric two-component mixture at classifier scale
    ``scale``, over the kept ``timesteps`` of ``betas`` (``GuidedChain``); ``grid`` goes to ``ancestral_rate``
    (``h``, ``half_width``) or ``ddim_rate`` (``n``, ``half_width``)."""
    chain = GuidedChain(betas, timesteps, scale, delta, s, var_type)
    if alg == 1:
        return chain.ancestral_rate(**grid)
    if alg == 2:
        return chain.ddim_rate(**grid)
    raise ValueError(f"alg must be 1 or 2, got {alg!r}")
