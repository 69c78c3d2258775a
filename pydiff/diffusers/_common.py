"""What the fused diffusers drop-ins share: option checks, timestep handling, fallback, noise.

A drop-in subclasses a diffusers scheduler, keeps its constructor signature and config (so ``from_config``
and ``from_pretrained`` work unchanged), and overrides ``step``: when the fused path covers the call it
runs one ``fused_step`` (plus ``dynamic_threshold`` when thresholding), otherwise it calls the parent's
``step`` and says why: a warning through the ``pydiff.diffusers`` logger the first time a reason occurs on a
scheduler instance (debug level afterwards), the reason in ``last_fallback_reason``, and every reason seen in
``pydiff.explain(scheduler)``.
"""
from __future__ import annotations

import functools
import inspect
import logging
import math
import os

import numbers
from collections import OrderedDict

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from .._checks import real_number
from ..ops import int64_to_seed, philox_normal, torch_randn
from ..plans.rows import with_guidance

logger = logging.getLogger("pydiff.diffusers")

#: True while TorchDynamo traces the step (``torch.compile``, ``torch.export``). A traced step may not read a
#: tensor on the host (``.item()``, ``.tolist()``, NumPy: each is a graph break), build a table (NumPy) or log
#: (Python logging is a graph break): it reads what ``set_timesteps`` prepared (``TracedTables``) and lets the
#: kernel pick the row of a timestep tensor (``fused_step(index=)``), as it does for an accelerator timestep.
compiling = torch.compiler.is_compiling

_grad_enabled = torch.is_grad_enabled


def needs_grad(*tensors) -> bool:
    """True when autograd records and one of ``tensors`` requires grad (``pydiff.ops.library.needs_grad`` for
    tensors known not to be None: a plain loop, 0.3 us where the generator form takes 1 us on every step)."""
    if not _grad_enabled():
        return False
    for t in tensors:
        if t.requires_grad:
            return True
    return False


def fallback(scheduler, reason: str, key: str | None = None) -> None:
    """Record why a call went to the parent diffusers implementation, and say so where a user sees it.

    The first time a reason (``key``, default the reason itself: callers whose reason names a step pass a
    stable key) occurs on a scheduler instance it is a warning through the ``pydiff.diffusers`` logger, which
    Python's logging shows at its default level; repeats are debug messages, so a 50-step run warns once.
    """
    scheduler.last_fallback_reason = reason
    seen = scheduler.__dict__.setdefault("_pydiff_fallbacks", {})
    key = reason if key is None else key
    name = type(scheduler).__name__
    if key in seen:
        seen[key] = reason
        logger.debug("pydiff %s: runs diffusers' own step: %s", name, reason)
        return
    seen[key] = reason
    logger.warning("pydiff %s: this step runs diffusers' own (unfused) code: %s. Said once per scheduler and "
                   "reason; pydiff.explain(scheduler) lists what runs fused.", name, reason)


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
        self._pydiff_fallbacks = {}
        self.pydiff_backend = os.environ.get("PYDIFF_BACKEND") or None
        self.pydiff_noise = "diffusers"

    return __init__


def check_num_inference_steps(num_inference_steps, *, floats: bool = False, tensors: bool = False):
    """``num_inference_steps`` as a Python int (None stays None: custom timesteps); diffusers checks the upper
    bound. What diffusers 0.42 accepts, and nothing it fails on later: Python and NumPy integers everywhere,
    integral floats where ``floats`` (DDPM: diffusers runs ``set_timesteps(10.0)``; its DDIM step fails on it
    and its DPM schedulers reject it), one-element integer tensors where ``tensors`` (the DPM schedulers)."""
    n = num_inference_steps
    if n is None:
        return None
    if tensors and isinstance(n, torch.Tensor) and n.numel() == 1 and not n.is_floating_point() \
            and not n.is_complex() and n.dtype != torch.bool:
        n = int(n.item())
    elif floats and isinstance(n, (float, np.floating)) and float(n).is_integer():
        n = int(n)
    elif isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise TypeError(f"num_inference_steps must be an int, got {type(n).__name__} {n!r}")
    n = int(n)
    if n <= 0:
        raise ValueError(f"num_inference_steps must be >= 1, got {n}")
    return n


def clip_bound(cfg) -> float:
    """The static clip bound of x0 in a DDIM/DDPM config: ``clip_sample_range`` when clipping (and not
    thresholding, which replaces it), else +inf."""
    return cfg.clip_sample_range if (cfg.clip_sample and not cfg.thresholding) else math.inf


def threshold_scale(scheduler, sample, model_output, coef, index, m2=None):
    """Per-sample dynamic-thresholding scale for the step's x0 when the config asks for it, else None
    (``m2``: the conditional output of a guided step, combined with ``model_output`` by the row's M1, M2)."""
    cfg = scheduler.config
    if not cfg.thresholding:
        return None
    from ..ops import dynamic_threshold

    return dynamic_threshold(sample, model_output, coef, index=index, m2=m2, ratio=cfg.dynamic_thresholding_ratio,
                             max_val=cfg.sample_max_value, backend=scheduler.pydiff_backend)


class Guidance:
    """Classifier-free guidance of one step (Ho & Salimans 2022, arXiv:2207.12598): the unconditional output
    ``uncond`` and the scale ``s`` of ``m_e = uncond + s (cond - uncond)``, the model output the step then uses.

    The fused step reads both outputs once: ``m = uncond``, ``m2 = cond`` with the row's ``M1 = 1 - s``,
    ``M2 = s`` (docs/ops.md), so a guided step moves one tensor more than a plain one and does no extra pass.
    """

    __slots__ = ("uncond", "scale", "raw")

    def __init__(self, uncond, scale: float, raw=None):
        self.uncond, self.scale, self.raw = uncond, scale, raw

    @property
    def differentiable(self) -> bool:
        """The scale is a tensor that autograd records a gradient for: the fused row would take it as a constant,
        so the step runs diffusers' own on ``combine`` (which keeps the gradient)."""
        return isinstance(self.raw, torch.Tensor) and self.raw.requires_grad and torch.is_grad_enabled()

    def combine(self, cond):
        """``uncond + s (cond - uncond)`` in plain torch: the model output a fallback hands to diffusers."""
        s = self.raw if self.differentiable else self.scale
        return self.uncond + s * (cond - self.uncond)


def guidance_arg(model_output, model_output_uncond, guidance_scale):
    """The step's guidance (``Guidance``), or None without ``model_output_uncond`` and ``guidance_scale``.

    Both or neither (one without the other is a TypeError). ``guidance_scale``: a real number >= 0 (Python,
    NumPy, or a one-element tensor, read on the host). Unlike a pipeline's ``guidance_scale``, where a value
    <= 1 switches guidance off and skips the unconditional call, the step combines whatever it is given: 0 is
    the unconditional output, 1 the conditional one, values in between interpolate; negative scales (which
    extrapolate away from the condition) are rejected as a likely sign error. ``model_output_uncond``: a tensor
    of ``model_output``'s shape (ValueError), dtype (TypeError) and device (ValueError).
    """
    if model_output_uncond is None and guidance_scale is None:
        return None
    if model_output_uncond is None:
        raise TypeError("guidance_scale was given without model_output_uncond (classifier-free guidance needs the "
                        "unconditional model output)")
    if guidance_scale is None:
        raise TypeError("model_output_uncond was given without guidance_scale")
    if not isinstance(model_output_uncond, torch.Tensor):
        raise TypeError(f"model_output_uncond must be a torch.Tensor, got {type(model_output_uncond).__name__}")
    if not isinstance(model_output, torch.Tensor):
        raise TypeError(f"model_output must be a torch.Tensor, got {type(model_output).__name__}")
    s = real_number("guidance_scale", guidance_scale, minimum=0.0, tensors=True)
    if model_output_uncond.shape != model_output.shape:
        raise ValueError(f"model_output_uncond has shape {tuple(model_output_uncond.shape)} but model_output has "
                         f"shape {tuple(model_output.shape)}")
    if model_output_uncond.dtype != model_output.dtype:
        raise TypeError(f"model_output_uncond is {model_output_uncond.dtype} but model_output is {model_output.dtype}")
    if model_output_uncond.device != model_output.device:
        raise ValueError(f"model_output_uncond is on {model_output_uncond.device} but model_output is on "
                         f"{model_output.device}")
    return Guidance(model_output_uncond, s, guidance_scale)


def guided_table(scheduler, table: torch.Tensor, scale: float) -> torch.Tensor:
    """``with_guidance(table, scale)``, kept per scheduler for the 4 most recent (table, scale) pairs: a run
    guides with one scale, and a copy per step measured 7 us (a 60-row table, 2-core CPU), a third of a small
    fused step. Keyed by the table object (the drop-ins' table caches return the same tensor for a schedule;
    the entry holds it, so its id is not reused). While TorchDynamo traces: the copy inside the graph."""
    if compiling():
        return with_guidance(table, scale)
    cache = scheduler.__dict__.setdefault("_pydiff_guided", OrderedDict())
    key = (id(table), scale)
    entry = cache.get(key)
    if entry is None or entry[0] is not table:
        entry = cache[key] = (table, with_guidance(table, scale))
        if len(cache) > 4:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return entry[1]


NOISE_SOURCES = ("diffusers", "philox")


def check_noise_source(value) -> str:
    if not isinstance(value, str) or value not in NOISE_SOURCES:
        raise ValueError(f"pydiff_noise must be one of {NOISE_SOURCES}, got {value!r}")
    return value


def philox_key(generator, device):
    """``(seed, offset, rng)``: a fresh Philox key and counter offset for one step's noise.

    One ``torch.randint`` draw of two 64-bit words from ``generator`` -- or, without one, from the global RNG
    of ``device``, where ``torch.randn`` would draw -- so the generator advances as it would by a noise draw,
    and two runs differ unless it is reseeded. Drawn on the generator's own device: on an accelerator the
    words stay there and reach the kernel as ``fused_step(rng=)`` (no host sync); on the CPU they are host ints.
    """
    gdev = generator.device if generator is not None else torch.device(device)
    words = torch.randint(-(1 << 63), (1 << 63) - 1, (2,), generator=generator, device=gdev, dtype=torch.int64)
    if words.device.type == "cpu" and not compiling():  # traced: the words stay a tensor (no host read)
        a, b = words.tolist()
        return int64_to_seed(a), int64_to_seed(b), None
    return None, 0, words.to(device)


def fast_randn_tensor(shape, generator, device, dtype):
    """``randn_tensor(shape, generator=generator, device=device, dtype=dtype)`` drawn by ``torch_randn`` (the
    same numbers to float32 rounding, the same generator state afterwards, ~4x faster) when that call is one
    ``torch.randn`` on the CPU: a single CPU generator or None, a CPU device. None otherwise (the caller then
    calls ``randn_tensor``); ``torch_randn`` itself falls back to ``torch.randn`` for other dtypes and sizes."""
    if isinstance(generator, list) and len(generator) == 1:
        generator = generator[0]  # as randn_tensor treats a list of one
    if generator is not None and not (isinstance(generator, torch.Generator) and generator.device.type == "cpu"):
        return None
    dev = torch.device(device) if isinstance(device, str) else device
    if dev is None:
        # randn_tensor draws on torch's default device then, and returns the tensor on the CPU
        if torch.get_default_device().type != "cpu":
            return None
    elif not isinstance(dev, torch.device) or dev.type != "cpu":
        return None
    return torch_randn(tuple(shape), generator=generator, dtype=dtype, device="cpu")


def step_noise(scheduler, shape, generator, device, dtype, io, variance_noise=None, draw=randn_tensor):
    """``(noise, seed, offset, rng)`` for ``fused_step``: how the step's ``z`` is obtained.

    ``shape``/``dtype``: of the draw diffusers makes (broadcast to the step's shape by ``io`` afterwards, as
    diffusers broadcasts it). ``scheduler.pydiff_noise = "diffusers"`` (default): drawn exactly as diffusers
    draws it (``randn_tensor`` with the given generator or list of generators), so the images equal diffusers'.
    ``"philox"``: generated inside the kernel from Philox (docs/ops.md) -- no noise tensor, no extra pass --
    with a key drawn from the generator on every noisy step (``philox_key``). Reproducible for a given
    generator state, bit-identical on cpu and cuda (within a few float32 ulp on triton, whose log/cos are
    libdevice's), but different numbers from diffusers' (opt-in). The
    kernel's stream depends on an element's position in the batch, so with a *list* of per-sample generators
    sample ``b``'s noise is ``philox_normal`` of that sample alone, keyed by generator ``b``: a batch split
    into single-sample runs (each with its own generator) gives the batch's samples back. Noise follows the
    memory order of the step's output (a channels_last run draws other numbers than a contiguous one).
    ``draw``: the ``randn_tensor`` to use (the caller's module global, so a patched one is honoured); when it
    is diffusers' own, the draw is one CPU ``torch.randn`` and the step is not float64, ``torch_randn`` makes it
    (``fast_randn_tensor``): the same numbers to float32 rounding, the same generator state.
    """
    if variance_noise is not None:
        return io.kernel(variance_noise), None, 0, None
    source = check_noise_source(scheduler.pydiff_noise)
    if source == "diffusers":
        if generator is None and compiling():
            # randn_tensor's draw without a generator; torch.randn's generator= overload (even None) rejects the
            # symbolic sizes of a dynamic-shape trace
            return io.kernel(torch.randn(shape, device=device, dtype=dtype)), None, 0, None
        if draw is randn_tensor and io.dtype != torch.float64 and not compiling():
            # float64 steps keep torch's own draw: its last-ulp differences from torch_randn's (~1e-7
            # relative) would be the whole of a float64 run's difference from diffusers
            fast = fast_randn_tensor(shape, generator, device, dtype)
            if fast is not None:
                return io.kernel(fast), None, 0, None
        return io.kernel(draw(shape, generator=generator, device=device, dtype=dtype)), None, 0, None
    if isinstance(generator, (list, tuple)):
        if len(generator) != io.shape[0]:
            raise ValueError(f"generator: a list of {len(generator)} generators for a batch of {io.shape[0]}")
        kshape = io.kernel_shape[1:]
        parts = []
        for g in generator:
            seed, offset, rng = philox_key(g, io.device)
            parts.append(philox_normal(kshape, seed=seed, offset=offset, rng=rng, dtype=io.dtype, device=io.device,
                                       backend=scheduler.pydiff_backend))
        return torch.stack(parts), None, 0, None
    seed, offset, rng = philox_key(generator, io.device)
    return None, seed, offset, rng


class StepIO:
    """The tensors of one step as the kernel takes them, and the result as diffusers returns it.

    diffusers' arithmetic broadcasts (a batch-1 model output over the batch) and keeps the inputs' memory
    layout (channels_last stays channels_last). The kernel wants same-shape contiguous tensors, so: ``shape =
    broadcast_shapes`` and the output layout is the one torch gives ``sample - model_output``. The kernel then
    runs on the permutation of the tensors that makes that layout contiguous: elementwise arithmetic does not
    care about the order of the elements, and with the batch outermost the per-sample quantities (thresholds)
    do not either. Inputs in that layout are views (no copy); others are copied once. The common case -- both
    contiguous, same dtype and shape -- costs a few attribute reads.

    Different dtypes (a float16 model output with a float32 sample, as under autocast, or the reverse) are
    ``mixed``: diffusers then rounds some products to the lower precision before promoting (``0-d float32
    tensor * float16 tensor`` is float16 in torch), which one fused pass in the promoted dtype does not
    reproduce (measured: 1.9e-3 relative over a 6-step DDIM run against 1e-5 for every same-dtype case).
    Those steps run diffusers' own code, so the result is diffusers' to the bit, dtype
    ``torch.promote_types`` included.
    """

    __slots__ = ("shape", "dtype", "device", "perm", "inv", "strides", "x", "m", "kernel_shape", "x_logical",
                 "mixed")

    def __init__(self, model_output, sample):
        if not isinstance(model_output, torch.Tensor):
            raise TypeError(f"model_output must be a torch.Tensor, got {type(model_output).__name__}")
        if not isinstance(sample, torch.Tensor):
            raise TypeError(f"sample must be a torch.Tensor, got {type(sample).__name__}")
        if model_output.device != sample.device:
            raise ValueError(f"model_output is on {model_output.device} but sample is on {sample.device}")
        self.device = sample.device
        self.mixed = None
        if (model_output.dtype == sample.dtype and model_output.shape == sample.shape and sample.is_contiguous()
                and model_output.is_contiguous()):
            self.shape, self.dtype, self.perm, self.inv, self.strides = sample.shape, sample.dtype, None, None, None
            self.kernel_shape = sample.shape
            self.x = self.x_logical = sample
            self.m = model_output
            if not sample.is_floating_point():
                raise TypeError(f"sample must be a floating tensor, got {sample.dtype}")
            return
        for name, t in (("model_output", model_output), ("sample", sample)):
            if not t.is_floating_point():
                raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
        if model_output.dtype != sample.dtype:
            self.mixed = (f"model_output is {model_output.dtype} but sample is {sample.dtype} (diffusers rounds some "
                          "products to the lower precision there; one fused pass cannot reproduce that)")
            return
        self.dtype = sample.dtype
        try:
            self.shape = torch.broadcast_shapes(model_output.shape, sample.shape)
        except RuntimeError:
            raise ValueError(f"model_output has shape {tuple(model_output.shape)} but sample has shape "
                             f"{tuple(sample.shape)} (not broadcastable)") from None
        if len(self.shape) == 0:
            raise ValueError("sample must have a batch dimension, got a scalar")
        probe = (torch.empty_strided(sample.shape, sample.stride(), dtype=sample.dtype, device="meta")
                 - torch.empty_strided(model_output.shape, model_output.stride(), dtype=model_output.dtype,
                                       device="meta"))
        strides = probe.stride()
        perm = sorted(range(len(self.shape)), key=lambda d: -strides[d])
        if perm[0] != 0 and self.shape[0] > 1:  # batch not outermost: compute contiguous, copy at the end
            self.perm, self.strides = None, strides
        elif perm == list(range(len(perm))):
            self.perm, self.strides = None, None
        else:
            self.perm, self.strides = perm, None
        self.inv = None if self.perm is None else [perm.index(d) for d in range(len(perm))]
        self.kernel_shape = self.shape if self.perm is None else torch.Size(self.shape[d] for d in self.perm)
        self.x_logical = sample.to(self.dtype).expand(self.shape)
        self.x = self.kernel(self.x_logical)
        self.m = self.kernel(model_output)

    def kernel(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (logical: broadcastable to the step's shape) as the kernel takes it."""
        if t.dtype != self.dtype:
            t = t.to(self.dtype)
        if t.shape != self.shape:
            t = t.expand(self.shape)
        if self.perm is not None:
            t = t.permute(self.perm)
        return t if t.is_contiguous() else t.contiguous()

    def empty(self):
        """``(logical, kernel)``: a new tensor in the output layout and the kernel's (contiguous) view of it."""
        k = torch.empty(self.kernel_shape, dtype=self.dtype, device=self.device)
        return (k if self.perm is None else k.permute(self.inv)), k

    def matches(self, t) -> bool:
        """Whether ``t`` is a logical tensor whose kernel view is contiguous (reusable as an output)."""
        if not (isinstance(t, torch.Tensor) and t.shape == self.shape and t.dtype == self.dtype
                and t.device == self.device):
            return False
        return (t if self.perm is None else t.permute(self.perm)).is_contiguous()

    def result(self, logical: torch.Tensor) -> torch.Tensor:
        """A result as diffusers returns it (a copy into torch's layout only when the batch is not outermost)."""
        if self.strides is None:
            return logical
        out = torch.empty_strided(self.shape, self.strides, dtype=self.dtype, device=self.device)
        return out.copy_(logical)


def check_single_timestep(timestep) -> None:
    """The DPM-Solver schedulers step the whole batch at one timestep: a multi-element tensor is an error
    (diffusers fails on it too), not one step index applied to every sample."""
    if isinstance(timestep, torch.Tensor) and timestep.numel() != 1:
        raise ValueError(f"timestep must be one timestep (a number or a one-element tensor), got a tensor of shape "
                         f"{tuple(timestep.shape)}: this scheduler steps the whole batch at one timestep")


def x0_like_diffusers(scheduler, pred_x0, model_output, uncond=None):
    """``pred_original_sample`` in diffusers' shape: with ``prediction_type='sample'`` its x0 is the model output
    itself (clipped or thresholded), so a batch-1 output that broadcasts over the sample gives a batch-1 x0 there.
    The fused x0 holds the same value along the broadcast dims; this returns the view of it at index 0 of those."""
    if scheduler.config.prediction_type != "sample" or pred_x0.shape == model_output.shape:
        return pred_x0
    shape = model_output.shape if uncond is None else torch.broadcast_shapes(model_output.shape, uncond.shape)
    if len(shape) != pred_x0.ndim or shape == pred_x0.shape:
        return pred_x0
    return pred_x0[tuple(slice(0, 1) if n == 1 and m != 1 else slice(None) for n, m in zip(shape, pred_x0.shape))]


DIFFERENTIABLE_SCALE = ("guidance_scale is a tensor that requires grad (the fused row takes it as a constant; "
                        "diffusers' arithmetic differentiates it)")


def promoting_timestep(timestep, sample) -> str | None:
    """Why a DDIM/DDPM step must run diffusers' code to keep its dtype: a timestep tensor with a dimension (shape
    ``(1,)``) indexes ``alphas_cumprod`` into 1-D float32 factors, which promote a float16/bfloat16 sample's step to
    float32 (a 0-d timestep gives 0-d factors, which do not). None when the fused step keeps diffusers' dtype."""
    if (isinstance(timestep, torch.Tensor) and timestep.ndim >= 1 and isinstance(sample, torch.Tensor)
            and sample.dtype in (torch.float16, torch.bfloat16)):
        return (f"a timestep tensor of shape {tuple(timestep.shape)} with a {sample.dtype} sample (diffusers' "
                "step then computes and returns float32)")
    return None


def timestep_arg(timestep, num_rows: int, device: torch.device):
    """Classify a timestep: ``("int", t)``, ``("device", int64 tensor of shape (1,))`` or ``(None, reason)``.

    A Python/NumPy integer or a CPU tensor becomes an int with no sync. A one-element integer tensor on the
    data's (non-CPU) device stays there: the kernel reads its table row through ``fused_step(index=)``. While
    TorchDynamo traces (``compiling``), every one-element integer tensor takes that path (moved to the data's
    device if needed): reading it on the host would be a graph break.
    """
    if isinstance(timestep, torch.Tensor):
        if timestep.numel() != 1:
            return None, "a timestep tensor with more than one element"
        if timestep.is_floating_point() or timestep.is_complex():
            return None, "a floating-point timestep"
        if compiling():
            return "device", timestep.reshape(1).to(device=device, dtype=torch.int64)
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


class TracedTables:
    """A row table as a traced step reads it: guarded (``guarded_table``) torch copies in float32 and float64, made
    once by ``set_timesteps`` (NumPy and table building cannot run inside a traced step).

    ``view(device, dtype)`` is the table in the compute dtype of ``dtype`` without its leading NaN row (index
    ``-1`` is the trailing NaN row, as for ``TableCache.device_view``). The copies live on the device given to
    ``set_timesteps`` (the CPU by default); a step on another device copies the table inside the graph.
    """

    __slots__ = ("t32", "t64")

    def __init__(self, rows: np.ndarray, device=None):
        t64 = torch.from_numpy(guarded_table(rows.reshape(-1, rows.shape[-1])))
        dev = torch.device("cpu") if device is None else torch.device(device)
        self.t64 = t64.to(dev)
        self.t32 = t64.to(device=dev, dtype=torch.float32)

    def view(self, device, dtype) -> torch.Tensor:
        t = self.t64 if dtype == torch.float64 else self.t32
        return t.to(device)[1:]


class TableCache:
    """Per-key float64 row tables and their guarded device copies, the ``size`` most recently used keys kept.

    Bounded because a key can vary per call (DDIM's ``eta`` may follow a schedule): unbounded, a per-step eta
    over 1 000 steps kept 1 000 tables (+141 MiB).
    """

    def __init__(self, size: int = 4):
        self.size = size
        self._rows: OrderedDict = OrderedDict()
        self._dev: OrderedDict = OrderedDict()

    def clear(self):
        self._rows.clear()
        self._dev.clear()

    def get(self, key):
        """The rows of ``key`` (marked recently used), or None."""
        r = self._rows.get(key)
        if r is not None:
            self._rows.move_to_end(key)
        return r

    def rows(self, key, build):
        r = self.get(key)
        if r is None:
            r = build()
            self._rows[key] = r
            if len(self._rows) > self.size:
                old, _ = self._rows.popitem(last=False)
                for dkey in [k for k in self._dev if k[0] == old]:
                    del self._dev[dkey]
        return r

    def device_view(self, key, rows, device, dtype):
        cdtype = torch.float64 if dtype == torch.float64 else torch.float32
        dkey = (key, torch.device(device), cdtype)
        t = self._dev.get(dkey)
        if t is None:
            t = torch.from_numpy(guarded_table(rows)).to(device=device, dtype=cdtype)[1:]
            self._dev[dkey] = t
            if len(self._dev) > 2 * self.size:
                self._dev.popitem(last=False)
        return t


class _Compatibles:
    """``compatibles`` readable from the class (``DDIMScheduler.compatibles``) and from an instance."""

    def __get__(self, obj, cls):
        return cls._get_compatibles()


class DropinMixin:
    """What every drop-in adds to its diffusers parent (listed first among the bases).

    * ``pydiff_noise``: ``"diffusers"`` or ``"philox"`` (see ``step_noise``), checked when set.
    * ``compatibles``: diffusers' list of compatible schedulers, with pydiff's drop-in in place of each
      diffusers class that has one (so ``DDIMScheduler.compatibles`` offers pydiff's DPM-Solver, not diffusers').
    """

    compatibles = _Compatibles()

    @property
    def pydiff_noise(self) -> str:
        return self.__dict__.get("_pydiff_noise", "diffusers")

    @pydiff_noise.setter
    def pydiff_noise(self, value) -> None:
        self.__dict__["_pydiff_noise"] = check_noise_source(value)

    @classmethod
    def _get_compatibles(cls):
        import diffusers

        from .. import diffusers as ours

        names = [cls.__name__] + [n for n in cls._compatibles if n != cls.__name__]
        found = []
        for name in dict.fromkeys(names):
            c = getattr(ours, name, None) or getattr(diffusers, name, None)
            if c is not None:
                found.append(c)
        return found


def select_rows(kind, t, table):
    """(coef, index) for fused_step: a row view for an int timestep, the table plus a clamped index else."""
    if kind == "int":
        return table[t], None
    return table, t.clamp(-1, table.shape[0] - 1)
