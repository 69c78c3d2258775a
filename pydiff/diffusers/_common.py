"""What the fused diffusers drop-ins share: option checks, timestep handling, fallback, noise.

A drop-in subclasses a diffusers scheduler, keeps its constructor signature and config (so ``from_config``
and ``from_pretrained`` work unchanged), and overrides ``step``: when the fused path covers the call it
runs one ``fused_step`` (plus ``dynamic_threshold`` when thresholding), otherwise it logs the reason at
debug level and calls the parent's ``step``.
"""
from __future__ import annotations

import functools
import inspect
import logging
import math
import os

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

logger = logging.getLogger("pydiff.diffusers")


def fallback(scheduler, reason: str) -> None:
    """Record (and log at debug level) why a call went to the parent diffusers implementation."""
    scheduler.last_fallback_reason = reason
    logger.debug("pydiff %s: falling back to diffusers: %s", type(scheduler).__name__, reason)


def validated_init(parent_init, allowed: dict):
    """Wrap ``parent_init`` so that unknown option values raise a ValueError naming the option.

    ``functools.wraps`` keeps the parent's signature visible to ``inspect.signature`` (diffusers'
    ``from_config`` reads the constructor's parameters from it).
    """
    sig = inspect.signature(parent_init)

    @functools.wraps(parent_init)
    def __init__(self, *args, **kwargs):
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        values = bound.arguments
        for name, choices in allowed.items():
            if name == "beta_schedule" and values.get("trained_betas") is not None:
                continue
            if name in values and values[name] not in choices:
                raise ValueError(f"{name} must be one of {tuple(choices)}, got {values[name]!r}")
        parent_init(self, *args, **kwargs)
        self.last_fallback_reason = None
        self.pydiff_backend = os.environ.get("PYDIFF_BACKEND") or None
        self.pydiff_noise = "diffusers"
        self._pydiff_noise_count = 0

    return __init__


def check_num_inference_steps(num_inference_steps) -> None:
    """None (custom timesteps) or a positive int; diffusers itself checks the upper bound."""
    if num_inference_steps is None:
        return
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise TypeError(f"num_inference_steps must be an int, got {type(num_inference_steps).__name__}")
    if num_inference_steps <= 0:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")


def clip_bound(cfg) -> float:
    """The static clip bound of x0 in a DDIM/DDPM config: ``clip_sample_range`` when clipping (and not
    thresholding, which replaces it), else +inf."""
    return cfg.clip_sample_range if (cfg.clip_sample and not cfg.thresholding) else math.inf


def threshold_scale(scheduler, sample, model_output, coef, index):
    """Per-sample dynamic-thresholding scale for the step's x0 when the config asks for it, else None."""
    cfg = scheduler.config
    if not cfg.thresholding:
        return None
    from ..ops import dynamic_threshold

    return dynamic_threshold(sample, model_output, coef, index=index, ratio=cfg.dynamic_thresholding_ratio,
                             max_val=cfg.sample_max_value, backend=scheduler.pydiff_backend)


NOISE_SOURCES = ("diffusers", "philox")


def step_noise(scheduler, shape, generator, device, dtype, variance_noise=None):
    """``(noise, seed, offset)`` for ``fused_step``: how the step's ``z`` is obtained.

    ``scheduler.pydiff_noise = "diffusers"`` (default): drawn exactly as diffusers draws it (``randn_tensor``
    with the given generator), so the images equal diffusers'. ``"philox"``: generated inside the kernel from
    Philox (docs/ops.md) — no separate noise tensor, no extra launch — keyed by the generator's seed (else
    ``torch.initial_seed()``) and a per-scheduler step counter reset by ``set_timesteps``. Reproducible for a
    given seed and identical on every backend, but different numbers from diffusers' (opt-in).
    """
    if variance_noise is not None:
        return variance_noise, None, 0
    source = getattr(scheduler, "pydiff_noise", "diffusers")
    if source == "diffusers":
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype), None, 0
    if source != "philox":
        raise ValueError(f"pydiff_noise must be one of {NOISE_SOURCES}, got {source!r}")
    seed = generator.initial_seed() if generator is not None else torch.initial_seed()
    offset = scheduler._pydiff_noise_count
    scheduler._pydiff_noise_count += 1
    return None, int(seed) % (1 << 64), offset


def check_pair(model_output, sample) -> None:
    """model_output and sample must agree in shape, dtype and device (diffusers would broadcast or promote)."""
    if not isinstance(model_output, torch.Tensor):
        raise TypeError(f"model_output must be a torch.Tensor, got {type(model_output).__name__}")
    if not isinstance(sample, torch.Tensor):
        raise TypeError(f"sample must be a torch.Tensor, got {type(sample).__name__}")
    if model_output.device != sample.device:
        raise ValueError(f"model_output is on {model_output.device} but sample is on {sample.device}")
    if model_output.dtype != sample.dtype:
        raise TypeError(f"model_output has dtype {model_output.dtype} but sample has dtype {sample.dtype}")
    if model_output.shape != sample.shape:
        raise ValueError(
            f"model_output has shape {tuple(model_output.shape)} but sample has shape {tuple(sample.shape)}"
        )


def timestep_arg(timestep, num_rows: int, device: torch.device):
    """Classify a timestep: ``("int", t)``, ``("device", int64 tensor of shape (1,))`` or ``(None, reason)``.

    A Python/NumPy integer or a CPU tensor becomes an int with no sync. A one-element integer tensor on the
    data's (non-CPU) device stays there: the kernel reads its table row through ``fused_step(index=)``.
    """
    if isinstance(timestep, torch.Tensor):
        if timestep.numel() != 1:
            return None, "a timestep tensor with more than one element"
        if timestep.is_floating_point() or timestep.is_complex():
            return None, "a floating-point timestep"
        if timestep.device.type == "cpu" or timestep.device != device:
            timestep = int(timestep.reshape(()).item())  # a CPU read: no device sync
        else:
            return "device", timestep.reshape(1).to(torch.int64)
    if isinstance(timestep, (int, np.integer)) and not isinstance(timestep, bool):
        t = int(timestep)
        if not 0 <= t < num_rows:
            return None, f"timestep {t} outside [0, {num_rows})"
        return "int", t
    return None, f"a timestep of type {type(timestep).__name__}"


def guarded_table(rows: np.ndarray) -> np.ndarray:
    """Rows framed by a NaN row on each side, for device-side timestep lookup.

    The caller passes ``table[1:]`` and ``index = clamp(t, -1, R)``: an off-range device timestep then selects
    a NaN row (kernels read the row before the view; the reference's ``coef[-1]`` wraps to the last row),
    so the output is NaN instead of an out-of-bounds read. Checking on the host would need a sync.
    """
    nan = np.full((1, rows.shape[1]), np.nan)
    return np.concatenate([nan, rows, nan])


class TableCache:
    """Per-key float64 row tables and their guarded device copies."""

    def __init__(self):
        self._rows: dict = {}
        self._dev: dict = {}

    def clear(self):
        self._rows.clear()
        self._dev.clear()

    def rows(self, key, build):
        r = self._rows.get(key)
        if r is None:
            r = build()
            self._rows[key] = r
        return r

    def device_view(self, key, rows, device, dtype):
        cdtype = torch.float64 if dtype == torch.float64 else torch.float32
        dkey = (key, torch.device(device), cdtype)
        t = self._dev.get(dkey)
        if t is None:
            t = torch.from_numpy(guarded_table(rows)).to(device=device, dtype=cdtype)[1:]
            self._dev[dkey] = t
        return t


def select_rows(kind, t, table):
    """(coef, index) for fused_step: a row view for an int timestep, the table plus a clamped index else."""
    if kind == "int":
        return table[t], None
    return table, t.clamp(-1, table.shape[0] - 1)
