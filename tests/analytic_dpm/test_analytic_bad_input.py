"""Bad input to pydiff.analytic_dpm raises a ValueError/TypeError naming the argument."""
import numpy as np
import pytest
import torch

import pydiff.analytic_dpm as face
from pydiff.testing import analytic_dpm as oracle

N = 50
BETAS = oracle.named_betas("cosine", N)
MU, S = 0.1, 0.5
MODEL = oracle.gaussian_eps_model(BETAS, MU, S)
MS = oracle.gaussian_ms_eps(BETAS, torch.tensor([S]))
X = torch.randn(2, 3, dtype=torch.float64)


def ddpm(**kw):
    args = dict(x_init=X, betas=BETAS, rescale_timesteps=False, eps_model=MODEL, ms_eps=MS, sample_steps=10)
    args.update(kw)
    return face.reverse_ddpm_ms_eps(**args)


def ddim(**kw):
    args = dict(x_init=X, betas=BETAS, rescale_timesteps=False, eps_model=MODEL, ms_eps=MS, sample_steps=10)
    args.update(kw)
    return face.reverse_ddim_ms_eps(**args)


bad_betas = BETAS.copy()
bad_betas[0] = 1e-4
nan_ms = MS.copy()
nan_ms[3] = np.nan
neg_ms = MS.copy()
neg_ms[3] = -0.1


@pytest.mark.parametrize("fn,kw,exc,match", [
    (ddpm, dict(steps_type="cubic"), ValueError, "steps_type must be one of"),
    (ddpm, dict(steps_type="power0"), ValueError, "steps_type must be one of"),
    (ddpm, dict(steps_type=2), TypeError, "steps_type must be a str"),
    (ddim, dict(steps_type="dp"), ValueError, "steps_type must be one of"),
    (ddpm, dict(ms_eps=MS[:-1]), ValueError, r"ms_eps must have length N \+ 1 = 51"),
    (ddpm, dict(ms_eps=MS[None]), ValueError, "ms_eps must have length"),
    (ddpm, dict(ms_eps=nan_ms), ValueError, "ms_eps must hold finite values >= 0"),
    (ddim, dict(ms_eps=neg_ms), ValueError, "ms_eps must hold finite values >= 0"),
    (ddpm, dict(ms_eps=None), TypeError, "ms_eps must be given"),
    (ddpm, dict(ms_eps="file.npz"), TypeError, "ms_eps must be a 1-D array"),
    (ddpm, dict(sample_steps=N + 1), ValueError, r"sample_steps must be in \[2, N = 50\]"),
    (ddpm, dict(sample_steps=1), ValueError, "sample_steps must be in"),
    (ddpm, dict(sample_steps=10.0), TypeError, "sample_steps must be an int"),
    (ddpm, dict(betas=bad_betas), ValueError, r"betas\[0\] must be 0"),
    (ddpm, dict(betas=BETAS[1:]), ValueError, r"ms_eps must have length|betas\[0\] must be 0"),
    (ddpm, dict(betas=np.append(BETAS[:-1], 1.0)), ValueError, r"betas\[1:\] must lie in \(0, 1\)"),
    (ddpm, dict(betas="linear"), TypeError, "betas must be a 1-D array"),
    (ddpm, dict(noise_source="numpy"), ValueError, "noise_source must be one of"),
    (ddim, dict(noise_source=None), ValueError, "noise_source must be one of"),
    (ddpm, dict(eps_model=lambda x, t: x[:, :2]), ValueError, r"eps_model returned shape \(2, 2\)"),
    (ddpm, dict(eps_model=lambda x, t: x.numpy()), TypeError, "eps_model must return a torch.Tensor"),
    (ddpm, dict(eps_model=None), TypeError, "eps_model must be callable"),
    (ddpm, dict(x_init=X.numpy()), TypeError, "x_init must be a torch.Tensor"),
    (ddpm, dict(x_init=X.long()), TypeError, "x_init must be a floating-point"),
    (ddpm, dict(clip_sigma_idx=10), ValueError, r"clip_sigma_idx must .* \[-10, 10\)"),
    (ddpm, dict(clip_sigma_idx=1.0), TypeError, "clip_sigma_idx must be an int"),
    (ddpm, dict(clip_pixel=float("nan")), ValueError, "clip_pixel must be a finite number"),
    (ddim, dict(eta=-1.0), ValueError, "eta must be a finite number >= 0"),
    (ddim, dict(eta=3.0), ValueError, r"ddim_ms_eps \(eta = 3.0\) gives non-finite coefficients"),
    (ddim, dict(eta="1"), TypeError, "eta must be a real number"),
])
def test_rejects(fn, kw, exc, match):
    with pytest.raises(exc, match=match):
        fn(**kw)


def test_naive_samplers_reject():
    with pytest.raises(ValueError, match="exactly one of eps_model and d_model"):
        face.reverse_ddpm_naive(X, BETAS, True, True, False, eps_model=MODEL, d_model=MODEL)
    with pytest.raises(ValueError, match="exactly one of eps_model and d_model"):
        face.reverse_ddpm_naive(X, BETAS, True, True, False)
    with pytest.raises(ValueError, match="returned shape"):
        face.reverse_ddpm_naive(X, BETAS, True, True, False, d_model=lambda x, t: x[:1], sample_steps=5)
    with pytest.raises(ValueError, match="steps_type 'dp_seg' needs ms_eps"):
        face.reverse_ddpm_naive(X, BETAS, True, True, False, "dp_seg", eps_model=MODEL, sample_steps=5)
    with pytest.raises(ValueError, match="steps_type 'dp_seg' needs ms_eps"):
        face.reverse_ddim_naive(X, BETAS, False, 0.0, "dp_seg", MODEL, 5)
    with pytest.raises(ValueError, match="noise_source"):
        face.reverse_ddim_naive(X, BETAS, False, 0.0, "linear", MODEL, 5, noise_source="cuda")
    with pytest.raises(ValueError, match="sample_steps must be in"):
        face.reverse_ddim_naive(X, BETAS, False, 0.0, "linear", MODEL, N + 1)


def test_estimate_ms_eps_rejects(tmp_path):
    data = torch.randn(8, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="data must be a torch.Tensor"):
        face.estimate_ms_eps(MODEL, BETAS, 3.0, False, progress=False)
    with pytest.raises(ValueError, match="data must be a non-empty floating-point"):
        face.estimate_ms_eps(MODEL, BETAS, data.long(), False, progress=False)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        face.estimate_ms_eps(MODEL, BETAS, data, False, batch_size=0, progress=False)
    with pytest.raises(ValueError, match=r"betas\[0\] must be 0"):
        face.estimate_ms_eps(MODEL, bad_betas, data, False, progress=False)
    with pytest.raises(ValueError, match="noise_source"):
        face.estimate_ms_eps(MODEL, BETAS, data, False, progress=False, noise_source="np")
    with pytest.raises(ValueError, match="eps_model returned shape"):
        face.estimate_ms_eps(lambda x, t: x[:, :1], BETAS, data, False, progress=False)
    with pytest.raises(TypeError, match="eps_model must be callable"):
        face.estimate_ms_eps(None, BETAS, data, False, progress=False)
    with pytest.raises(ValueError, match="ms_eps must hold finite values"):
        face.save_ms_eps(tmp_path / "m.npz", neg_ms, BETAS)


@pytest.mark.parametrize("fn", [ddpm, ddim])
def test_one_step_ignores_clip_sigma_idx_as_the_authors_code(fn):
    """One 'quad_ddim' step has only s = 0, where no sigma is capped: the authors' code never reads
    clip_sigma_idx then, so any value runs (and gives the transcription's sample)."""
    ref = oracle.reverse_ddpm_ms_eps if fn is ddpm else oracle.reverse_ddim_ms_eps
    for idx in (0, 1, 5):
        got = fn(steps_type="quad_ddim", sample_steps=1, clip_sigma_idx=idx)
        want = ref(X, BETAS, False, steps_type="quad_ddim", eps_model=MODEL, ms_eps=MS, sample_steps=1,
                   clip_sigma_idx=idx)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
