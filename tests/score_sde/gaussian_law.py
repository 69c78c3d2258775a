"""The exact law of a PC run on Gaussian data with the exact (affine) model: every predictor step and every
annealed-Langevin step is ``x' = a x + b + c z``, so mean and variance propagate exactly. The maps ``(a, b, c)``
are read off the float64 transcription (``pydiff.testing.score_sde``) by running its steps on ``x = 0, 1`` with
the noise set to 0 and 1, so the law is the transcription's, independently of the plans."""
import torch

from pydiff.testing import score_sde as oracle


def _affine(step):
    """``(a, b, c)`` of ``x' = a x + b + c z`` for ``step(x, draw) -> (x', x_mean)``, and of ``x_mean``."""
    x = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    y, ym = step(x, lambda shape: torch.zeros(shape))
    y1, _ = step(x, lambda shape: torch.ones(shape))
    b, a = y[0, 0].item(), (y[1, 0] - y[0, 0]).item()
    bm, am = ym[0, 0].item(), (ym[1, 0] - ym[0, 0]).item()
    return (a, b, (y1[0, 0] - y[0, 0]).item()), (am, bm)


def law(osde, model, predictor, corrector, n_steps, pf, continuous, eps=1e-3, snr=0.16, denoise=True):
    """``(mean, std)`` of the sampler's output for data N(mu, s^2) (``model`` exact: ``wiggle=0``)."""
    if corrector == "langevin":
        raise ValueError("the Langevin step size depends on the sample's norms: not affine")
    mean, var = 0.0, (osde.smax ** 2 if osde.kind == "ve" else 1.0)
    grid = torch.linspace(osde.T, eps, osde.N)
    out = (mean, var)
    for k in range(osde.N):
        t32 = torch.ones(2) * grid[k]
        t = t32.double()
        for _ in range(n_steps if corrector == "ald" else 0):
            (a, b, c), _ = _affine(lambda x, d: oracle.corrector_step(osde, "ald", model, x, t, t32, continuous,
                                                                     snr, 1, draw=d))
            mean, var = a * mean + b, a * a * var + c * c
        if predictor == "none":
            out = (mean, var)
            continue
        (a, b, c), (am, bm) = _affine(lambda x, d: oracle.predictor_step(osde, predictor, model, x, t, t32,
                                                                          continuous, pf, draw=d))
        out = (am * mean + bm, am * am * var)
        mean, var = a * mean + b, a * a * var + c * c
    m, v = out if denoise else (mean, var)
    return m, v ** 0.5
