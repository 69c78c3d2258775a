"""``pydiff.diffusers.ScoreSdeVpScheduler``: diffusers' variance-preserving score-SDE scheduler (Song et al.,
arXiv:2011.13456) with its Euler-Maruyama step fused into one kernel."""
from __future__ import annotations

import numbers

import numpy as np
import torch

# diffusers 0.42 keeps it among its deprecated schedulers, exported by neither diffusers nor its lazy
# ``schedulers.deprecated`` namespace: import the module itself
from diffusers.schedulers.deprecated.scheduling_sde_vp import ScoreSdeVpScheduler as _DiffusersVP

from ..ops import fused_step
from ..plans.score_sde import unit_rows, vp_euler_rows
from ._common import DropinMixin, StepIO, check_num_inference_steps, fallback, step_noise, validated_init
from .score_sde_ve import _NO_TIMESTEPS, HALF, checked_init, int_arg, real_arg


def _check_config(a):
    int_arg("num_train_timesteps", a["num_train_timesteps"], 1)
    beta_min = real_arg("beta_min", a["beta_min"], lo=0.0)
    real_arg("beta_max", a["beta_max"], lo=beta_min)
    if float(a["beta_max"]) <= 0:
        raise ValueError(f"beta_max must be > 0, got {a['beta_max']!r}")
    real_arg("sampling_eps", a["sampling_eps"], lo=0.0, lo_open=True, hi=1.0)


class ScoreSdeVpScheduler(DropinMixin, _DiffusersVP):
    """Drop-in for ``diffusers.ScoreSdeVpScheduler``: ``step_pred`` is one fused kernel.

    Same constructor, config, ``set_timesteps``, ``step_pred(score, x, t, generator)`` and outputs (the tuple
    ``(x, x_mean)``) as diffusers, the same noise for the same generator. The step is Euler-Maruyama on the
    reverse VP SDE with ``beta(t) = beta_min + t (beta_max - beta_min)``, a noise-predicting model
    (``score = -m / std(t)``) and ``dt = -1/n`` (``n = len(timesteps)``)::

        x_mean = x - dt (beta/2) x + dt beta m / std(t),   x = x_mean + sqrt(beta) sqrt(-dt) z

    The row is computed on the device from ``t`` (no host sync; one row, or one per sample for a ``(B,)``
    ``t``), in ``t``'s dtype by diffusers' operations (``vp_euler_rows``). ``t`` may also be a Python number
    (diffusers fails on one: it calls ``torch.exp`` on it). Half-precision samples run fused in float32, as
    diffusers' float32 scalars promote them. Runs diffusers' code, with a warning once per reason, for mixed
    dtypes and a float64 ``t`` with a float32 sample (diffusers' result is then float64).
    ``pydiff_noise = "philox"`` draws the noise in the kernel.
    """

    __init__ = validated_init(checked_init(_DiffusersVP.__init__, _check_config), {})

    # saved pipelines name the package's module (see pydiff/diffusers/__init__.py)
    __module__ = "pydiff.diffusers"

    def _pydiff_unsupported(self):
        return None

    def set_timesteps(self, num_inference_steps, device=None):
        if num_inference_steps is None:
            raise TypeError("num_inference_steps must be an int, got NoneType")
        super().set_timesteps(check_num_inference_steps(num_inference_steps), device=device)

    def _units(self, device, dtype) -> torch.Tensor:
        cache = self.__dict__.setdefault("_pydiff_units", {})
        key = (torch.device(device), dtype)
        u = cache.get(key)
        if u is None:
            u = cache[key] = unit_rows({"B0": 1.0}, ("P", "Q", "C"), dtype, device)
        return u

    def step_pred(self, score, x, t, generator=None):
        if self.timesteps is None:
            raise ValueError(_NO_TIMESTEPS)
        io = StepIO(score, x)
        if io.mixed:
            fallback(self, io.mixed, key="mixed dtypes")
            return super().step_pred(score, x, t, generator)
        if isinstance(t, torch.Tensor):
            if not t.is_floating_point():
                raise TypeError(f"t must be a floating tensor or a number, got a tensor of dtype {t.dtype}")
            if t.numel() not in (1, io.shape[0]):
                raise ValueError(f"t must be one time or one per sample ({io.shape[0]}), got a tensor of shape "
                                 f"{tuple(t.shape)}")
            if t.dtype == torch.float64 and io.dtype != torch.float64:
                fallback(self, f"a float64 t with a {io.dtype} sample (diffusers' result is then float64)",
                         key="float64 t")
                return super().step_pred(score, x, t, generator)
            if t.dtype not in (torch.float32, torch.float64):
                fallback(self, f"a {t.dtype} t (diffusers computes the step's scalars in {t.dtype})", key="half t")
                return super().step_pred(score, x, t, generator)
            t = t.to(io.device)
        elif isinstance(t, (bool, np.bool_)) or not isinstance(t, numbers.Real):
            raise TypeError(f"t must be a floating tensor or a number, got {type(t).__name__} {t!r}")
        else:
            t = torch.tensor(float(t), dtype=torch.float32, device=io.device)
        self.last_fallback_reason = None
        if io.dtype in HALF:
            io = StepIO(score.float(), x.float())  # float32 arithmetic on the upcast inputs, as diffusers'
        T = torch.float64 if io.dtype == torch.float64 else torch.float32
        cfg = self.config
        coef = vp_euler_rows(self._units(io.device, T), t, float(cfg.beta_min), float(cfg.beta_max),
                             len(self.timesteps))
        noise, seed, offset, rng = step_noise(self, x.shape, generator, x.device, x.dtype, io)
        mean, mean_k = io.empty()
        out, out_k = io.empty()
        fused_step(io.x, io.m, coef, out=out_k, w_out=mean_k, noise=noise, seed=seed, offset=offset, rng=rng,
                   backend=self.pydiff_backend)
        return io.result(out), io.result(mean)
