"""``ms_eps``: the mean square of the noise prediction per noise level, the one statistic Analytic-DPM needs.

``ms_eps[n] = E_{x_0, eps} ||eps_theta(x_n, n)||^2 / d`` with ``x_n = sqrt(abar_n) x_0 + sqrt(bbar_n) eps`` over the
data (Bao et al., ICLR 2022: ``ms_eps = bbar_n Gamma_n``, ``Gamma_n`` the mean square of the score; the optimal
variance needs ``1 - ms_eps[n]``). ``estimate_ms_eps`` forms it as the authors' ``save_ms_eps`` does -- for every
level ``n = 1..N``, over the data in order, one ``randn_like`` per batch -- with the noising as one ``fused_step``
and the per-sample sums of squares as one ``sumsq`` (accumulated on the device, read back once).
``save_ms_eps``/``load_ms_eps`` store it with the schedule it belongs to.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch

from ..ops import coef_row, compute_dtype, fused_step, sumsq
from ..plans import analytic_dpm as plan
from .samplers import check_model, check_model_output, check_noise_source, model_times

FORMAT = "pydiff.analytic_dpm.ms_eps/1"


def _batches(data, batch_size):
    """``(M, make_iterator)``: the data in order, in batches, through a ``DataLoader`` as the authors read it (a
    DataLoader iterator draws one number from torch's generator when it starts, so the noise that follows is the
    authors' only if the data is read the same way). A contiguous tensor is read a batch at a time (one indexing
    per batch, the same values); any other is read item by item, as a Dataset over it is, because the collated
    batch's memory layout decides the order in which randn_like fills its noise."""
    from torch.utils.data import BatchSampler, DataLoader, SequentialSampler
    if isinstance(data, torch.Tensor):
        if not data.is_floating_point() or data.ndim < 1 or data.shape[0] == 0:
            raise ValueError(f"data must be a non-empty floating-point tensor (M, ...), got {data.dtype} "
                             f"{tuple(data.shape)}")
        if not data.is_contiguous():
            return len(data), lambda: iter(DataLoader(data, batch_size=batch_size))
        sampler = BatchSampler(SequentialSampler(range(len(data))), batch_size, drop_last=False)
        return len(data), lambda: iter(DataLoader(data, batch_size=None, sampler=sampler))
    if hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        if len(data) == 0:
            raise ValueError("data must not be empty")
        return len(data), lambda: iter(DataLoader(data, batch_size=batch_size))
    raise TypeError(f"data must be a torch.Tensor (M, ...) or a Dataset of tensors, got {type(data).__name__}")


def estimate_ms_eps(eps_model, betas, data, rescale_timesteps, batch_size=256, shift1=False, progress=True, *,
                    noise_source="torch", return_stderr=False, backend=None):
    """``ms_eps``: float64 array of length ``N + 1`` (index 0 left at 0) of ``E||eps_model(x_n, n)||^2/d``.

    Args:
        eps_model: ``eps_model(x, t)``, the noise prediction network (times as the samplers give them).
        betas: length ``N + 1``, ``betas[0] == 0``.
        data: the training data ``x_0``: a tensor ``(M, ...)`` or a Dataset of tensors (read in order).
        rescale_timesteps, shift1: the model's time convention, as in the samplers.
        batch_size: samples per model call.
        progress: a tqdm progress bar over the levels.
    Keyword-only:
        noise_source: ``'torch'`` (``randn_like`` per level and batch, the authors' order) or ``'philox'``
            (in-kernel noise, one key drawn from torch's generator per call).
        return_stderr: also return the standard error of each level's mean (float64, length ``N + 1``).
    """
    check_model(eps_model, "eps_model")
    check_noise_source(noise_source)
    betas = plan.check_betas(betas)
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    M, batches = _batches(data, int(batch_size))
    N = betas.shape[0] - 1
    _, abar, bbar = plan.schedule(betas)
    ns = np.arange(N + 1)
    noising = np.stack([coef_row(A=abar[n] ** 0.5, C=bbar[n] ** 0.5) for n in ns])  # x_n = sqrt(abar) x0 + sqrt(bbar) z
    total = rows = times = rng = None
    draws = 0
    from tqdm.auto import tqdm
    with torch.no_grad():
        for n in tqdm(range(1, N + 1), disable=not progress, desc="ms_eps"):
            for x0 in batches():
                if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
                    raise TypeError(f"data must yield floating-point tensors, got {type(x0).__name__}")
                if total is None:  # the device tables, once: no host-to-device copy in the loop
                    total = torch.zeros(2, N + 1, dtype=torch.float64, device=x0.device)
                    rows = torch.as_tensor(noising, dtype=compute_dtype(x0.dtype), device=x0.device)
                    times = model_times(list(ns - 1 if shift1 else ns), x0[:1], N, bool(rescale_timesteps))
                    if noise_source == "philox":
                        rng = torch.randint(-(1 << 63), (1 << 63) - 1, (2,), device=x0.device, dtype=torch.int64)
                if rng is None:
                    x_n = fused_step(x0, x0, rows[n], noise=torch.randn_like(x0), backend=backend)
                else:
                    x_n = fused_step(x0, x0, rows[n], rng=rng, offset=draws, backend=backend)
                draws += 1
                eps = check_model_output(eps_model(x_n, times[n].expand(x_n.shape[0]).contiguous()), x_n, "eps_model")
                mos = sumsq(eps, backend=backend).double() / (eps.numel() // eps.shape[0])  # (B,) mean squares
                total[0, n] += mos.sum()
                total[1, n] += mos.square().sum()
    s1, s2 = total.cpu().numpy()
    ms = s1 / M
    ms[0] = 0.0
    if not return_stderr:
        return ms
    var = np.maximum(s2 / M - ms ** 2, 0.0) * M / max(M - 1, 1)
    se = np.sqrt(var / M)
    se[0] = 0.0
    return ms, se


def save_ms_eps(path, ms_eps, betas) -> None:
    """Write ``ms_eps`` and the ``betas`` it was estimated for to ``path`` (a NumPy ``.npz`` archive, at exactly
    that path)."""
    betas = plan.check_betas(betas)
    ms = plan.check_ms_eps(ms_eps, betas.shape[0] - 1)
    with open(path, "wb") as f:
        np.savez(f, format=np.array(FORMAT), ms_eps=ms, betas=betas)


def load_ms_eps(path, betas) -> np.ndarray:
    """The ``ms_eps`` saved at ``path`` by ``save_ms_eps``; ValueError when it was estimated for another schedule
    than ``betas`` (compared exactly: a variance from another schedule is silently wrong)."""
    betas = plan.check_betas(betas)
    with np.load(path, allow_pickle=False) as z:
        if "format" not in z.files or str(z["format"]) != FORMAT:
            raise ValueError(f"{path} is not an ms_eps file written by save_ms_eps")
        ms, stored = z["ms_eps"], z["betas"]
    if stored.shape != betas.shape or not np.array_equal(stored, betas):
        raise ValueError(f"ms_eps at {path} was estimated for another schedule (N = {stored.shape[0] - 1}) than "
                         f"the betas given (N = {betas.shape[0] - 1}); estimate it for this schedule")
    return plan.check_ms_eps(ms, betas.shape[0] - 1)
