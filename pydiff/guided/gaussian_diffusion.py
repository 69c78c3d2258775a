"""openai/guided-diffusion's ``gaussian_diffusion.py`` on pydiff's fused step.

Same names, arguments, defaults and return values as the reference: ``get_named_beta_schedule``,
``ModelMeanType`` / ``ModelVarType`` / ``LossType``, ``GaussianDiffusion`` with ``q_sample``,
``q_posterior_mean_variance``, ``p_mean_variance``, ``condition_mean``, ``condition_score``, ``p_sample``,
``ddim_sample``, the four sampling loops and ``training_losses``.

A sampling step is one model call, the ``cond_fn`` call when given, and **one** ``pydiff.ops.fused_step``: the
x0 prediction and its clip, the posterior mean (or the DDIM update), the learned(-range) variance per element
(the model's variance channels as the op's ``var`` input), the classifier shift (the gradient as ``m2``, column
``G``) and the noise. The rows are float64, from ``pydiff.plans.guided``, computed once per (diffusion, loop
configuration) and copied to the device once.

Noise (``noise_source``): ``'torch'`` (default) draws every random tensor with torch's global generator where the
reference draws it, with the same shapes (the initial ``randn(*shape)``, then one ``randn_like(x)`` per step,
also at the last step and for eta = 0 where it is multiplied by zero), so after the same ``torch.manual_seed``
the samples are the reference's up to float32 rounding. ``'philox'`` draws a two-word int64 key once per loop
(after the initial sample) and generates step ``k``'s noise inside the kernel at counter offset ``k``; nothing
is stored.

Where the reference's float32 arithmetic gives NaN (DDIM's ``sqrt(1 - abar_prev - sigma^2)`` at eta = 1 and
abar = 2.4e-9), the float64 rows give the finite answer (``pydiff.plans.guided.ddim_direction``).
"""
from __future__ import annotations

import enum
import numbers

import numpy as np
import torch

from ..ops import compute_dtype, fused_step
from ..plans import guided as plan
from ..runtime.layout import follow, randn_in_layout, row_major
from .cfg import ClassifierFreeGuidance

NOISE_SOURCES = ("torch", "philox")


def get_named_beta_schedule(schedule_name, num_diffusion_timesteps):
    """guided-diffusion's named schedules, ``'linear'`` or ``'cosine'`` (``pydiff.plans.guided.named_betas``)."""
    return plan.named_betas(schedule_name, num_diffusion_timesteps)


def betas_for_alpha_bar(num_diffusion_timesteps, alpha_bar, max_beta=0.999):
    """Betas discretizing ``alpha_bar(t)``, ``t in [0, 1]`` (``pydiff.plans.guided.betas_for_alpha_bar``)."""
    return plan.betas_for_alpha_bar(num_diffusion_timesteps, alpha_bar, max_beta)


class ModelMeanType(enum.Enum):
    """What the model predicts."""

    PREVIOUS_X = enum.auto()  # x_{t-1}
    START_X = enum.auto()  # x_0
    EPSILON = enum.auto()  # the noise


class ModelVarType(enum.Enum):
    """The variance of ``p(x_{t-1} | x_t)``: fixed, or from extra model channels (log variance, or a fraction in
    [-1, 1] between the posterior variance and beta)."""

    LEARNED = enum.auto()
    FIXED_SMALL = enum.auto()
    FIXED_LARGE = enum.auto()
    LEARNED_RANGE = enum.auto()


class LossType(enum.Enum):
    MSE = enum.auto()  # mean squared error (plus the KL term when the variance is learned)
    RESCALED_MSE = enum.auto()  # MSE with the learned-variance KL term scaled by num_timesteps/1000
    KL = enum.auto()  # the variational bound
    RESCALED_KL = enum.auto()  # KL times num_timesteps (the full bound's scale)

    def is_vb(self):
        return self in (LossType.KL, LossType.RESCALED_KL)


def _extract_into_tensor(arr, timesteps, broadcast_shape):
    """``arr[timesteps]`` in float32, shaped to broadcast against ``broadcast_shape``."""
    return plan.extract(arr, timesteps, broadcast_shape)


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _enum_name(name, value, cls):
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be a {cls.__name__}, got {value!r}")
    return value.name.lower()


class GaussianDiffusion:
    """Training and sampling utilities of a discrete Gaussian diffusion with the given ``betas`` (float64, 1-D).

    :param betas: the betas of each diffusion step, in (0, 1].
    :param model_mean_type: a ``ModelMeanType``.
    :param model_var_type: a ``ModelVarType``.
    :param loss_type: a ``LossType``.
    :param rescale_timesteps: pass float timesteps scaled to [0, 1000) to the model.
    """

    def __init__(self, *, betas, model_mean_type, model_var_type, loss_type, rescale_timesteps=False):
        self._mean = _enum_name("model_mean_type", model_mean_type, ModelMeanType)
        self._var = _enum_name("model_var_type", model_var_type, ModelVarType)
        if not isinstance(loss_type, LossType):
            raise TypeError(f"loss_type must be a LossType, got {loss_type!r}")
        self.model_mean_type, self.model_var_type, self.loss_type = model_mean_type, model_var_type, loss_type
        self.rescale_timesteps = bool(rescale_timesteps)
        self._tab = plan.diffusion_tables(betas)
        for k, v in self._tab.items():
            setattr(self, k, v)
        self._rows = {}  # host rows per loop configuration, and their device copies

    # ---- timesteps as the model sees them

    def _scale_timesteps(self, t):
        return t.float() * (1000.0 / self.num_timesteps) if self.rescale_timesteps else t

    def _model_timesteps(self, t):
        """The timesteps handed to the model and to ``cond_fn`` for the diffusion's own step indices ``t``."""
        return self._scale_timesteps(t)

    def _call_model(self, model, x, t, model_kwargs):
        """``(m, m2, v)``: the model's mean output, the conditional half of a classifier-free pair (or None) and the
        variance channels (or None), checked against ``x``."""
        kw = {} if model_kwargs is None else model_kwargs
        mt = self._model_timesteps(t)
        learned = self._var in plan.LEARNED_VAR_TYPES
        if isinstance(model, ClassifierFreeGuidance):
            u, c = model.pair(x, mt, **kw)
            u, _ = self._split(u, x, learned)
            c, v = self._split(c, x, learned)
            return u, c, v
        m, v = self._split(model(x, mt, **kw), x, learned)
        return m, None, v

    @staticmethod
    def _split(out, x, learned):
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the model must return a torch.Tensor, got {type(out).__name__}")
        B, C = x.shape[:2]
        if learned:
            want = (B, 2 * C) + tuple(x.shape[2:])
            if tuple(out.shape) != want:
                raise ValueError(f"model output must have shape {want} (twice the {C} channels of x: the mean and "
                                 f"the variance values) for a learned variance, got {tuple(out.shape)}")
            m, v = torch.split(out, C, dim=1)
            dt = torch.promote_types(x.dtype, out.dtype)  # the reference's arithmetic promotes, never rounds down
            return m.to(dt), v.to(dt)  # views of out: their layout is the reference's (the fused step copies them)
        if tuple(out.shape) != tuple(x.shape):
            raise ValueError(f"model output must have the shape of x {tuple(x.shape)}, got {tuple(out.shape)}")
        return out.to(torch.promote_types(x.dtype, out.dtype)), None

    def _gradient(self, cond_fn, x, t, model_kwargs):
        kw = {} if model_kwargs is None else model_kwargs
        g = cond_fn(x, self._model_timesteps(t), **kw)
        if not isinstance(g, torch.Tensor) or tuple(g.shape) != tuple(x.shape):
            shape = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
            raise ValueError(f"cond_fn must return the gradient with the shape of x {tuple(x.shape)}, got {shape}")
        return g

    # ---- the forward process and the posterior

    def q_mean_variance(self, x_start, t):
        """``q(x_t | x_0)``: ``(mean, variance, log_variance)``."""
        return plan.q_mean_variance(self._tab, x_start, t)

    def q_sample(self, x_start, t, noise=None):
        """A draw of ``x_t ~ q(x_t | x_0)``: ``sqrt(abar_t) x_start + sqrt(1 - abar_t) noise``."""
        if noise is None:
            noise = torch.randn_like(x_start)
        if noise.shape != x_start.shape:
            raise ValueError(f"noise must have the shape of x_start {tuple(x_start.shape)}, got {tuple(noise.shape)}")
        return plan.q_sample(self._tab, x_start, t, noise)

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """``q(x_{t-1} | x_t, x_0)``: ``(mean, variance, log_variance_clipped)``."""
        if x_start.shape != x_t.shape:
            raise ValueError(f"x_start and x_t must share a shape, got {tuple(x_start.shape)} and {tuple(x_t.shape)}")
        return plan.posterior_mean_variance(self._tab, x_start, x_t, t)

    def _predict_xstart_from_eps(self, x_t, t, eps):
        return plan.xstart_from_eps(self._tab, x_t, t, eps)

    def _predict_xstart_from_xprev(self, x_t, t, xprev):
        return plan.xstart_from_xprev(self._tab, x_t, t, xprev)

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        return plan.eps_from_xstart(self._tab, x_t, t, pred_xstart)

    # ---- the reverse process, one step (tensors t: any timestep per sample)

    def p_mean_variance(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None):
        """``p(x_{t-1} | x_t)`` and the x0 prediction: a dict with ``mean``, ``variance``, ``log_variance`` and
        ``pred_xstart`` (``denoised_fn`` applies to the x0 prediction before the clip to [-1, 1])."""
        B = x.shape[0]
        if tuple(t.shape) != (B,):
            raise ValueError(f"t must have shape ({B},), got {tuple(t.shape)}")
        m, m2, v = self._call_model(model, x, t, model_kwargs)
        if m2 is not None:
            m = ClassifierFreeGuidance.combine(m, m2, model.guidance_scale)
        variance, log_variance = plan.model_log_variance(self._tab, self._var, t, x.shape, v)

        def process(x0):
            if denoised_fn is not None:
                x0 = denoised_fn(x0)
            return x0.clamp(-1, 1) if clip_denoised else x0

        if self._mean == "previous_x":
            pred_xstart = process(self._predict_xstart_from_xprev(x, t, m))
            mean = m
        else:
            pred_xstart = process(m if self._mean == "start_x" else self._predict_xstart_from_eps(x, t, m))
            mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_xstart": pred_xstart}

    def condition_mean(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        """Alg. 1's guided mean ``mean + variance * cond_fn(x, t)`` (``cond_fn`` gives ``grad log p(y|x_t)``)."""
        g = self._gradient(cond_fn, x, t, model_kwargs)
        return plan.condition_mean(p_mean_var["mean"], p_mean_var["variance"], g)

    def condition_score(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        """Alg. 2: ``p_mean_variance``'s output with ``eps - sqrt(1 - abar_t) cond_fn(x, t)`` as the noise estimate
        (``pred_xstart`` and ``mean`` recomputed from it)."""
        g = self._gradient(cond_fn, x, t, model_kwargs)
        eps = plan.condition_score_eps(self._tab, self._predict_eps_from_xstart(x, t, p_mean_var["pred_xstart"]), t, g)
        out = dict(p_mean_var)
        out["pred_xstart"] = self._predict_xstart_from_eps(x, t, eps)
        out["mean"], _, _ = self.q_posterior_mean_variance(out["pred_xstart"], x, t)
        return out

    def p_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None):
        """One ancestral step ``x_{t-1} ~ p(x_{t-1} | x_t)`` (fused): ``{'sample', 'pred_xstart'}``."""
        return self._step("p", model, x, t, clip_denoised, denoised_fn, cond_fn, model_kwargs, 0.0, None, 0)[0]

    def ddim_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None,
                    eta=0.0):
        """One DDIM step (fused): ``{'sample', 'pred_xstart'}``."""
        return self._step("ddim", model, x, t, clip_denoised, denoised_fn, cond_fn, model_kwargs, eta, None, 0)[0]

    def ddim_reverse_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None, eta=0.0):
        """The deterministic DDIM step towards ``x_{t+1}`` (eta must be 0)."""
        if eta != 0.0:
            raise ValueError(f"eta must be 0 for the reverse ODE, got {eta!r}")
        out = self.p_mean_variance(model, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                                   model_kwargs=model_kwargs)
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        return {"sample": plan.ddim_reverse(self._tab, out["pred_xstart"], eps, t), "pred_xstart": out["pred_xstart"]}

    # ---- the fused step

    def _plan(self, kind, clip_denoised, eta, split, x):
        key = (kind, bool(clip_denoised), float(eta), split, x.device, compute_dtype(x.dtype))
        if key not in self._rows:
            hkey = key[:3]
            if hkey not in self._rows:
                if kind == "p":
                    rows = plan.p_sample_rows(self._tab, mean_type=self._mean, var_type=self._var,
                                              clip_denoised=clip_denoised)
                    xrows = None
                else:
                    rows, xrows = plan.ddim_rows_guided(self._tab, mean_type=self._mean, clip_denoised=clip_denoised,
                                                        eta=eta)
                self._rows[hkey] = (rows, xrows) + plan.split_rows(rows, self._mean)
            rows, xrows, conv, upd = self._rows[hkey]
            dev = lambda a: None if a is None else torch.as_tensor(a, dtype=key[5], device=x.device)  # noqa: E731
            self._rows[key] = tuple(dev(a) for a in (rows, xrows, conv, upd))
        return self._rows[key]

    def _step(self, kind, model, x, t, clip_denoised, denoised_fn, cond_fn, model_kwargs, eta, rng, k,
              want_xstart=True, tt=None, like=None):
        """One fused step: ``({'sample', 'pred_xstart'}, like)``. ``t`` is a Python int (a loop: one row for the
        batch) or a ``(B,)`` int64 tensor (rows per sample through the op's ``index``); ``rng`` None draws the noise
        with ``torch.randn_like``, else the Philox key tensor with counter offset ``k``; ``tt`` the loop's ready
        ``(B,)`` timestep tensor for an int ``t``; ``like`` a tensor with the layout the reference's ``x`` has (``x``
        itself by default), returned for the next step (``_next_layout``)."""
        B = x.shape[0]
        like = x if like is None else like
        if isinstance(t, torch.Tensor):
            if tuple(t.shape) != (B,):
                raise ValueError(f"t must have shape ({B},), got {tuple(t.shape)}")
            tt = t
        elif tt is None:
            tt = torch.tensor([t] * B, device=x.device)
        if not x.is_contiguous():
            x = x.contiguous()
        rows, xrows, conv, upd = self._plan(kind, clip_denoised, eta, False, x)
        if isinstance(t, torch.Tensor):
            sel = lambda tab: dict(coef=tab, index=t.to(torch.int64))  # noqa: E731
        else:
            sel = lambda tab: dict(coef=tab[t])  # noqa: E731
        m, m2, v = self._call_model(model, x, tt, model_kwargs)
        scale = model.guidance_scale if m2 is not None else None
        z = g = None
        if kind == "p":
            z = randn_in_layout(like, dtype=x.dtype, device=x.device) if rng is None else None
        # The reference's schedule factors are float32 tensors (_extract_into_tensor), so from half-precision x and
        # model outputs its sample, and the next step's model input, come out float32: so do ours (the kernel's
        # arithmetic is float32 either way). The noise above was drawn in x's own dtype, as randn_like(x) draws it.
        m_dtype, x_in = m.dtype, x
        cd = torch.promote_types(m_dtype, torch.float32)
        if x.dtype != cd:
            x, m = x.to(cd), m.to(cd)
            m2, v, z = (None if a is None else a.to(cd) for a in (m2, v, z))
        if cond_fn is not None:
            g = self._gradient(cond_fn, x_in, tt, model_kwargs).to(cd)
        if kind == "ddim":
            z = randn_in_layout(like, dtype=x_in.dtype, device=x.device).to(cd) if rng is None else None
            v = None  # DDIM does not use the model's variance
        noise = dict(noise=z) if rng is None else dict(rng=rng, offset=k)
        if m2 is not None and (g is not None or denoised_fn is not None):
            # the pair needs the m2 input that the gradient or the corrected x0 takes: combine it first
            m, m2 = ClassifierFreeGuidance.combine(m, m2, scale), None
        w = torch.empty_like(x) if want_xstart else None
        if denoised_fn is None:
            if m2 is not None:
                coef = sel(self._cfg_rows(rows, scale, key=(kind, clip_denoised, eta, x.device, x.dtype)))
                out = fused_step(x, m, m2=m2, var=v, w_out=w, **coef, **noise)
            else:
                out = fused_step(x, m, m2=g, var=v, w_out=w, **sel(rows), **noise)
        else:
            x0 = denoised_fn(fused_step(x, m, **sel(conv)))
            if not isinstance(x0, torch.Tensor) or x0.shape != x.shape:
                raise ValueError(f"denoised_fn must return a tensor with the shape of x {tuple(x.shape)}")
            x0 = x0.to(x.dtype).contiguous()
            if self._mean == "previous_x" and kind == "p":
                out = fused_step(x, m, m2=g, var=v, **sel(upd), **noise)
                w = x0.clamp(-1, 1) if clip_denoised else x0
            else:
                out = fused_step(x, x0, m2=g, var=v, w_out=w, **sel(upd), **noise)
        if kind == "ddim" and g is not None and want_xstart:
            w = fused_step(w, g, **sel(xrows))  # Alg. 2's pred_xstart: x0 + (1 - abar)/sqrt(abar) g
        elif w is not None and self._mean == "start_x" and denoised_fn is None:
            w = w.to(m_dtype)  # the reference's x0 is then the (clipped) model output itself, in its dtype
        if rng is None and m2 is None and not row_major(like, m, g):
            like = self._next_layout(kind, like, m, g, denoised_fn is not None)
        return {"sample": out, "pred_xstart": w}, like

    def _next_layout(self, kind, x, m, g, denoised):
        """The layout of the reference's sample after a step (``runtime.layout``), from those of its x, the model's
        mean output m and the gradient g, in the operand order of gaussian_diffusion.py: x0 = c x - c eps (EPSILON),
        the model's (START_X) or c x_prev - c x (PREVIOUS_X); mean = c x0 + c x, or the model's (PREVIOUS_X); Alg. 1
        adds var g to the mean; DDIM (Alg. 2 first replaces eps by c x - c x0 - c g and x0 by c x - c eps) takes
        eps = c x - c x0, mean = c x0 + c eps; the sample is mean + c randn_like(x)."""
        if self._mean == "start_x":
            x0 = follow(m)
        elif self._mean == "previous_x":
            x0 = follow(m, x)
        else:
            x0 = follow(x, m)
        if denoised:
            x0 = follow(x0)  # denoised_fn taken to keep its input's layout
        if kind == "p":
            mean = follow(m) if self._mean == "previous_x" else follow(x0, x)
            if g is not None:
                mean = follow(mean, g)
        else:
            if g is not None:
                x0 = follow(x, follow(follow(x, x0), g))
            mean = follow(x0, follow(x, x0))
        return follow(mean, x)

    def _cfg_rows(self, rows, scale, key):
        ckey = ("cfg", float(scale)) + key
        if ckey not in self._rows:
            self._rows[ckey] = torch.as_tensor(plan.with_cfg(rows.cpu().double().numpy(), scale), dtype=rows.dtype,
                                               device=rows.device)
        return self._rows[ckey]

    # ---- the loops

    def _loop(self, kind, model, shape, noise, clip_denoised, denoised_fn, cond_fn, model_kwargs, device, progress,
              eta, noise_source, want_xstart=True):
        _check_choice("noise_source", noise_source, NOISE_SOURCES)
        if not isinstance(shape, (tuple, list)):
            raise TypeError(f"shape must be a tuple or list, got {type(shape).__name__}")
        if kind == "ddim" and (isinstance(eta, bool) or not isinstance(eta, numbers.Real)):
            raise TypeError(f"eta must be a real number, got {eta!r}")
        if device is None:
            device = noise.device if noise is not None else _model_device(model)
        img = noise if noise is not None else torch.randn(*shape, device=device)
        if tuple(img.shape) != tuple(shape):
            raise ValueError(f"noise must have shape {tuple(shape)}, got {tuple(img.shape)}")
        self._plan(kind, clip_denoised, eta, False, img)  # builds (and checks) the rows before any model call
        rng = None
        if noise_source == "philox":
            rng = torch.randint(-(1 << 63), (1 << 63) - 1, (2,), device=img.device, dtype=torch.int64)
        indices = list(range(self.num_timesteps))[::-1]
        if progress:
            from tqdm.auto import tqdm

            indices = tqdm(indices)
        # every step's (B,) timestep tensor at once: the loop then makes no host-to-device copy
        steps = torch.arange(self.num_timesteps, device=img.device)[:, None].repeat(1, img.shape[0])
        like = img  # the layout of the reference's sample (a channels_last noise, a channels_last START_X model)
        for k, i in enumerate(indices):
            with torch.no_grad():
                out, like = self._step(kind, model, img, i, clip_denoised, denoised_fn, cond_fn, model_kwargs, eta,
                                       rng, k, want_xstart, tt=steps[i], like=like)
                yield out
                img = out["sample"]

    def p_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                      model_kwargs=None, device=None, progress=False, noise_source="torch"):
        """Samples of shape ``shape`` by ancestral sampling from ``noise`` (or a standard normal draw)."""
        final = None
        for final in self._loop("p", model, shape, noise, clip_denoised, denoised_fn, cond_fn, model_kwargs, device,
                                progress, 0.0, noise_source, want_xstart=False):
            pass
        return final["sample"]

    def p_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                                  model_kwargs=None, device=None, progress=False, noise_source="torch"):
        """A generator of ``p_sample``'s dicts, one per step."""
        return self._loop("p", model, shape, noise, clip_denoised, denoised_fn, cond_fn, model_kwargs, device,
                          progress, 0.0, noise_source)

    def ddim_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                         model_kwargs=None, device=None, progress=False, eta=0.0, noise_source="torch"):
        """Samples of shape ``shape`` by DDIM with ``eta``."""
        final = None
        for final in self._loop("ddim", model, shape, noise, clip_denoised, denoised_fn, cond_fn, model_kwargs,
                                device, progress, eta, noise_source, want_xstart=False):
            pass
        return final["sample"]

    def ddim_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                                     cond_fn=None, model_kwargs=None, device=None, progress=False, eta=0.0,
                                     noise_source="torch"):
        """A generator of ``ddim_sample``'s dicts, one per step."""
        return self._loop("ddim", model, shape, noise, clip_denoised, denoised_fn, cond_fn, model_kwargs, device,
                          progress, eta, noise_source)

    # ---- training

    def _vb_terms_bpd(self, model, x_start, x_t, t, clip_denoised=True, model_kwargs=None):
        """The variational-bound term at ``t`` in bits: ``KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))``, or the
        discretized decoder NLL at ``t = 0``."""
        true_mean, _, true_logv = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        kl = plan.mean_flat(plan.normal_kl(true_mean, true_logv, out["mean"], out["log_variance"])) / np.log(2.0)
        nll = -plan.discretized_gaussian_log_likelihood(x_start, means=out["mean"],
                                                        log_scales=0.5 * out["log_variance"])
        nll = plan.mean_flat(nll) / np.log(2.0)
        return {"output": torch.where(t == 0, nll, kl), "pred_xstart": out["pred_xstart"]}

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None):
        """The training loss at timesteps ``t``: ``{'loss', ...}`` (``'mse'`` and ``'vb'`` where they apply)."""
        kw = {} if model_kwargs is None else model_kwargs
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)
        terms = {}
        if self.loss_type.is_vb():
            terms["loss"] = self._vb_terms_bpd(model, x_start, x_t, t, clip_denoised=False, model_kwargs=kw)["output"]
            if self.loss_type == LossType.RESCALED_KL:
                terms["loss"] = terms["loss"] * self.num_timesteps
            return terms
        raw = model(x_t, self._model_timesteps(t), **kw)
        if self._var in plan.LEARNED_VAR_TYPES:
            B, C = x_t.shape[:2]
            want = (B, 2 * C) + tuple(x_t.shape[2:])
            if tuple(raw.shape) != want:
                raise ValueError(f"model output must have shape {want} for a learned variance, got {tuple(raw.shape)}")
            m, var_values = torch.split(raw, C, dim=1)
            # the bound trains the variance only: the mean channels enter it detached
            frozen = torch.cat([m.detach(), var_values], dim=1)
            terms["vb"] = self._vb_terms_bpd(_Fixed(frozen), x_start, x_t, t, clip_denoised=False)["output"]
            if self.loss_type == LossType.RESCALED_MSE:
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)
        else:
            m = raw
        if self._mean == "previous_x":
            target = self.q_posterior_mean_variance(x_start, x_t, t)[0]
        else:
            target = x_start if self._mean == "start_x" else noise
        if m.shape != target.shape:
            raise ValueError(f"model output must have the shape of x_start {tuple(target.shape)}, got {tuple(m.shape)}")
        terms["mse"] = plan.mean_flat((target - m) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms


def _model_device(model):
    """The device of the model's first parameter (guided-diffusion's default), CPU for a model without any."""
    try:
        first = next(iter(model.parameters()), None)
    except (AttributeError, TypeError):
        first = None
    return torch.device("cpu") if first is None else first.device


class _Fixed:
    """A "model" returning a given output (the learned-variance bound term of ``training_losses``)."""

    def __init__(self, out):
        self.out = out

    def __call__(self, *args, **kwargs):
        return self.out
