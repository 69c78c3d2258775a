"""Score-based generative modelling through SDEs (Song et al., ICLR 2021, arXiv:2011.13456) with the API of
the authors' ``score_sde_pytorch``: change the imports and a score_sde model plugs in unchanged::

    from pydiff.score_sde import sde_lib, sampling, losses
    from pydiff.score_sde import utils as mutils        # score_sde's models/utils.py

    sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=50, N=1000)
    sampler = sampling.get_pc_sampler(sde, (16, 3, 32, 32), sampling.get_predictor("reverse_diffusion"),
                                      sampling.get_corrector("langevin"), inverse_scaler=lambda x: x,
                                      snr=0.16, continuous=True, device="cuda")
    x, nfe = sampler(score_model)

Each predictor step is one ``pydiff.ops.fused_step`` with a float64 row from ``pydiff.plans.score_sde``; the
Langevin corrector is a ``sumsq`` and one ``fused_step`` with its step size computed on the device. The
formulas of the SDEs are ``pydiff.schedules``' score-SDE schedules. See docs/score_sde.md.
"""
from . import sde_lib, utils
from .sde_lib import SDE, VESDE, VPSDE, subVPSDE
from .utils import get_model_fn, get_score_fn

__all__ = ["SDE", "VESDE", "VPSDE", "get_model_fn", "get_score_fn", "sde_lib", "subVPSDE", "utils"]
