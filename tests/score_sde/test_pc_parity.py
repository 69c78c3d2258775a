"""The fused PC sampler against the float64 transcription of score_sde's sampler (pydiff.testing.score_sde),
with the same seed: every SDE x continuous/discrete x predictor x corrector x n_steps x probability flow."""
import itertools

import pytest
import torch

from pydiff.ops import philox_normal
from pydiff.score_sde import sampling
from pydiff.testing import score_sde as oracle
from sde_cases import CORRECTORS, KINDS, PREDICTORS, rel_l2, supported, toy

N = 24  # VP's DDPM betas linspace(0.1/N, 20/N, N) stay below 1 for N >= 21
SHAPE = (3, 2, 3)
SNR = 0.16

GRID = [c for c in itertools.product(KINDS, (True, False), PREDICTORS, CORRECTORS, (1, 2), (False, True))
        if supported(c[0], c[2], c[5])]


def run_pair(kind, continuous, predictor, corrector, n_steps, pf, norm="batch", denoise=True, seed=0):
    sde, osde, model = toy(kind, N, continuous)
    torch.manual_seed(seed)
    ref, ref_nfe = oracle.pc_sample(osde, model, SHAPE, predictor, corrector, SNR, n_steps, pf, continuous,
                                    denoise, 1e-3, norm)
    torch.manual_seed(seed)
    sampler = sampling.get_pc_sampler(sde, SHAPE, sampling.get_predictor(predictor),
                                      sampling.get_corrector(corrector), lambda x: x, SNR, n_steps, pf, continuous,
                                      denoise, 1e-3, "cpu", corrector_norm=norm)
    model.calls = model.train_calls = 0
    out, nfe = sampler(model)
    return out, nfe, ref, ref_nfe, model


@pytest.mark.parametrize("kind,continuous,predictor,corrector,n_steps,pf", GRID,
                         ids=lambda v: str(v) if not isinstance(v, bool) else ("T" if v else "F"))
def test_face_matches_transcription(kind, continuous, predictor, corrector, n_steps, pf):
    out, nfe, ref, ref_nfe, model = run_pair(kind, continuous, predictor, corrector, n_steps, pf)
    assert out.dtype == torch.float32 and out.shape == SHAPE
    assert nfe == ref_nfe == N * (n_steps + 1)
    assert rel_l2(out, ref) < 1e-4
    # the model runs where the reference runs it: once per predictor step, n_steps times per corrector step
    expected_calls = N * ((predictor != "none") + (corrector != "none") * n_steps)
    assert model.calls == expected_calls
    assert model.train_calls == 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n_steps", [1, 2])
def test_per_sample_langevin_norms(kind, n_steps):
    """corrector_norm='sample' (the paper's Algorithms 4/5) against the transcription's per-sample step sizes,
    and it differs from the batch-mean form (the test could fail)."""
    out, _, ref, _, _ = run_pair(kind, True, "reverse_diffusion", "langevin", n_steps, False, norm="sample")
    assert rel_l2(out, ref) < 1e-4
    batch, _, _, _, _ = run_pair(kind, True, "reverse_diffusion", "langevin", n_steps, False, norm="batch")
    assert rel_l2(out, batch) > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_no_denoise_returns_the_noisy_sample(kind):
    out, _, ref, _, _ = run_pair(kind, False, "euler_maruyama", "langevin", 1, False, denoise=False)
    assert rel_l2(out, ref) < 1e-4
    mean, _, _, _, _ = run_pair(kind, False, "euler_maruyama", "langevin", 1, False, denoise=True)
    assert rel_l2(out, mean) > 1e-4


@pytest.mark.parametrize("kind,predictor,corrector,pf", [
    ("ve", "reverse_diffusion", "langevin", False), ("vp", "euler_maruyama", "langevin", False),
    ("subvp", "reverse_diffusion", "ald", False), ("vp", "ancestral_sampling", "langevin", False),
    ("ve", "none", "langevin", False), ("vp", "reverse_diffusion", "langevin", True)])
def test_philox_stream_matches_transcription(kind, predictor, corrector, pf):
    """noise_source='philox': the k-th reference draw after the prior is the Philox stream at offset k of a
    key drawn from torch's generator after the prior sample; the Langevin sumsq sees the same z the step adds."""
    sde, osde, model = toy(kind, N, True)
    key = {}

    def after_prior():
        key["rng"] = torch.randint(-(1 << 63), (1 << 63) - 1, (2,), dtype=torch.int64)

    def draw(shape):
        key["k"] = key.get("k", -1) + 1
        return philox_normal(shape, rng=key["rng"], offset=key["k"])

    torch.manual_seed(3)
    ref, _ = oracle.pc_sample(osde, model, SHAPE, predictor, corrector, SNR, 2, pf, True, True, 1e-3,
                              draw=draw, after_prior=after_prior)
    torch.manual_seed(3)
    out, _ = sampling.get_pc_sampler(sde, SHAPE, predictor, corrector, lambda x: x, SNR, 2, pf, True,
                                     device="cpu", noise_source="philox")(model)
    assert rel_l2(out, ref) < 1e-4
    torch.manual_seed(3)
    torch_out, _ = sampling.get_pc_sampler(sde, SHAPE, predictor, corrector, lambda x: x, SNR, 2, pf, True,
                                           device="cpu")(model)
    if not (pf and corrector == "none"):
        assert rel_l2(out, torch_out) > 1e-3  # a different stream: the comparison above could fail


def test_inverse_scaler_and_reproducibility():
    sde, _, model = toy("ve", N, True)
    sampler = sampling.get_pc_sampler(sde, SHAPE, "reverse_diffusion", "langevin", lambda x: 2 * x + 1, SNR,
                                      device="cpu")
    torch.manual_seed(5)
    a, _ = sampler(model)
    torch.manual_seed(5)
    b, _ = sampling.get_pc_sampler(sde, SHAPE, "reverse_diffusion", "langevin", lambda x: x, SNR, device="cpu")(model)
    assert torch.equal(a, 2 * b + 1)


@pytest.mark.parametrize("kind,predictor", [("vp", "euler_maruyama"), ("ve", "reverse_diffusion"),
                                            ("vp", "ancestral_sampling"), ("subvp", "euler_maruyama")])
@pytest.mark.parametrize("corrector", ["langevin", "ald"])
def test_class_update_fns_match_transcription(kind, predictor, corrector):
    """The predictor/corrector classes' own update_fn (reference constructors, any per-sample t) against the
    transcription's single steps, with t differing per sample."""
    sde, osde, model = toy(kind, N, True)
    from pydiff.score_sde import utils as mutils

    score_fn = mutils.get_score_fn(sde, model, continuous=True)
    t32 = torch.tensor([0.9, 0.5, 0.02])
    torch.manual_seed(1)
    x = torch.randn(SHAPE)
    torch.manual_seed(2)
    xc, _ = sampling.get_corrector(corrector)(sde, score_fn, SNR, 2).update_fn(x, t32)
    xp, xp_mean = sampling.get_predictor(predictor)(sde, score_fn, False).update_fn(xc, t32)
    torch.manual_seed(2)
    t = t32.double()
    rc, _ = oracle.corrector_step(osde, corrector, model, x.double(), t, t32, True, SNR, 2)
    rp, rp_mean = oracle.predictor_step(osde, predictor, model, xc.double(), t, t32, True, False)
    assert rel_l2(xc, rc) < 1e-5
    assert rel_l2(xp, rp) < 1e-5 and rel_l2(xp_mean, rp_mean) < 1e-5


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("predictor,corrector", [("euler_maruyama", "langevin"), ("reverse_diffusion", "ald"),
                                                 ("ancestral_sampling", "none"), ("none", "langevin")])
def test_a_float64_model_promotes_the_sample_as_the_reference(kind, predictor, corrector):
    """score_sde's ``x + c s`` promotes: a float64 model output turns the float32 sample float64 after the step that
    first reads it, and every later randn_like(x) draws float64 normals (another stream)."""
    if not supported(kind, predictor, False):
        pytest.skip("the reference has no such predictor for this SDE")
    sde, osde, model = toy(kind, N, True)

    def model64(x, labels):
        return model(x, labels).double()

    torch.manual_seed(1)
    ref, _ = oracle.pc_sample(osde, model64, SHAPE, predictor, corrector, SNR, 1, False, True, True, 1e-3,
                              track_dtype=True)
    torch.manual_seed(1)
    sampler = sampling.get_pc_sampler(sde, SHAPE, sampling.get_predictor(predictor),
                                      sampling.get_corrector(corrector), lambda x: x, SNR, 1, False, True,
                                      True, 1e-3, "cpu")
    out, _ = sampler(model64)
    assert out.dtype == torch.float64
    assert rel_l2(out, ref) < 1e-4
    torch.manual_seed(1)  # and the dtype matters: the untracked (all float32 draws) run is another sample
    plain, _ = oracle.pc_sample(osde, model, SHAPE, predictor, corrector, SNR, 1, False, True, True, 1e-3)
    assert rel_l2(plain, ref) > 1e-2
