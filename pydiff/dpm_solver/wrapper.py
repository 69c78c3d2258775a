"""``model_wrapper``: turn a diffusion network into the noise predictor ``eps(x, t_continuous)``.

The network may predict noise, ``x_0`` (``'x_start'``), velocity ``v = alpha eps - sigma x_0`` (``'v'``) or the
score ``-eps / sigma`` (``'score'``). Discrete-time networks receive ``t_input = 1000 (t - 1/N)``, continuous
ones ``t`` itself. Guidance:

* ``'classifier'``: ``eps - scale * sigma_t * grad_x log p(condition | x_t)`` (Dhariwal & Nichol 2021);
* ``'classifier-free'``: one batched call on ``[x, x]`` with ``[unconditional_condition, condition]``,
  ``eps_u + scale (eps_c - eps_u)`` (Ho & Salimans 2022); a single conditional call when ``scale == 1``
  or ``unconditional_condition`` is None.

The returned callable computes exactly that in plain torch. It also tells ``DPM_Solver`` which
parameterization the network has, so the solver can skip the conversion to ``eps`` and instead fold the
affine map from the network's output to ``x_0`` / ``eps`` into the fused step's coefficients (mathematically
the same; guidance combines raw outputs with weights summing to 1, so it commutes with that map).
With classifier-free guidance (two outputs) the solver goes one step further: it takes the pair of raw outputs
(``raw_pair``) and the fused step combines them itself (``m = out_u``, ``m2 = out_c``, ``M1 = 1 - scale``,
``M2 = scale``), so the combination costs no pass of its own. Classifier guidance adds a gradient term, so
there the solver uses the ``eps`` output as is.
"""
from __future__ import annotations

import torch

from ..plans.conversions import convert
from ._checks import check_callable, check_choice, check_number
from .schedule import expand_dims

MODEL_TYPES = ("noise", "x_start", "v", "score")
GUIDANCE_TYPES = ("uncond", "classifier", "classifier-free")


class WrappedModel:
    """The noise-prediction function built by ``model_wrapper``: ``model_fn(x, t_continuous) -> eps``."""

    def __init__(self, model, noise_schedule, model_type, model_kwargs, guidance_type, condition,
                 unconditional_condition, guidance_scale, classifier_fn, classifier_kwargs):
        self.model = model
        self.noise_schedule = noise_schedule
        self.model_type = model_type
        self.model_kwargs = model_kwargs
        self.guidance_type = guidance_type
        self.condition = condition
        self.unconditional_condition = unconditional_condition
        self.guidance_scale = guidance_scale
        self.classifier_fn = classifier_fn
        self.classifier_kwargs = classifier_kwargs

    # -- the pieces
    def get_model_input_time(self, t_continuous):
        """The time label the network was trained with: ``1000 (t - 1/N)`` for discrete schedules."""
        ns = self.noise_schedule
        if ns.schedule == "discrete":
            return (t_continuous - 1. / ns.total_N) * 1000.
        return t_continuous

    def _call_model(self, x, t_continuous, cond=None):
        t_input = self.get_model_input_time(t_continuous)
        if cond is None:
            return self.model(x, t_input, **self.model_kwargs)
        return self.model(x, t_input, cond, **self.model_kwargs)

    def to_noise(self, output, x, t_continuous):
        """Convert a raw network output of ``model_type`` to the noise prediction (``pydiff.plans.conversions``)."""
        if self.model_type == "noise":
            return output
        ns, d = self.noise_schedule, x.dim()
        alpha = expand_dims(ns.marginal_alpha(t_continuous), d)
        sigma = expand_dims(ns.marginal_std(t_continuous), d)
        return convert("eps", self.model_type, x, output, alpha, sigma)

    def cond_grad(self, x, t_input):
        """``grad_x log p_t(condition | x)`` through ``classifier_fn``."""
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_prob = self.classifier_fn(x_in, t_input, self.condition, **self.classifier_kwargs)
            return torch.autograd.grad(log_prob.sum(), x_in)[0]

    def _cfg_single_call(self):
        return self.guidance_scale == 1. or self.unconditional_condition is None

    # -- raw output (guidance applied, not converted): used by DPM_Solver to fold the conversion
    @property
    def foldable(self):
        return self.guidance_type != "classifier"

    @property
    def cfg_pair(self):
        """Whether the raw output is a classifier-free pair (two outputs combined with ``guidance_scale``)."""
        return self.guidance_type == "classifier-free" and not self._cfg_single_call()

    def raw_pair(self, x, t_continuous):
        """``(out_u, out_c)``: the raw unconditional and conditional outputs of one batched call on ``[x, x]``
        with ``[unconditional_condition, condition]`` (only when ``cfg_pair``)."""
        out = self._call_model(torch.cat([x, x]), torch.cat([t_continuous, t_continuous]),
                               cond=torch.cat([self.unconditional_condition, self.condition]))
        out_u, out_c = out.chunk(2)
        return out_u, out_c

    def raw_output(self, x, t_continuous):
        """The network output, guidance-combined but not converted to ``eps`` (not for classifier guidance)."""
        if self.guidance_type == "uncond":
            return self._call_model(x, t_continuous)
        if self.guidance_type == "classifier-free":
            if self._cfg_single_call():
                return self._call_model(x, t_continuous, cond=self.condition)
            out_u, out_c = self.raw_pair(x, t_continuous)
            return out_u + self.guidance_scale * (out_c - out_u)
        raise RuntimeError("classifier guidance has no raw output; call the wrapper itself")

    # -- the noise predictor
    def __call__(self, x, t_continuous):
        if self.guidance_type == "uncond":
            return self.to_noise(self._call_model(x, t_continuous), x, t_continuous)
        if self.guidance_type == "classifier":
            grad = self.cond_grad(x, self.get_model_input_time(t_continuous))
            sigma = expand_dims(self.noise_schedule.marginal_std(t_continuous), x.dim())
            eps = self.to_noise(self._call_model(x, t_continuous), x, t_continuous)
            return eps - self.guidance_scale * sigma * grad
        if self._cfg_single_call():
            return self.to_noise(self._call_model(x, t_continuous, cond=self.condition), x, t_continuous)
        x_in, t_in = torch.cat([x, x]), torch.cat([t_continuous, t_continuous])
        out = self._call_model(x_in, t_in, cond=torch.cat([self.unconditional_condition, self.condition]))
        eps_u, eps_c = self.to_noise(out, x_in, t_in).chunk(2)
        return eps_u + self.guidance_scale * (eps_c - eps_u)


def model_wrapper(model, noise_schedule, model_type="noise", model_kwargs={}, guidance_type="uncond",  # noqa: B006
                  condition=None, unconditional_condition=None, guidance_scale=1., classifier_fn=None,
                  classifier_kwargs={}):  # noqa: B006
    """Wrap ``model`` into ``model_fn(x, t_continuous) -> eps`` for ``DPM_Solver``.

    Args:
        model: ``model(x, t_input, **model_kwargs)`` (``model(x, t_input, cond, **model_kwargs)`` for
            classifier-free guidance) returning a prediction of ``model_type``.
        noise_schedule: a ``NoiseScheduleVP``.
        model_type: ``'noise'``, ``'x_start'``, ``'v'`` or ``'score'``.
        model_kwargs: extra keyword arguments of ``model`` (not copied; not modified).
        guidance_type: ``'uncond'``, ``'classifier'`` or ``'classifier-free'``.
        condition: the condition (classifier / classifier-free guidance).
        unconditional_condition: the "empty" condition (classifier-free guidance).
        guidance_scale: the guidance weight.
        classifier_fn: ``classifier_fn(x, t_input, condition, **classifier_kwargs) -> log p`` (classifier guidance).
        classifier_kwargs: extra keyword arguments of ``classifier_fn``.

    Returns:
        A callable ``model_fn(x, t_continuous)`` with ``t_continuous`` of shape ``(B,)`` returning ``eps``.
    """
    check_callable("model", model, allow_none=False)
    for attr in ("schedule", "total_N", "marginal_alpha", "marginal_std"):
        if not hasattr(noise_schedule, attr):
            raise TypeError(f"noise_schedule must be a NoiseScheduleVP, got {type(noise_schedule).__name__}")
    check_choice("model_type", model_type, MODEL_TYPES)
    check_choice("guidance_type", guidance_type, GUIDANCE_TYPES)
    if not isinstance(model_kwargs, dict):
        raise TypeError(f"model_kwargs must be a dict, got {type(model_kwargs).__name__}")
    if not isinstance(classifier_kwargs, dict):
        raise TypeError(f"classifier_kwargs must be a dict, got {type(classifier_kwargs).__name__}")
    guidance_scale = check_number("guidance_scale", guidance_scale)
    if guidance_type == "classifier":
        check_callable("classifier_fn", classifier_fn, allow_none=False)
    else:
        check_callable("classifier_fn", classifier_fn)
    if guidance_type == "classifier-free" and unconditional_condition is not None and condition is not None:
        if isinstance(condition, torch.Tensor) != isinstance(unconditional_condition, torch.Tensor):
            raise TypeError("condition and unconditional_condition must both be tensors")
    return WrappedModel(model, noise_schedule, model_type, model_kwargs, guidance_type, condition,
                        unconditional_condition, guidance_scale, classifier_fn, classifier_kwargs)
