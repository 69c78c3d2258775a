"""Step choices: the plan's against the transcription's, the DP trajectory against brute force."""
import itertools
import math

import numpy as np
import pytest

from pydiff.plans import analytic_dpm as plan
from pydiff.testing import analytic_dpm as oracle

from adpm_cases import S, betas


def _ms_eps_cases(N):
    b = betas("linear", N)
    exact = oracle.gaussian_ms_eps(b, S)
    tail = exact.copy()
    tail[int(0.9 * N):] *= 1.002  # an estimate whose last levels exceed the bound 1
    rng = np.random.default_rng(N)
    noisy = np.clip(exact * (1 + 0.02 * rng.standard_normal(N + 1)), 0, None)
    noisy[0] = 0
    return b, {"exact": exact, "tail>1": tail, "noisy": noisy}


@pytest.mark.parametrize("N", [20, 100, 237, 1000])
def test_steps_match_the_transcription(N):
    b, cases = _ms_eps_cases(N)
    for K in sorted({2, 3, 10, 25, 50, N // 2, N}):
        if K > N:
            continue
        for typ in ("linear", "power2", "power3", "quad_ddim"):
            assert plan.choose_steps(N, K, typ) == oracle.choice_steps(N, K, typ), (typ, K)
        for name, ms in cases.items():
            if N == 1000 and (K > 25 or name != "exact"):
                continue  # the transcription's O(K N^2) DP takes ~1 s per case at N = 1000, K = 50
            try:
                want = oracle.choice_steps(N, K, "dp_seg", ms_eps=ms, betas=b)
            except (AssertionError, IndexError):  # the code fails (e.g. one DP point for K = 2 with a bad tail)
                with pytest.raises(ValueError, match="dp_seg"):
                    plan.choose_steps(N, K, "dp_seg", ms_eps=ms, betas=b)
                continue
            got = plan.choose_steps(N, K, "dp_seg", ms_eps=ms, betas=b)
            assert got == want, (name, K)
            assert got[0] == 1 and got[-1] == N and len(got) == K and all(x < y for x, y in zip(got, got[1:]))


def _path_cost(F, path):
    return sum(F[s, r] for s, r in zip(path, path[1:]))


@pytest.mark.parametrize("seed", range(6))
def test_dp_trajectory_is_optimal(seed):
    """Exhaustive search over every 1 = tau_1 < ... < tau_K = N on small random costs."""
    rng = np.random.default_rng(seed)
    N, K = 9, 2 + seed % 4
    F = np.full((N + 1, N + 1), np.inf)
    iu = np.triu_indices(N + 1, 1)
    F[iu] = rng.standard_normal(iu[0].size)
    F[0, :] = np.inf
    best = min(_path_cost(F, (1,) + mid + (N,)) for mid in itertools.combinations(range(2, N), K - 2))
    got = plan.dp_trajectory(F, N, K)
    assert len(got) == K and got[0] == 1 and got[-1] == N and all(x < y for x, y in zip(got, got[1:]))
    assert math.isclose(_path_cost(F, got), best, rel_tol=0, abs_tol=1e-12)


def test_dp_seg_beats_linear_on_its_objective():
    """The DP trajectory's cost (the paper's sum of log(1 - b_{r|s} Gamma_r)) is never above the linear one's."""
    N = 200
    b = betas("cosine", N)
    ms = oracle.gaussian_ms_eps(b, S)
    F = plan.trajectory_cost(ms, b, N)
    for K in (5, 10, 25):
        dp, lin = plan.choose_steps(N, K, "dp_seg", ms, b), plan.choose_steps(N, K, "linear")
        assert _path_cost(F, dp) <= _path_cost(F, lin) + 1e-12


def test_split_of_the_unreliable_tail():
    N = 100
    b, cases = _ms_eps_cases(N)
    K1, N1, K2, num_bad = plan.split_bad_tail(cases["tail>1"], N, 10)
    first = int(np.flatnonzero(cases["tail>1"][1:] > 1)[0]) + 1
    assert num_bad == 2 * (N - first + 1) and N1 == N - num_bad and K1 + K2 == 10 and K2 >= 1
    assert plan.split_bad_tail(cases["exact"], N, 10) == (10, N, 0, 0)


def test_dp_seg_rounds_a_float32_ms_eps_as_the_authors_code():
    """The authors store ms_eps as float32 and their DP holds ms_eps / bbar in that dtype; near the end of the
    schedule the rounding moves the optimum. The trajectory below is what their ``_choice_steps`` returns for this
    float32 array (baofff/Analytic-DPM, cifar_imagenet_codes/core/inference/utils.py, run with NumPy 2.4); the
    float64 array gives the second list, in their code and here."""
    N, K = 1000, 10
    b = np.append(0.0, np.linspace(1e-4, 0.02, N))
    ms32 = (1 - 0.99 * np.cumprod(1 - b)).astype(np.float32)
    ms32[0] = 0
    authors_f32 = [1, 2, 5, 10, 19, 34, 60, 104, 187, 1000]
    authors_f64 = [1, 2, 5, 10, 19, 35, 62, 109, 199, 1000]
    rounding = plan.ms_eps_rounding(ms32)
    assert rounding == np.float32
    assert plan.choose_steps(N, K, "dp_seg", plan.check_ms_eps(ms32, N), b, score_dtype=rounding) == authors_f32
    assert oracle.choice_steps(N, K, "dp_seg", ms_eps=ms32, betas=b) == authors_f32
    ms64 = ms32.astype(np.float64)
    assert plan.ms_eps_rounding(ms64) == np.float64
    assert plan.choose_steps(N, K, "dp_seg", ms64, b) == authors_f64
    assert plan.ms_eps_rounding(list(ms64)) == np.float64
    import torch
    assert plan.ms_eps_rounding(torch.from_numpy(ms32)) == np.float32
