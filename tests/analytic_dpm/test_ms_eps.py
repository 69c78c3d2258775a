"""estimate_ms_eps: the authors' estimation order, the closed form within Monte-Carlo error, storage."""
import numpy as np
import pytest
import torch

from pydiff.analytic_dpm import estimate_ms_eps, load_ms_eps, save_ms_eps
from pydiff.testing import analytic_dpm as oracle

from adpm_cases import MU, S, betas

N = 40
DATA_SHAPE = (2000,) + tuple(MU.shape)


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return MU + S * torch.randn(DATA_SHAPE, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("channels_last", [False, True])
def test_same_numbers_as_the_authors_loop(channels_last):
    """For every level, over the data in order through a DataLoader, one randn_like per batch (the authors'
    save_ms_eps), x_n formed, the model called with level n, the per-sample mean of squares summed over the data.
    A channels_last data tensor too: the collated batch's layout decides where randn_like puts each number."""
    b = betas("linear", N)
    model = oracle.gaussian_eps_model(b, MU, S, True, False)
    data = _data()[:70]
    if channels_last:
        data = data.contiguous(memory_format=torch.channels_last)
    ca = np.cumprod(1 - b)
    torch.manual_seed(5)
    want = np.zeros(N + 1)
    for n in range(1, N + 1):
        total = 0.0
        for x0 in torch.utils.data.DataLoader(data, batch_size=32):  # the authors' score_on_dataset
            eps = torch.randn_like(x0)
            x_n = ca[n] ** 0.5 * x0 + (1 - ca[n]) ** 0.5 * eps
            t = torch.tensor([n] * x_n.size(0)).type_as(x_n) * 1000.0 / float(N)
            total += model(x_n, t).pow(2).flatten(1).mean(1).sum().item()
        want[n] = total / len(data)
    torch.manual_seed(5)
    got = estimate_ms_eps(model, b, data, True, batch_size=32, progress=False)
    assert got.dtype == np.float64 and got.shape == (N + 1,) and got[0] == 0
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("noise_source,rescale,shift1", [("torch", False, False), ("torch", True, True),
                                                         ("philox", False, True)])
def test_recovers_the_closed_form(noise_source, rescale, shift1):
    """Every level within 4.5 standard errors of mean_i sigma^2/(alpha^2 s_i^2 + sigma^2) (measured worst: see
    docs/analytic_dpm.md); the standard errors themselves are right: the spread of the z-scores is ~1 (measured
    1.02 and 0.82; the levels share the data, so their errors are correlated and the spread of 40 of them varies)."""
    b = betas("cosine", N)
    model = oracle.gaussian_eps_model(b, MU, S, rescale, shift1)
    torch.manual_seed(11)
    est, se = estimate_ms_eps(model, b, _data(1), rescale, batch_size=1000, shift1=shift1, progress=False,
                              noise_source=noise_source, return_stderr=True)
    exact = oracle.gaussian_ms_eps(b, S)
    z = (est[1:] - exact[1:]) / se[1:]
    assert np.abs(z).max() < 4.5, np.abs(z).max()
    assert 0.6 < z.std() < 1.4, z.std()


def test_philox_estimate_is_reproducible_and_not_the_torch_one():
    b = betas("cosine", 20)
    model = oracle.gaussian_eps_model(b, MU, S)
    runs = []
    for seed, src in [(3, "philox"), (3, "philox"), (4, "philox"), (3, "torch")]:
        torch.manual_seed(seed)
        runs.append(estimate_ms_eps(model, b, _data()[:64], False, batch_size=16, progress=False, noise_source=src))
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2]) and not np.array_equal(runs[0], runs[3])


def test_dataset_input_and_progress_bar(capsys):
    b = betas("cosine", 10)
    model = oracle.gaussian_eps_model(b, MU, S)
    data = _data()[:40]
    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            return data[i]

    torch.manual_seed(0)
    from_tensor = estimate_ms_eps(model, b, data, False, batch_size=16, progress=False)
    torch.manual_seed(0)
    from_dataset = estimate_ms_eps(model, b, Plain(), False, batch_size=16, progress=True)
    np.testing.assert_array_equal(from_tensor, from_dataset)
    assert "ms_eps" in capsys.readouterr().err


def test_save_load_round_trip_and_schedule_record(tmp_path):
    b = betas("linear", N)
    ms = oracle.gaussian_ms_eps(b, S)
    path = tmp_path / "ms_eps.npz"
    save_ms_eps(path, ms, b)
    np.testing.assert_array_equal(load_ms_eps(path, b), ms)
    with pytest.raises(ValueError, match="another schedule"):
        load_ms_eps(path, betas("cosine", N))
    with pytest.raises(ValueError, match="another schedule"):
        load_ms_eps(path, betas("linear", N + 1))
    other = tmp_path / "other.npz"
    np.savez(other, ms_eps=ms)
    with pytest.raises(ValueError, match="not an ms_eps file"):
        load_ms_eps(other, b)
    with pytest.raises(ValueError, match="ms_eps must have length"):
        save_ms_eps(path, ms[:-1], b)
