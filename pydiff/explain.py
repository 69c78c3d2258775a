"""``pydiff.explain(scheduler)``: what of a scheduler's work runs fused, what runs diffusers' own code, and why.

A drop-in (``pydiff.diffusers``) runs each ``step`` as one fused kernel when its configuration and the call
allow it, and diffusers' own ``step`` otherwise. The first time a reason occurs on an instance it is a warning
(logger ``pydiff.diffusers``); this text is the whole picture at any time: the configuration's verdict, the
per-call cases that always run diffusers' code, the reasons this instance has met so far, the noise source and
the backend.
"""
from __future__ import annotations

# Calls that run diffusers' own step whatever the configuration (the drop-ins' per-call checks).
_PER_CALL = {
    "DDIMScheduler": ("timestep tensors with several elements", "float timesteps", "integer timesteps outside "
                      "[0, num_train_timesteps)", "a model output in another dtype than the sample"),
    "DDPMScheduler": ("timestep tensors with several elements", "float timesteps", "integer timesteps off the "
                      "schedule", "a model output in another dtype than the sample", "a learned variance_type with "
                      "a model output without the variance channels"),
    "DPMSolverMultistepScheduler": ("a variance_noise of another shape than the step", "a step past the last one",
                                    "steps whose coefficients are not finite (degenerate custom timesteps)",
                                    "a model output in another dtype than the sample"),
    "DPMSolverSinglestepScheduler": ("a step past the last one", "steps whose coefficients are not finite",
                                     "a model output in another dtype than the sample"),
    "ScoreSdeVeScheduler": ("a model output in another dtype than the sample", "a half-precision step_correct "
                            "(diffusers takes the norms in that precision)", "timesteps selecting a noise level "
                            "outside discrete_sigmas, or non-finite timesteps (step_pred)"),
    "ScoreSdeVpScheduler": ("a model output in another dtype than the sample", "a float64 t with a float32 or "
                            "half sample (diffusers' result is then float64)", "a half-precision t"),
}

_NOISE = {
    "diffusers": "drawn as diffusers draws it (randn_tensor with the step's generator): the same images",
    "philox": "generated in the kernel (Philox), keyed by a draw from the step's generator: reproducible, "
              "bit-identical on cpu and cuda (within a few float32 ulp on triton), other numbers than diffusers'",
}


def _backend_line(scheduler) -> str:
    forced = getattr(scheduler, "pydiff_backend", None)
    if forced:
        return f"backend: {forced!r} (scheduler.pydiff_backend)"
    try:
        import torch

        from .ops import resolve_backend

        cpu = resolve_backend(None, torch.empty(1))
    except Exception as exc:  # an explanation must not fail on a broken backend setup
        return f"backend: automatic (could not resolve: {exc})"
    return f"backend: automatic (CPU float32 tensors run on {cpu!r}; see pydiff.ops.backend_report())"


def explain(scheduler) -> str:
    """A readable account of how ``scheduler``'s steps run: fused, or diffusers' own code and why.

    Args:
        scheduler: a ``pydiff.diffusers`` drop-in (an instance); a diffusers scheduler gets a one-line answer
            naming the drop-in to use instead.

    Returns:
        Text, one fact per line: the configuration's verdict, the per-call cases that run diffusers' own step,
        the reasons met by this instance so far, the noise source and the backend.
    """
    cls = type(scheduler)
    name = cls.__name__
    unsupported = getattr(scheduler, "_pydiff_unsupported", None)
    if not callable(unsupported):
        mod = cls.__module__ or ""
        if mod.split(".")[0] == "diffusers" and hasattr(scheduler, "config"):
            try:
                from . import diffusers as ours

                hint = (f"; pydiff.diffusers.{name} is its fused drop-in"
                        if hasattr(ours, name) else "; pydiff has no drop-in for it")
            except ImportError:
                hint = ""
            return f"diffusers.{name} is diffusers' own scheduler: nothing runs fused{hint}."
        raise TypeError(f"scheduler must be a pydiff.diffusers scheduler instance, got {name}")

    lines = [f"pydiff.diffusers.{name} (drop-in for diffusers.{name})"]
    reason = unsupported()
    if reason is None:
        lines.append("configuration: fused -- each step is one fused kernel call")
        cases = _PER_CALL.get(name, ())
        if cases:
            lines.append("per call, these run diffusers' own step instead: " + "; ".join(cases))
    else:
        lines.append(f"configuration: falls back to diffusers' own step on every call, because of {reason} "
                     "(not fused)")
    seen = getattr(scheduler, "__dict__", {}).get("_pydiff_fallbacks") or {}
    if seen:
        lines.append("met by this instance so far (diffusers' own step ran):")
        lines.extend(f"  - {r}" for r in seen.values())
    else:
        lines.append("met by this instance so far: nothing (no step has run diffusers' own code)" if reason is None
                     else "met by this instance so far: no step has run yet")
    noise = getattr(scheduler, "pydiff_noise", "diffusers")
    lines.append(f"noise (pydiff_noise={noise!r}): {_NOISE.get(noise, 'unknown')}")
    lines.append(_backend_line(scheduler))
    return "\n".join(lines)
