"""Shared cases of the score_sde tests: the face's SDE and the oracle's for a kind, and the toy model."""
import torch

from pydiff.score_sde import sde_lib
from pydiff.testing import score_sde as oracle

KINDS = ("vp", "subvp", "ve")
PREDICTORS = ("euler_maruyama", "reverse_diffusion", "ancestral_sampling", "none")
CORRECTORS = ("langevin", "ald", "none")


def face_sde(kind, N, **kw):
    return {"vp": sde_lib.VPSDE, "subvp": sde_lib.subVPSDE, "ve": sde_lib.VESDE}[kind](N=N, **kw)


def supported(kind, predictor, probability_flow):
    """Ancestral sampling is VE/VP only and has no probability flow (as in the reference)."""
    return not (predictor == "ancestral_sampling" and (kind == "subvp" or probability_flow))


class ToyModel(torch.nn.Module):
    """A score_sde-style module around ``oracle.gaussian_model``; counts its calls and the modes it ran in."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.calls = 0
        self.train_calls = 0

    def forward(self, x, labels):
        self.calls += 1
        self.train_calls += int(self.training)
        return self.fn(x, labels)


def toy(kind, N, continuous, wiggle=0.05, **kw):
    """``(face sde, oracle sde, model)``."""
    osde = oracle.OracleSDE(kind, N=N, **kw)
    return face_sde(kind, N, **kw), osde, ToyModel(oracle.gaussian_model(osde, continuous, wiggle=wiggle))


def rel_l2(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
