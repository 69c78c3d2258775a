"""Bad input to the score_sde face raises ValueError/TypeError naming the argument; where the reference
fails on valid input, ours runs."""
import pytest
import torch

from pydiff.score_sde import VESDE, VPSDE, get_score_fn, sampling, subVPSDE
from sde_cases import toy

SHAPE = (2, 3)


def make(**kw):
    args = dict(sde=VESDE(N=5), shape=SHAPE, predictor=sampling.get_predictor("reverse_diffusion"),
                corrector=sampling.get_corrector("langevin"), inverse_scaler=lambda x: x, snr=0.16, device="cpu")
    args.update(kw)
    return sampling.get_pc_sampler(**args)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(snr=0.0), ValueError, "snr"),
    (dict(snr=-1.0), ValueError, "snr"),
    (dict(snr="0.1"), TypeError, "snr"),
    (dict(n_steps=-1), ValueError, "n_steps"),
    (dict(n_steps=1.5), TypeError, "n_steps"),
    (dict(eps=0.0), ValueError, "eps"),
    (dict(eps=1.0), ValueError, "eps"),
    (dict(eps=-1e-3), ValueError, "eps"),
    (dict(noise_source="numpy"), ValueError, "noise_source"),
    (dict(corrector_norm="max"), ValueError, "corrector_norm"),
    (dict(predictor="heun"), ValueError, "predictor"),
    (dict(corrector="hmc"), ValueError, "corrector"),
    (dict(predictor=42), TypeError, "predictor"),
    (dict(shape=()), ValueError, "shape"),
    (dict(shape=(2, 0)), ValueError, "shape"),
    (dict(inverse_scaler=None), TypeError, "inverse_scaler"),
    (dict(sde="vp"), TypeError, "sde"),
    (dict(predictor="ancestral_sampling", probability_flow=True), ValueError, "probability_flow"),
    (dict(sde=subVPSDE(N=5), predictor="ancestral_sampling"), NotImplementedError, "subVPSDE"),
    # VP/sub-VP with N < beta_max: alpha_i = 1 - beta_max/N < 0, the Langevin step negative (the reference: NaN)
    (dict(sde=VPSDE(N=10), predictor="euler_maruyama"), ValueError, "Langevin corrector's step factor"),
    (dict(sde=subVPSDE(N=19), predictor="none"), ValueError, "Langevin corrector's step factor"),
])
def test_sampler_arguments(kw, exc, match):
    with pytest.raises(exc, match=match):
        make(**kw)


def test_registry_names():
    for name in ("euler_maruyama", "reverse_diffusion", "ancestral_sampling", "none"):
        assert sampling.get_predictor(name).__name__.endswith("Predictor")
    assert sampling.get_corrector("ald") is sampling.AnnealedLangevinDynamics
    with pytest.raises(ValueError, match="predictor"):
        sampling.get_predictor("Euler_Maruyama")
    with pytest.raises(ValueError, match="corrector"):
        sampling.get_corrector("langevin_dynamics")
    with pytest.raises(ValueError, match="Already registered"):
        sampling.register_predictor(sampling.EulerMaruyamaPredictor, name="euler_maruyama")


@pytest.mark.parametrize("out", [lambda x: x[:, :1], lambda x: x.reshape(-1), lambda x: "eps"])
def test_model_output_of_the_wrong_shape(out):
    sampler = make()
    with pytest.raises((ValueError, TypeError), match="model"):
        sampler(lambda x, labels: out(x))
    with pytest.raises((ValueError, TypeError), match="model"):
        get_score_fn(VPSDE(N=5), lambda x, labels: out(x), continuous=True)(torch.ones(SHAPE), torch.ones(2))


def test_where_the_reference_fails_ours_runs():
    """Euler-Maruyama on the probability flow, Langevin/ALD on sub-VP, n_steps=0 with Langevin."""
    for kind, pred, corr, pf, n_steps in [("vp", "euler_maruyama", "none", True, 1),
                                          ("subvp", "reverse_diffusion", "langevin", False, 1),
                                          ("subvp", "euler_maruyama", "ald", False, 2),
                                          ("ve", "reverse_diffusion", "langevin", False, 0)]:
        sde, _, model = toy(kind, 24, True)
        x, nfe = sampling.get_pc_sampler(sde, SHAPE, pred, corr, lambda v: v, 0.16, n_steps, pf, True,
                                         device="cpu")(model)
        assert torch.isfinite(x).all() and nfe == 24 * (n_steps + 1)


def test_user_registered_predictor_runs_its_update_fn():
    calls = []

    @sampling.register_predictor(name="test_halving")
    class Halving(sampling.Predictor):
        def update_fn(self, x, t):
            calls.append(t.shape)
            return x / 2, x / 2

    try:
        sde, _, model = toy("ve", 4, True)
        torch.manual_seed(0)
        x, _ = sampling.get_pc_sampler(sde, SHAPE, sampling.get_predictor("test_halving"), None, lambda v: v, 0.1,
                                       device="cpu")(model)
        torch.manual_seed(0)
        assert torch.allclose(x, sde.prior_sampling(SHAPE) / 16) and calls == [(2,)] * 4
    finally:
        del sampling._PREDICTORS["test_halving"]
