"""score_sde_pytorch's predictor-corrector sampler (``sampling.py``) on pydiff's fused kernels.

Same registries, names, classes, constructor signatures and ``get_pc_sampler`` arguments as the reference
(Song et al., arXiv:2011.13456, section 4 and Algorithms 1-5); ``pc_sampler(model) -> (x, nfe)``.

How a step runs (``get_pc_sampler``): one model call and **one** ``pydiff.ops.fused_step`` per predictor step
(a float64 row from ``pydiff.plans.score_sde``, copied to the device once; ``w_out`` gives ``x_mean``); the
Langevin corrector is one model call and one ``pydiff.ops.langevin_step`` (two passes: per-sample ``||m||^2`` and
``||z||^2``, then the update, with the step size ``eps = 2 alpha (snr ||z|| / ||s||)^2`` computed by the kernel
from the sums: no ``.item()``, no host sync). The annealed Langevin corrector's step size does not depend on
the data: a host table, one ``fused_step``.

Noise (``noise_source``): ``'torch'`` draws ``torch.randn_like(x)`` exactly where the reference draws it
(the prior, then per step the corrector's draws and the predictor's; on the CPU through
``pydiff.ops.torch_randn``: the same numbers to float32 rounding, the same generator state), so with the
same seed the result is the reference's up to float32 rounding -- including the draws whose noise is
multiplied by zero (the probability flow), which keep the generator in step. ``'philox'`` draws an int64 key of two words once per
``pc_sampler`` call (after the prior sample) from the device's torch generator and generates the noise inside
the kernels (``fused_step(rng=...)``): the reference's ``k``-th ``randn_like`` after the prior is the Philox
stream at counter offset ``k`` (draws whose noise is multiplied by zero take their number too, nothing is
generated for them). The Langevin step's second pass regenerates the same ``z`` whose norm the first took. No
noise tensor is stored.

``corrector_norm``: ``'batch'`` (default) is the reference's ``LangevinCorrector`` -- batch means of the
per-sample norms, one step size per batch; ``'sample'`` is the paper's Algorithms 4/5 -- one step size per
sample from its own norms.

Where the reference fails, this works, as documented in ``pydiff.testing.score_sde``: Euler-Maruyama with
``probability_flow=True`` (zero diffusion), the Langevin correctors on ``subVPSDE`` (``alpha_i = 1 - beta_i``
of VP's betas, ``pydiff.plans.score_sde.langevin_alpha``), ``n_steps=0`` with a Langevin corrector.
``AncestralSamplingPredictor`` supports VE/VP only and no probability flow (as the reference: it raises).

The classes' own ``update_fn(x, t)`` (for use outside ``get_pc_sampler``) run the same fused rows for any
per-sample ``t``; they copy ``t`` to the host to build the rows (one sync per call), which the sampler avoids.
"""
from __future__ import annotations

import abc

import numpy as np
import torch

from .._checks import real_number
from ..ops import compute_dtype, fused_step, langevin_step
from ..plans import score_sde as plan
from . import sde_lib
from . import utils as mutils
from .ode import get_ode_sampler  # noqa: F401  (score_sde's sampling.get_ode_sampler)

_CORRECTORS = {}
_PREDICTORS = {}
NOISE_SOURCES = ("torch", "philox")


def _registrar(table, what):
    def register(cls=None, *, name=None):
        def _register(cls):
            local_name = cls.__name__ if name is None else name
            if local_name in table:
                raise ValueError(f"Already registered {what} with name: {local_name}")
            table[local_name] = cls
            return cls

        return _register if cls is None else _register(cls)

    return register


register_predictor = _registrar(_PREDICTORS, "predictor")
register_predictor.__doc__ = "A decorator registering a predictor class (under ``name``, default its class name)."
register_corrector = _registrar(_CORRECTORS, "corrector")
register_corrector.__doc__ = "A decorator registering a corrector class (under ``name``, default its class name)."


def get_predictor(name):
    """The predictor class registered as ``name`` (``'euler_maruyama'``, ``'reverse_diffusion'``,
    ``'ancestral_sampling'``, ``'none'`` or a user's)."""
    if name not in _PREDICTORS:
        raise ValueError(f"predictor: unknown name {name!r}; registered: {tuple(_PREDICTORS)}")
    return _PREDICTORS[name]


def get_corrector(name):
    """The corrector class registered as ``name`` (``'langevin'``, ``'ald'``, ``'none'`` or a user's)."""
    if name not in _CORRECTORS:
        raise ValueError(f"corrector: unknown name {name!r}; registered: {tuple(_CORRECTORS)}")
    return _CORRECTORS[name]


# ----------------------------------------------------------------------------- shared helpers
def _host_t(t, sde):
    """``(t float64, step index)`` of a per-sample time tensor, on the host."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a torch.Tensor of shape (B,), got {type(t).__name__}")
    return t.detach().double().cpu().numpy(), sde._schedule.time_index(t.detach().cpu()).numpy()


def _device_rows(rows, x):
    return torch.as_tensor(rows, dtype=compute_dtype(x.dtype), device=x.device)


def _run_row(x, m, rows, z, want_mean, backend=None):
    """``(x_new, x_mean)`` of a predictor row: ``x_mean = S (P x + Q m)``, ``x_new = x_mean + C z``."""
    x, m = _promote(x, m)
    x_mean = torch.empty_like(x) if want_mean else None
    kw = {} if z is None else {"noise": z.to(x.dtype)}
    out = fused_step(x, m, rows.to(compute_dtype(x.dtype)), w_out=x_mean, backend=backend, **kw)
    return out, x_mean


# ----------------------------------------------------------------------------- predictors
class Predictor(abc.ABC):
    """A predictor: one step of a reverse-time SDE solver."""

    def __init__(self, sde, score_fn, probability_flow=False):
        super().__init__()
        self.sde = sde
        self.rsde = sde.reverse(score_fn, probability_flow)
        self.score_fn = score_fn
        self.probability_flow = probability_flow

    @abc.abstractmethod
    def update_fn(self, x, t):
        """One update at per-sample times ``t``: ``(x, x_mean)``, ``x_mean`` the update without its noise."""


def _promote(x, m):
    """``(x, m)`` in their common dtype: the reference's ``x + c m`` promotes (a float64 model output turns a float32
    sample float64, and every later ``randn_like(x)`` draws float64 numbers, a different stream)."""
    dt = torch.promote_types(x.dtype, m.dtype)
    return (x if x.dtype == dt else x.to(dt)), (m if m.dtype == dt else m.to(dt))


class _FusedPredictor(Predictor):
    fused_name = None
    noise_first = False  # Euler-Maruyama draws its noise before the model call (the reference's order)

    def update_fn(self, x, t):
        t64, i = _host_t(t, self.sde)
        rows = plan.predictor_rows(self.sde._schedule, self.fused_name, t64, i, 1.0, self.probability_flow)
        z = mutils.randn_like(x) if self.noise_first else None
        score = mutils.check_model_output(self.score_fn(x, t), x, "score_fn")
        if not self.noise_first:
            z = mutils.randn_like(x)
        return _run_row(x, score, _device_rows(rows, x), None if self.probability_flow else z, True)


@register_predictor(name="euler_maruyama")
class EulerMaruyamaPredictor(_FusedPredictor):
    """Euler-Maruyama on the reverse SDE (or, with ``probability_flow``, Euler on the probability-flow ODE)
    with ``dt = -T/N``: ``x_mean = x - [f(x, t) - g^2 s] dt``, ``x = x_mean + g sqrt(-dt) z``."""

    fused_name = "euler_maruyama"
    noise_first = True


@register_predictor(name="reverse_diffusion")
class ReverseDiffusionPredictor(_FusedPredictor):
    """The reverse of the SDE's discretisation (Song et al. 2021, eq. 45-46): ``x_mean = x - f_i + G_i^2 s``,
    ``x = x_mean + G_i z`` (DDPM's for VP, SMLD's for VE, Euler-Maruyama's for sub-VP)."""

    fused_name = "reverse_diffusion"


@register_predictor(name="ancestral_sampling")
class AncestralSamplingPredictor(_FusedPredictor):
    """Ancestral sampling of the SMLD (VE) or DDPM (VP) chain (Song et al. 2021, eq. 47 and appendix F).
    VESDE and VPSDE only, no probability flow."""

    fused_name = "ancestral_sampling"

    def __init__(self, sde, score_fn, probability_flow=False):
        super().__init__(sde, score_fn, probability_flow)
        if not isinstance(sde, (sde_lib.VPSDE, sde_lib.VESDE)):
            raise plan.UnsupportedSDE(f"SDE class {type(sde).__name__} not yet supported (ancestral sampling "
                                      "follows the DDPM/SMLD chains of VPSDE/VESDE)")
        if probability_flow:
            raise ValueError("probability_flow=True is not supported by ancestral sampling")


@register_predictor(name="none")
class NonePredictor(Predictor):
    """An empty predictor that does nothing."""

    def __init__(self, sde, score_fn, probability_flow=False):
        pass

    def update_fn(self, x, t):
        return x, x


# ----------------------------------------------------------------------------- correctors
class Corrector(abc.ABC):
    """A corrector: MCMC steps towards ``p_t`` at a fixed time."""

    def __init__(self, sde, score_fn, snr, n_steps):
        super().__init__()
        self.sde = sde
        self.score_fn = score_fn
        self.snr = snr
        self.n_steps = n_steps

    @abc.abstractmethod
    def update_fn(self, x, t):
        """``n_steps`` corrector steps at per-sample times ``t``: ``(x, x_mean)``."""


def _check_corrector_sde(sde):
    if not isinstance(sde, (sde_lib.VPSDE, sde_lib.VESDE, sde_lib.subVPSDE)):
        raise plan.UnsupportedSDE(f"SDE class {type(sde).__name__} not yet supported.")


@register_corrector(name="langevin")
class LangevinCorrector(Corrector):
    """Langevin MCMC (Song et al. 2021, Algorithms 4/5, in score_sde's batch form): ``eps = 2 alpha
    (snr ||z|| / ||s||)^2`` with batch-mean norms, ``x_mean = x + eps s``, ``x = x_mean + sqrt(2 eps) z``.
    ``corrector_norm='sample'`` (a keyword beyond the reference's) uses per-sample norms (the paper's)."""

    def __init__(self, sde, score_fn, snr, n_steps, corrector_norm="batch"):
        super().__init__(sde, score_fn, snr, n_steps)
        _check_corrector_sde(sde)
        self.corrector_norm = _check_choice("corrector_norm", corrector_norm, plan.CORRECTOR_NORMS)

    def update_fn(self, x, t):
        t64, i = _host_t(t, self.sde)
        host = np.broadcast_to(plan.langevin_host(self.sde._schedule, i, 1.0, float(self.snr)), (x.shape[0], 2))
        x_mean = x
        for _ in range(self.n_steps):
            grad = mutils.check_model_output(self.score_fn(x, t), x, "score_fn")
            z = mutils.randn_like(x)
            x, grad = _promote(x, grad)
            coef = torch.tensor(host, dtype=compute_dtype(x.dtype), device=x.device)
            x_mean = torch.empty_like(x)
            x = langevin_step(x, grad, coef, norm=self.corrector_norm, noise=z.to(x.dtype), w_out=x_mean)
        return x, x_mean


@register_corrector(name="ald")
class AnnealedLangevinDynamics(Corrector):
    """NCSN's annealed Langevin dynamics (Song & Ermon 2019): ``eps = 2 alpha (snr std(t))^2``,
    ``x_mean = x + eps s``, ``x = x_mean + sqrt(2 eps) z`` (included by the reference for completeness)."""

    def __init__(self, sde, score_fn, snr, n_steps):
        super().__init__(sde, score_fn, snr, n_steps)
        _check_corrector_sde(sde)

    def update_fn(self, x, t):
        t64, i = _host_t(t, self.sde)
        rows = _device_rows(plan.ald_rows(self.sde._schedule, t64, i, 1.0, float(self.snr)), x)
        x_mean = x
        for _ in range(self.n_steps):
            grad = mutils.check_model_output(self.score_fn(x, t), x, "score_fn")
            x, x_mean = _run_row(x, grad, rows, mutils.randn_like(x), True)
        return x, x_mean


@register_corrector(name="none")
class NoneCorrector(Corrector):
    """An empty corrector that does nothing."""

    def __init__(self, sde, score_fn, snr, n_steps):
        pass

    def update_fn(self, x, t):
        return x, x


def shared_predictor_update_fn(x, t, sde, model, predictor, probability_flow, continuous):
    """The update of ``predictor`` (a class, or None for none) with the score of ``model``."""
    score_fn = mutils.get_score_fn(sde, model, train=False, continuous=continuous)
    obj = NonePredictor(sde, score_fn, probability_flow) if predictor is None else \
        predictor(sde, score_fn, probability_flow)
    return obj.update_fn(x, t)


def shared_corrector_update_fn(x, t, sde, model, corrector, continuous, snr, n_steps):
    """The update of ``corrector`` (a class, or None for none) with the score of ``model``."""
    score_fn = mutils.get_score_fn(sde, model, train=False, continuous=continuous)
    obj = NoneCorrector(sde, score_fn, snr, n_steps) if corrector is None else \
        corrector(sde, score_fn, snr, n_steps)
    return obj.update_fn(x, t)


# ----------------------------------------------------------------------------- argument checks
def _check_choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _resolve(kind, value, table, base, builtin):
    """``(fused name or None, class)``: a registry name, a class or None (= 'none')."""
    if value is None:
        value = table["none"]
    elif isinstance(value, str):
        value = get_predictor(value) if kind == "predictor" else get_corrector(value)
    if not (isinstance(value, type) and issubclass(value, base)):
        raise TypeError(f"{kind} must be a {base.__name__} subclass (e.g. get_{kind}(name)), a registered name or "
                        f"None, got {value!r}")
    for name, cls in builtin.items():
        if value is cls:
            return name, value
    return None, value  # a user's class: its own update_fn runs (unfused)


_BUILTIN_PREDICTORS = {"euler_maruyama": EulerMaruyamaPredictor, "reverse_diffusion": ReverseDiffusionPredictor,
                       "ancestral_sampling": AncestralSamplingPredictor, "none": NonePredictor}
_BUILTIN_CORRECTORS = {"langevin": LangevinCorrector, "ald": AnnealedLangevinDynamics, "none": NoneCorrector}


def _check_number(name, v, positive=True):
    return real_number(name, v, minimum=0.0 if positive else None, strict=True)


def _check_shape(shape):
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"shape must be a sequence of ints, got {type(shape).__name__}") from None
    if not shape or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ValueError(f"shape must be a non-empty sequence of positive ints, got {shape}")
    return tuple(int(s) for s in shape)


# ----------------------------------------------------------------------------- the PC sampler
def get_pc_sampler(sde, shape, predictor, corrector, inverse_scaler, snr, n_steps=1, probability_flow=False,
                   continuous=False, denoise=True, eps=1e-3, device="cuda", noise_source="torch",
                   corrector_norm="batch", backend=None):
    """A predictor-corrector sampler (Song et al. 2021, Algorithm 1): ``pc_sampler(model) -> (x, nfe)``.

    Args (the reference's, then pydiff's):
        sde: a ``VPSDE``, ``subVPSDE`` or ``VESDE``.
        shape: the batch shape ``(B, ...)``.
        predictor, corrector: classes from ``get_predictor``/``get_corrector`` (registry names and None are
            accepted too; None runs nothing). A user's registered class runs its own ``update_fn``.
        inverse_scaler: applied to the result (the data normaliser's inverse).
        snr: the corrector's signal-to-noise ratio ``r`` (> 0).
        n_steps: corrector steps per predictor step (>= 0).
        probability_flow: predictors integrate the probability-flow ODE (no noise).
        continuous: the model takes continuous times (else SMLD/DDPM step labels).
        denoise: return the last predictor step's ``x_mean`` (the update without its noise).
        eps: the last time, in ``(0, T)``; the grid is ``linspace(T, eps, N)``.
        device: where the samples live.
        noise_source: ``'torch'`` (the reference's draws) or ``'philox'`` (in-kernel noise), see the module.
        corrector_norm: ``'batch'`` (the reference) or ``'sample'`` (the paper), see the module.
        backend: the ``pydiff.ops`` backend (None: automatic).

    Returns ``(inverse_scaler(x_mean if denoise else x), N * (n_steps + 1))`` -- the reference's NFE count,
    also when the predictor or the corrector is none.
    """
    schedule = mutils.check_sde(sde)
    shape = _check_shape(shape)
    pname, pcls = _resolve("predictor", predictor, _PREDICTORS, Predictor, _BUILTIN_PREDICTORS)
    cname, ccls = _resolve("corrector", corrector, _CORRECTORS, Corrector, _BUILTIN_CORRECTORS)
    if not callable(inverse_scaler):
        raise TypeError(f"inverse_scaler must be callable, got {type(inverse_scaler).__name__}")
    snr = _check_number("snr", snr)
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)):
        raise TypeError(f"n_steps must be an int, got {type(n_steps).__name__}")
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    n_steps = int(n_steps)
    eps = _check_number("eps", eps)
    if not eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
    _check_choice("noise_source", noise_source, NOISE_SOURCES)
    _check_choice("corrector_norm", corrector_norm, plan.CORRECTOR_NORMS)
    probability_flow, continuous, denoise = bool(probability_flow), bool(continuous), bool(denoise)
    if pname == "ancestral_sampling":
        AncestralSamplingPredictor(sde, lambda x, t: x, probability_flow)  # raises for sub-VP / the flow

    t32, t64, idx = plan.time_grid(schedule, eps)
    N, B = schedule.N, shape[0]
    kappa = plan.score_scale(schedule, t64, idx, continuous)
    pred_rows = None
    if pname not in (None, "none"):
        pred_rows = plan.predictor_rows(schedule, pname, t64, idx, kappa, probability_flow)
    corr = None
    if cname == "ald":
        corr = plan.ald_rows(schedule, t64, idx, kappa, snr)
    elif cname == "langevin":
        corr = plan.langevin_host(schedule, idx, kappa, snr)
    labels = plan.model_labels(schedule, t32, continuous)
    pred_noisy = pname not in (None, "none") and not probability_flow

    def pc_sampler(model):
        """Samples from ``model`` and the number of function evaluations (the reference's count)."""
        with torch.no_grad():
            x = sde.prior_sampling(shape).to(device)
            dev = x.device
            model_fn = mutils.get_model_fn(model, train=False)
            lab = labels[:, None].expand(N, B).contiguous().to(dev)
            vec_t = None
            if pname is None or cname is None:
                vec_t = t32[:, None].expand(N, B).contiguous().to(dev)
                score_fn = mutils.get_score_fn(sde, model, train=False, continuous=continuous)
            tables = {}

            def rows_of(x):
                """The device rows in x's compute dtype (a second set only if a wider model output promotes x)."""
                key = compute_dtype(x.dtype)
                if key not in tables:
                    tables[key] = tuple(None if r is None else torch.as_tensor(r, dtype=key, device=dev)
                                        for r in (pred_rows, corr))
                return tables[key]
            rng = None
            if noise_source == "philox":
                rng = torch.randint(-(1 << 63), (1 << 63) - 1, (2,), device=dev, dtype=torch.int64)
            draws = 0  # noise draws so far; with Philox, draw k has counter offset k

            def draw(like):
                """The reference's ``randn_like`` at this point: the tensor, or (Philox) its counter offset."""
                nonlocal draws
                draws += 1
                return mutils.randn_like(like) if rng is None else draws - 1

            def noise_kw(z, x):
                return {"noise": z.to(x.dtype)} if rng is None else {"rng": rng, "offset": z}

            def m_of(x, k):
                return mutils.check_model_output(model_fn(x, lab[k]), x)

            x_mean = x
            for k in range(N):
                # ---- corrector
                if cname is None:
                    x, x_mean = ccls(sde, score_fn, snr, n_steps).update_fn(x, vec_t[k])
                elif cname != "none":
                    for _ in range(n_steps):
                        m = m_of(x, k)
                        z = draw(x)  # in x's dtype before the update, as the reference's randn_like(x)
                        x, m = _promote(x, m)
                        crow = rows_of(x)[1]
                        if cname == "langevin":
                            langevin_step(x, m, crow[k], norm=corrector_norm, out=x, backend=backend,
                                          **noise_kw(z, x))
                        else:
                            fused_step(x, m, crow[k], out=x, backend=backend, **noise_kw(z, x))
                    x_mean = x
                # ---- predictor
                if pname is None:
                    x, x_mean = pcls(sde, score_fn, probability_flow).update_fn(x, vec_t[k])
                    continue
                if pname == "none":
                    x_mean = x
                    continue
                z = draw(x) if pname == "euler_maruyama" else None
                m = m_of(x, k)
                if pname != "euler_maruyama":
                    z = draw(x)
                x, m = _promote(x, m)
                prow = rows_of(x)[0]
                want_mean = denoise and k == N - 1
                x_mean = torch.empty_like(x) if want_mean else None
                kw = noise_kw(z, x) if pred_noisy else {}
                x = fused_step(x, m, prow[k], out=x, w_out=x_mean, backend=backend, **kw)
            return inverse_scaler(x_mean if denoise else x), N * (n_steps + 1)

    return pc_sampler


def get_sampling_fn(config, sde, shape, inverse_scaler, eps):
    """The sampler ``config.sampling`` names (score_sde's ``get_sampling_fn``): ``'ode'`` or ``'pc'``."""
    name = config.sampling.method.lower()
    if name == "ode":
        return get_ode_sampler(sde=sde, shape=shape, inverse_scaler=inverse_scaler,
                               denoise=config.sampling.noise_removal, eps=eps, device=config.device)
    if name != "pc":
        raise ValueError(f"config.sampling.method: sampler name {config.sampling.method!r} unknown")
    return get_pc_sampler(sde=sde, shape=shape, predictor=get_predictor(config.sampling.predictor.lower()),
                          corrector=get_corrector(config.sampling.corrector.lower()),
                          inverse_scaler=inverse_scaler, snr=config.sampling.snr,
                          n_steps=config.sampling.n_steps_each, probability_flow=config.sampling.probability_flow,
                          continuous=config.training.continuous, denoise=config.sampling.noise_removal,
                          eps=eps, device=config.device)
