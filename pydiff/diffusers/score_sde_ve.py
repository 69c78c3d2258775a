"""``pydiff.diffusers.ScoreSdeVeScheduler``: diffusers' variance-exploding score-SDE scheduler (the predictor
and the Langevin corrector of Song et al., arXiv:2011.13456) with each step fused into one kernel."""
from __future__ import annotations

import functools
import inspect
import math
import numbers

import numpy as np
import torch
from diffusers import ScoreSdeVeScheduler as _DiffusersVE
from diffusers.schedulers.scheduling_sde_ve import SdeVeOutput
from diffusers.schedulers.scheduling_utils import SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor
from diffusers.utils.torch_utils import randn_tensor as _diffusers_randn_tensor  # to tell a patched global

from ..ops import compute_dtype, fused_step, langevin_step
from ..plans.score_sde import smld_step_rows, ve_sigmas
from ._common import (DropinMixin, StepIO, check_num_inference_steps, compiling, fallback, fast_randn_tensor,
                      guarded_table, needs_grad, select_rows, step_noise, validated_init)

_NO_TIMESTEPS = "`self.timesteps` is not set, you need to run 'set_timesteps' after creating the scheduler"
HALF = (torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------- argument checks (both SDE drop-ins)
def int_arg(name: str, value, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def real_arg(name: str, value, *, lo=None, lo_open=False, hi=None, hi_open=False) -> float:
    """``value`` as a finite float in the given range (bounds inclusive unless ``*_open``)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    v = float(value)
    bad = not math.isfinite(v)
    bad |= lo is not None and (v <= lo if lo_open else v < lo)
    bad |= hi is not None and (v >= hi if hi_open else v > hi)
    if bad:
        rng = (f"{'(' if lo_open else '['}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}"
               f"{')' if hi_open or hi is None else ']'}")
        raise ValueError(f"{name} must be a finite number in {rng}, got {value!r}")
    return v


def checked_init(parent_init, check):
    """``parent_init`` preceded by ``check(arguments)``; the parent's signature stays visible (``from_config``)."""
    sig = inspect.signature(parent_init)

    @functools.wraps(parent_init)
    def __init__(self, *args, **kwargs):
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        check(bound.arguments)
        parent_init(self, *args, **kwargs)

    return __init__


def _check_sigmas(sigma_min, sigma_max):
    sigma_min = real_arg("sigma_min", sigma_min, lo=0.0, lo_open=True)
    sigma_max = real_arg("sigma_max", sigma_max, lo=sigma_min, lo_open=True)
    return sigma_min, sigma_max


def _check_config(a):
    int_arg("num_train_timesteps", a["num_train_timesteps"], 1)
    real_arg("snr", a["snr"], lo=0.0)
    _check_sigmas(a["sigma_min"], a["sigma_max"])
    real_arg("sampling_eps", a["sampling_eps"], lo=0.0, lo_open=True, hi=1.0)
    int_arg("correct_steps", a["correct_steps"], 0)


def _corrector_draw(shape, generator=None, device=None, dtype=None):
    """The corrector's noise as diffusers draws it: ``randn_tensor`` with no device and no dtype -- on the CPU
    (a CPU generator, or the CPU's global RNG without one) in the default dtype, then moved to the sample's
    device. diffusers refuses a CUDA generator there (it cannot draw a CPU tensor from it); this draws on the
    generator's device instead."""
    first = generator[0] if isinstance(generator, list) and generator else generator
    if first is not None and first.device.type != "cpu":
        return randn_tensor(shape, generator=generator, device=first.device).to(device)
    if randn_tensor is _diffusers_randn_tensor and not compiling():
        # one CPU torch.randn: drawn by torch_randn (same numbers to float32 rounding, same generator state,
        # ~4x faster), for float64 samples too: diffusers' float32 step size already limits a float64
        # corrector's agreement to ~1e-7
        fast = fast_randn_tensor(shape, generator, None, None)
        if fast is not None:
            return fast.to(device)
    return randn_tensor(shape, generator=generator).to(device)


class ScoreSdeVeScheduler(DropinMixin, _DiffusersVE):
    """Drop-in for ``diffusers.ScoreSdeVeScheduler`` (Song et al., arXiv:2011.13456, the SMLD/NCSN chain as a
    variance-exploding SDE): ``step_pred`` is one fused kernel, ``step_correct`` one ``langevin_step`` (the
    norms, then the update, with the step size computed on the device: no host sync).

    Same constructor, config, ``set_timesteps``, ``set_sigmas``, ``step_pred``, ``step_correct``, ``add_noise``
    and outputs as diffusers, and the same noise for the same generator (the corrector's drawn, as diffusers
    draws it, on the CPU in float32). Per step, with ``i = floor(t (n - 1))`` (``n = len(timesteps)``, float32
    arithmetic as diffusers) and ``sigma_{-1} = 0``::

        predictor  g = sqrt(sigma_i^2 - sigma_{i-1}^2),  x_mean = x + g^2 m,  x = x_mean + g z
        corrector  eps = 2 (snr mean_b ||z_b|| / mean_b ||m_b||)^2,  x = x + eps m + sqrt(2 eps) z

    (the corrector's norms are per-sample L2 norms averaged over the batch, as diffusers computes them; ``eps``
    is computed in the data's compute type, so for float64 data it differs from diffusers', which is a float32
    number whatever the data, by at most one float32 rounding).
    ``set_sigmas`` computes ``sigmas = sigma_min (sigma_max/sigma_min)^t`` in log space: diffusers' float32
    power is inf for every step once ``sigma_max / sigma_min`` exceeds 3.4e38 (see ``ve_sigmas``), and it also
    evaluates a discarded ``(sigma_max/sigma_min)^(t / sampling_eps)``, inf for nearly every step at the
    default ``sampling_eps = 1e-5``, which is not computed here.

    ``scheduler.pydiff_noise = "philox"`` draws the noise inside the kernels (a Philox key from the generator
    per call); the corrector's second pass regenerates the very ``z`` whose norm its first pass took.
    Half-precision samples:
    ``step_pred`` runs fused in float32 (diffusers promotes the result to float32 too); ``step_correct`` runs
    diffusers' code (it takes half-precision norms). Off-range or non-finite timesteps and mixed dtypes run
    diffusers' code too, with a warning once per reason (``pydiff.explain``). A timestep tensor on the GPU is
    read by the kernel (an off-range one gives NaN rather than diffusers' IndexError, which needs a sync).
    Bad configuration values raise ValueError/TypeError naming the argument.
    """

    __init__ = validated_init(checked_init(_DiffusersVE.__init__, _check_config), {})

    # saved pipelines name the package's module (see pydiff/diffusers/__init__.py)
    __module__ = "pydiff.diffusers"

    def _pydiff_unsupported(self):
        return None

    # ------------------------------------------------------------------ grids
    def set_timesteps(self, num_inference_steps: int, sampling_eps: float | None = None, device=None):
        if num_inference_steps is None:
            raise TypeError("num_inference_steps must be an int, got NoneType")
        n = check_num_inference_steps(num_inference_steps)
        if sampling_eps is not None:
            sampling_eps = real_arg("sampling_eps", sampling_eps, lo=0.0, lo_open=True, hi=1.0)
        super().set_timesteps(n, sampling_eps, device=device)

    def set_sigmas(self, num_inference_steps: int, sigma_min: float | None = None, sigma_max: float | None = None,
                   sampling_eps: float | None = None):
        if num_inference_steps is None:
            raise TypeError("num_inference_steps must be an int, got NoneType")
        n = check_num_inference_steps(num_inference_steps)
        cfg = self.config
        sigma_min, sigma_max = _check_sigmas(cfg.sigma_min if sigma_min is None else sigma_min,
                                             cfg.sigma_max if sigma_max is None else sigma_max)
        if sampling_eps is not None:
            sampling_eps = real_arg("sampling_eps", sampling_eps, lo=0.0, lo_open=True, hi=1.0)
        if self.timesteps is None:
            self.set_timesteps(n, sampling_eps)
        # the noise levels step_pred reads: diffusers' own float32 expression (its endpoints are logs: no overflow)
        self.discrete_sigmas = torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), n))
        t = self.timesteps.detach().cpu().double().numpy()
        self.sigmas = torch.from_numpy(ve_sigmas(t, sigma_min, sigma_max)).to(torch.float32)

    # ------------------------------------------------------------------ tables
    def _pred_table(self, device, dtype) -> torch.Tensor:
        """The guarded device table of predictor rows for the current ``discrete_sigmas`` (rebuilt when they
        change), one row per noise level between two NaN rows."""
        cache = self.__dict__.get("_pydiff_pred")
        if cache is None or cache[0] is not self.discrete_sigmas:
            rows = smld_step_rows(self.discrete_sigmas.detach().cpu().numpy())
            cache = self._pydiff_pred = (self.discrete_sigmas, guarded_table(rows), {})
        cdtype = torch.float64 if dtype == torch.float64 else torch.float32
        key = (torch.device(device), cdtype)
        t = cache[2].get(key)
        if t is None:
            t = cache[2][key] = torch.from_numpy(cache[1]).to(device=device, dtype=cdtype)
        return t

    def _corrector_coef(self, device, dtype) -> torch.Tensor:
        """``(c, kappa) = (2 snr^2, 1)`` on the device (``langevin_step``'s ``eps = c (||z|| / ||m||)^2``, batch
        norms), copied there once per (snr, device, dtype)."""
        cache = self.__dict__.setdefault("_pydiff_corrector", {})
        snr = float(self.config.snr)
        key = (snr, torch.device(device), dtype)
        c = cache.get(key)
        if c is None:
            c = cache[key] = torch.tensor([2.0 * snr * snr, 1.0], dtype=compute_dtype(dtype), device=device)
        return c

    def _level(self, timestep, sample, batch):
        """``("int", i)``, ``("index", int64 tensor)`` or ``(None, reason)``: the noise level(s) diffusers'
        ``step_pred`` selects, ``floor(t (len(timesteps) - 1))`` in float32 (its ``timestep * ones(B)``)."""
        n_t, n_s = len(self.timesteps), len(self.discrete_sigmas)
        if isinstance(timestep, torch.Tensor):
            if timestep.is_complex() or timestep.dtype == torch.bool:
                return None, f"a timestep tensor of dtype {timestep.dtype}"
            if timestep.numel() not in (1, sample.shape[0]):
                raise ValueError(f"timestep must be one timestep or one per sample ({sample.shape[0]}), got a "
                                 f"tensor of shape {tuple(timestep.shape)}")
            if timestep.numel() == 1 and (timestep.device.type == "cpu" or timestep.device != sample.device):
                timestep = timestep.reshape(()).item()  # a CPU read (no device sync)
            else:
                # diffusers' own operations, where the timestep lives
                dev = timestep.device
                idx = ((timestep * torch.ones(sample.shape[0], device=dev)) * (n_t - 1)).long().reshape(-1)
                if dev.type == "cpu":
                    lo, hi = int(idx.min()), int(idx.max())
                    if lo < 0 or hi >= n_s:
                        return None, f"timesteps selecting noise levels outside [0, {n_s})"
                return "index", idx.to(sample.device)
        if isinstance(timestep, (bool, np.bool_)) or not isinstance(timestep, numbers.Real):
            return None, f"a timestep of type {type(timestep).__name__}"
        t = np.float32(timestep)
        if not np.isfinite(t):
            return None, "a non-finite timestep"
        i = int(t * np.float32(n_t - 1))
        if not 0 <= i < n_s:
            return None, f"timestep {float(timestep)!r} selecting noise level {i} outside [0, {n_s})"
        return "int", i

    # ------------------------------------------------------------------ steps
    def step_pred(self, model_output, timestep, sample, generator=None, return_dict: bool = True):
        if self.timesteps is None:
            raise ValueError(_NO_TIMESTEPS)
        io = StepIO(model_output, sample)
        if io.mixed:
            fallback(self, io.mixed, key="mixed dtypes")
            return super().step_pred(model_output, timestep, sample, generator, return_dict)
        if io.dtype in HALF:
            # diffusers multiplies by float32 scalar tensors: its result is float32 arithmetic on the upcast
            # inputs (and its noise, drawn in the sample's dtype, upcast), which the float32 kernel reproduces
            io = StepIO(model_output.float(), sample.float())
        kind, level = self._level(timestep, sample, io.shape[0])
        if kind is None:
            fallback(self, level, key="timestep" if level.startswith("timestep ") else None)
            return super().step_pred(model_output, timestep, sample, generator, return_dict)
        self.last_fallback_reason = None
        table = self._pred_table(io.device, io.dtype)
        if kind == "int":
            coef, index = table[1 + level], None
        else:
            coef, index = select_rows("device", level, table[1:])
        noise, seed, offset, rng = step_noise(self, sample.shape, generator, sample.device, sample.dtype, io)
        mean, mean_k = io.empty()
        prev, prev_k = io.empty()
        fused_step(io.x, io.m, coef, index=index, out=prev_k, w_out=mean_k, noise=noise, seed=seed, offset=offset,
                   rng=rng, backend=self.pydiff_backend)
        prev, mean = io.result(prev), io.result(mean)
        if not return_dict:
            return prev, mean
        return SdeVeOutput(prev_sample=prev, prev_sample_mean=mean)

    def step_correct(self, model_output, sample, generator=None, return_dict: bool = True):
        if self.timesteps is None:
            raise ValueError(_NO_TIMESTEPS)
        io = StepIO(model_output, sample)
        if io.mixed:
            fallback(self, io.mixed, key="mixed dtypes")
            return super().step_correct(model_output, sample, generator, return_dict)
        if io.dtype in HALF:
            fallback(self, f"a {io.dtype} corrector step (diffusers takes the norms in {io.dtype} and promotes the "
                           "result to float32; one fused pass does not reproduce that rounding)", key="half corrector")
            return super().step_correct(model_output, sample, generator, return_dict)
        if needs_grad(io.x, io.m):
            fallback(self, "a corrector step while autograd records (pydiff's langevin_step has no backward; "
                           "diffusers' corrector is differentiable)", key="corrector under autograd")
            return super().step_correct(model_output, sample, generator, return_dict)
        self.last_fallback_reason = None
        noise, seed, offset, rng = step_noise(self, sample.shape, generator, sample.device, None, io,
                                              draw=_corrector_draw)
        prev, prev_k = io.empty()
        langevin_step(io.x, io.m, self._corrector_coef(io.device, io.dtype), out=prev_k, noise=noise, seed=seed,
                      offset=offset, rng=rng, backend=self.pydiff_backend)
        prev = io.result(prev)
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)
