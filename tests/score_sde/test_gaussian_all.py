"""Every predictor-corrector combination of ``pydiff.score_sde.sampling.get_pc_sampler`` on Gaussian data
N(MU, S^2) with the exact score (VE: -(x - MU)/(S^2 + sigma_t^2); VP/sub-VP: the noise prediction of their
marginals, ``pydiff.testing.score_sde.gaussian_model``), both noise sources, N = 50 steps, 20 480 draws each.

The grid: VE, VP, sub-VP x continuous/discrete x the four predictors x the three correctors x n_steps 1-2 x
probability flow on/off, plus ``corrector_norm='sample'`` for every Langevin run with n_steps = 1 and no flow
(``'batch'`` for all of them). Left out:
* ancestral sampling on sub-VP or with the probability flow (the sampler raises, as the reference);
* predictor none with corrector none (it returns the prior sample);
* predictor none with the probability flow (the flag only changes predictors: the same run as without it);
* corrector none with n_steps = 2 (n_steps only changes correctors: the same run as n_steps = 1).
Included although the reference crashes on them: Euler-Maruyama with the probability flow, the Langevin
correctors (langevin, ald) on sub-VP.

Affine runs (corrector none or ald) have an exact finite-N law (``gaussian_law.law``, read off the float64
transcription): the sample mean and std must lie within 4 standard errors of it, and the law's distance from the
data (the discretisation bias at N = 50) must stay within the bound in ``BIAS``. Langevin runs (step sizes from
the sample's norms) are compared with the data: within 4 standard errors plus the bias bound in ``BIAS``,
measured once over 1 024 000 draws (the measured value plus 3 of its standard errors, rounded up), and, with
batch norms, with the mean-field law (``law(..., mean_field=True)``: the step size from the moments) within 4
standard errors plus 0.002 std / S, which makes those checks two-sided.

The largest biases at N = 50 (all stated in ``BIAS``): corrector-only runs (predictor none) do not reach the data in
50 annealed steps at snr = 0.16 -- VE ald std 17.3 and 6.6 (n_steps 1, 2) instead of 0.8, VP/sub-VP -0.08 .. -0.23
in mean and -0.003 .. +0.15 in std; VE langevin std 46.4 and 42.7, barely below the prior's 50 (its step contracts
by ``2 snr^2 sigma_t^2 / var(x)``, which vanishes once sigma_t falls below the sample's std; the mean-field law
gives the same 46.4); reverse diffusion with the probability flow: std +0.40 / +0.42 (VP continuous / discrete),
+0.31 / +0.30 (VE) -- its per-step factor ``2 - sqrt(1 - beta_i)`` exceeds the flow's ``1 + beta_i / 2`` by
``beta_i^2 / 8`` with beta_i up to 0.4 at N = 50, and the flow does not contract the error; Euler-Maruyama with the
flow on VE: std -0.24 / -0.25. Sub-VP's reverse diffusion is its Euler-Maruyama step and its model always takes
continuous labels, so those four rows share one law.
"""
import functools
import itertools

import pytest
import torch

from gaussian_law import law
from pydiff.score_sde import sampling
from sde_cases import CORRECTORS, KINDS, PREDICTORS, supported, toy

MU, S = 0.3, 0.8  # gaussian_model's defaults
N, SHAPE, SNR = 50, (80, 256), 0.16  # 20 480 draws; 256 elements per sample keep the Langevin norms meaningful


def _combos():
    out = []
    for kind, cont, pred, corr, ns, pf in itertools.product(KINDS, (True, False), PREDICTORS, CORRECTORS, (1, 2),
                                                             (False, True)):
        if not supported(kind, pred, pf) or (pred == "none" and (corr == "none" or pf)) or \
                (corr == "none" and ns == 2):
            continue
        for norm in ("batch", "sample") if corr == "langevin" and ns == 1 and not pf else ("batch",):
            out.append((kind, cont, pred, corr, ns, pf, norm))
    return out


def _name(kind, cont, pred, corr, ns, pf, norm):
    s = f"{kind}-{'cont' if cont else 'disc'}-{pred}-{corr}"
    s += f"x{ns}" if corr != "none" else ""
    s += f"-{norm}" if corr == "langevin" else ""
    return s + ("-flow" if pf else "")


COMBOS = _combos()

# name: (|mean - MU| bound, |std - S| bound) at N = 50, snr 0.16, shape (80, 256).
# Affine runs: the exact law's bias, law - data, in the comment; bound = 1.1 |bias| + 1e-4, rounded up.
# Langevin runs: the measured bias (mean / std) in the comment; bound = |bias| + 3 of its standard errors.
BIAS = {
    "vp-cont-euler_maruyama-aldx1": (0.003, 0.0084),  # +0.0026 / +0.0075
    "vp-cont-euler_maruyama-aldx1-flow": (0.00069, 0.0057),  # -0.00054 / +0.005
    "vp-cont-euler_maruyama-aldx2": (0.0034, 0.0059),  # +0.0029 / +0.0052
    "vp-cont-euler_maruyama-aldx2-flow": (0.0017, 0.0036),  # +0.0014 / +0.0031
    "vp-cont-euler_maruyama-none": (0.0024, 0.013),  # +0.0021 / +0.012
    "vp-cont-euler_maruyama-none-flow": (0.006, 0.0029),  # -0.0054 / +0.0025
    "vp-cont-reverse_diffusion-aldx1": (0.0052, 0.016),  # +0.0046 / +0.014
    "vp-cont-reverse_diffusion-aldx1-flow": (0.0057, 0.079),  # +0.005 / +0.071
    "vp-cont-reverse_diffusion-aldx2": (0.005, 0.012),  # +0.0044 / +0.0099
    "vp-cont-reverse_diffusion-aldx2-flow": (0.0057, 0.025),  # +0.0051 / +0.022
    "vp-cont-reverse_diffusion-none": (0.0054, 0.025),  # +0.0048 / +0.022
    "vp-cont-reverse_diffusion-none-flow": (0.0042, 0.44),  # +0.0037 / +0.4
    "vp-cont-ancestral_sampling-aldx1": (0.011, 0.0019),  # +0.0099 / -0.0016
    "vp-cont-ancestral_sampling-aldx2": (0.0096, 0.0019),  # +0.0086 / -0.0016
    "vp-cont-ancestral_sampling-none": (0.014, 0.0023),  # +0.012 / -0.0019
    "vp-cont-none-aldx1": (0.24, 0.17),  # -0.21 / +0.15
    "vp-cont-none-aldx2": (0.18, 0.14),  # -0.16 / +0.12
    "vp-disc-euler_maruyama-aldx1": (0.008, 0.017),  # -0.0071 / +0.015
    "vp-disc-euler_maruyama-aldx1-flow": (0.02, 0.02),  # -0.018 / +0.017
    "vp-disc-euler_maruyama-aldx2": (0.0063, 0.014),  # -0.0056 / +0.012
    "vp-disc-euler_maruyama-aldx2-flow": (0.014, 0.015),  # -0.012 / +0.014
    "vp-disc-euler_maruyama-none": (0.011, 0.023),  # -0.0094 / +0.02
    "vp-disc-euler_maruyama-none-flow": (0.033, 0.021),  # -0.03 / +0.019
    "vp-disc-reverse_diffusion-aldx1": (0.0061, 0.025),  # -0.0054 / +0.022
    "vp-disc-reverse_diffusion-aldx1-flow": (0.016, 0.095),  # -0.014 / +0.086
    "vp-disc-reverse_diffusion-aldx2": (0.0048, 0.02),  # -0.0043 / +0.017
    "vp-disc-reverse_diffusion-aldx2-flow": (0.011, 0.037),  # -0.0091 / +0.033
    "vp-disc-reverse_diffusion-none": (0.0079, 0.035),  # -0.0071 / +0.031
    "vp-disc-reverse_diffusion-none-flow": (0.026, 0.47),  # -0.023 / +0.42
    "vp-disc-ancestral_sampling-aldx1": (0.0001, 0.0069),  # +0 / +0.0062
    "vp-disc-ancestral_sampling-aldx2": (0.0001, 0.0063),  # +0 / +0.0056
    "vp-disc-ancestral_sampling-none": (0.00011, 0.0074),  # -1e-06 / +0.0066
    "vp-disc-none-aldx1": (0.24, 0.17),  # -0.22 / +0.15
    "vp-disc-none-aldx2": (0.19, 0.14),  # -0.17 / +0.12
    "subvp-cont-euler_maruyama-aldx1": (0.0031, 0.011),  # +0.0027 / +0.0095
    "subvp-cont-euler_maruyama-aldx1-flow": (0.0014, 0.0018),  # -0.0011 / +0.0015
    "subvp-cont-euler_maruyama-aldx2": (0.0035, 0.0079),  # +0.003 / +0.007
    "subvp-cont-euler_maruyama-aldx2-flow": (0.0011, 0.00068),  # +0.00086 / -0.00052
    "subvp-cont-euler_maruyama-none": (0.0025, 0.016),  # +0.0022 / +0.014
    "subvp-cont-euler_maruyama-none-flow": (0.0062, 0.0014),  # -0.0055 / +0.0012
    "subvp-cont-reverse_diffusion-aldx1": (0.0031, 0.011),  # +0.0027 / +0.0095
    "subvp-cont-reverse_diffusion-aldx1-flow": (0.0014, 0.0018),  # -0.0011 / +0.0015
    "subvp-cont-reverse_diffusion-aldx2": (0.0035, 0.0079),  # +0.003 / +0.007
    "subvp-cont-reverse_diffusion-aldx2-flow": (0.0011, 0.00068),  # +0.00086 / -0.00052
    "subvp-cont-reverse_diffusion-none": (0.0025, 0.016),  # +0.0022 / +0.014
    "subvp-cont-reverse_diffusion-none-flow": (0.0062, 0.0014),  # -0.0055 / +0.0012
    "subvp-cont-none-aldx1": (0.26, 0.12),  # -0.23 / +0.1
    "subvp-cont-none-aldx2": (0.21, 0.055),  # -0.19 / +0.05
    "subvp-disc-euler_maruyama-aldx1": (0.0031, 0.011),  # +0.0027 / +0.0095
    "subvp-disc-euler_maruyama-aldx1-flow": (0.0014, 0.0018),  # -0.0011 / +0.0015
    "subvp-disc-euler_maruyama-aldx2": (0.0035, 0.0079),  # +0.003 / +0.007
    "subvp-disc-euler_maruyama-aldx2-flow": (0.0011, 0.00068),  # +0.00086 / -0.00052
    "subvp-disc-euler_maruyama-none": (0.0025, 0.016),  # +0.0022 / +0.014
    "subvp-disc-euler_maruyama-none-flow": (0.0062, 0.0014),  # -0.0055 / +0.0012
    "subvp-disc-reverse_diffusion-aldx1": (0.0031, 0.011),  # +0.0027 / +0.0095
    "subvp-disc-reverse_diffusion-aldx1-flow": (0.0014, 0.0018),  # -0.0011 / +0.0015
    "subvp-disc-reverse_diffusion-aldx2": (0.0035, 0.0079),  # +0.003 / +0.007
    "subvp-disc-reverse_diffusion-aldx2-flow": (0.0011, 0.00068),  # +0.00086 / -0.00052
    "subvp-disc-reverse_diffusion-none": (0.0025, 0.016),  # +0.0022 / +0.014
    "subvp-disc-reverse_diffusion-none-flow": (0.0062, 0.0014),  # -0.0055 / +0.0012
    "subvp-disc-none-aldx1": (0.26, 0.12),  # -0.23 / +0.1
    "subvp-disc-none-aldx2": (0.21, 0.055),  # -0.19 / +0.05
    "ve-cont-euler_maruyama-aldx1": (0.00011, 0.0041),  # -4e-06 / +0.0036
    "ve-cont-euler_maruyama-aldx1-flow": (0.0012, 0.11),  # -0.00094 / -0.097
    "ve-cont-euler_maruyama-aldx2": (0.00011, 0.00048),  # -1e-06 / -0.00034
    "ve-cont-euler_maruyama-aldx2-flow": (0.00039, 0.066),  # -0.00026 / -0.059
    "ve-cont-euler_maruyama-none": (0.00012, 0.012),  # -1.5e-05 / +0.011
    "ve-cont-euler_maruyama-none-flow": (0.0039, 0.27),  # -0.0034 / -0.24
    "ve-cont-reverse_diffusion-aldx1": (0.00013, 0.06),  # -2.2e-05 / +0.054
    "ve-cont-reverse_diffusion-aldx1-flow": (0.0022, 0.12),  # -0.0019 / +0.11
    "ve-cont-reverse_diffusion-aldx2": (0.00011, 0.044),  # -6e-06 / +0.04
    "ve-cont-reverse_diffusion-aldx2-flow": (0.00068, 0.057),  # -0.00052 / +0.052
    "ve-cont-reverse_diffusion-none": (0.00019, 0.087),  # -7.9e-05 / +0.078
    "ve-cont-reverse_diffusion-none-flow": (0.0075, 0.35),  # -0.0067 / +0.31
    "ve-cont-ancestral_sampling-aldx1": (0.00013, 0.058),  # -2.2e-05 / -0.052
    "ve-cont-ancestral_sampling-aldx2": (0.00011, 0.05),  # -6e-06 / -0.045
    "ve-cont-ancestral_sampling-none": (0.00019, 0.068),  # -7.9e-05 / -0.062
    "ve-cont-none-aldx1": (0.093, 19),  # -0.084 / +16
    "ve-cont-none-aldx2": (0.026, 6.4),  # -0.023 / +5.8
    "ve-disc-euler_maruyama-aldx1": (0.00011, 0.0017),  # -4e-06 / +0.0014
    "ve-disc-euler_maruyama-aldx1-flow": (0.0012, 0.12),  # -0.00092 / -0.1
    "ve-disc-euler_maruyama-aldx2": (0.00011, 0.0026),  # -1e-06 / -0.0022
    "ve-disc-euler_maruyama-aldx2-flow": (0.00039, 0.07),  # -0.00026 / -0.063
    "ve-disc-euler_maruyama-none": (0.00012, 0.0088),  # -1.5e-05 / +0.0079
    "ve-disc-euler_maruyama-none-flow": (0.0038, 0.28),  # -0.0033 / -0.25
    "ve-disc-reverse_diffusion-aldx1": (0.00013, 0.057),  # -2.1e-05 / +0.051
    "ve-disc-reverse_diffusion-aldx1-flow": (0.0022, 0.12),  # -0.0018 / +0.1
    "ve-disc-reverse_diffusion-aldx2": (0.00011, 0.042),  # -6e-06 / +0.037
    "ve-disc-reverse_diffusion-aldx2-flow": (0.00067, 0.052),  # -0.00051 / +0.046
    "ve-disc-reverse_diffusion-none": (0.00019, 0.083),  # -7.7e-05 / +0.075
    "ve-disc-reverse_diffusion-none-flow": (0.0074, 0.33),  # -0.0066 / +0.3
    "ve-disc-ancestral_sampling-aldx1": (0.00013, 0.061),  # -2.1e-05 / -0.055
    "ve-disc-ancestral_sampling-aldx2": (0.00011, 0.053),  # -6e-06 / -0.047
    "ve-disc-ancestral_sampling-none": (0.00019, 0.072),  # -7.7e-05 / -0.065
    "ve-disc-none-aldx1": (0.093, 19),  # -0.084 / +16
    "ve-disc-none-aldx2": (0.026, 6.3),  # -0.023 / +5.7
    # Langevin: sample - data over 1 024 000 draws (50 runs of (80, 256), torch and philox noise alternating)
    "vp-cont-euler_maruyama-langevinx1-batch": (0.0052, 0.0087),  # +0.0028 / +0.0070
    "vp-cont-euler_maruyama-langevinx1-sample": (0.0052, 0.013),  # +0.0027 / +0.0108
    "vp-cont-euler_maruyama-langevinx1-batch-flow": (0.0036, 0.0092),  # +0.0012 / +0.0075
    "vp-cont-euler_maruyama-langevinx2-batch": (0.0048, 0.0085),  # +0.0023 / +0.0068
    "vp-cont-euler_maruyama-langevinx2-batch-flow": (0.0041, 0.0095),  # +0.0017 / +0.0077
    "vp-cont-reverse_diffusion-langevinx1-batch": (0.0064, 0.012),  # +0.0040 / +0.0100
    "vp-cont-reverse_diffusion-langevinx1-sample": (0.0064, 0.016),  # +0.0039 / +0.0139
    "vp-cont-reverse_diffusion-langevinx1-batch-flow": (0.0075, 0.052),  # +0.0049 / +0.0498
    "vp-cont-reverse_diffusion-langevinx2-batch": (0.0053, 0.0099),  # +0.0028 / +0.0081
    "vp-cont-reverse_diffusion-langevinx2-batch-flow": (0.0054, 0.013),  # +0.0029 / +0.0112
    "vp-cont-ancestral_sampling-langevinx1-batch": (0.0097, 0.0051),  # +0.0072 / +0.0033
    "vp-cont-ancestral_sampling-langevinx1-sample": (0.0096, 0.0089),  # +0.0072 / +0.0072
    "vp-cont-ancestral_sampling-langevinx2-batch": (0.007, 0.0074),  # +0.0045 / +0.0057
    "vp-cont-none-langevinx1-batch": (0.16, 0.095),  # -0.1498 / +0.0923
    "vp-cont-none-langevinx1-sample": (0.16, 0.11),  # -0.1515 / +0.1004
    "vp-cont-none-langevinx2-batch": (0.08, 0.048),  # -0.0771 / +0.0454
    "vp-disc-euler_maruyama-langevinx1-batch": (0.0066, 0.014),  # -0.0041 / +0.0119
    "vp-disc-euler_maruyama-langevinx1-sample": (0.0067, 0.018),  # -0.0042 / +0.0158
    "vp-disc-euler_maruyama-langevinx1-batch-flow": (0.013, 0.017),  # -0.0104 / +0.0143
    "vp-disc-euler_maruyama-langevinx2-batch": (0.0048, 0.012),  # -0.0023 / +0.0100
    "vp-disc-euler_maruyama-langevinx2-batch-flow": (0.0073, 0.014),  # -0.0048 / +0.0116
    "vp-disc-reverse_diffusion-langevinx1-batch": (0.0056, 0.017),  # -0.0032 / +0.0151
    "vp-disc-reverse_diffusion-langevinx1-sample": (0.0057, 0.021),  # -0.0032 / +0.0190
    "vp-disc-reverse_diffusion-langevinx1-batch-flow": (0.012, 0.062),  # -0.0092 / +0.0598
    "vp-disc-reverse_diffusion-langevinx2-batch": (0.0043, 0.014),  # -0.0019 / +0.0114
    "vp-disc-reverse_diffusion-langevinx2-batch-flow": (0.0065, 0.017),  # -0.0040 / +0.0153
    "vp-disc-ancestral_sampling-langevinx1-batch": (0.0027, 0.0099),  # +0.0003 / +0.0082
    "vp-disc-ancestral_sampling-langevinx1-sample": (0.0027, 0.014),  # +0.0002 / +0.0120
    "vp-disc-ancestral_sampling-langevinx2-batch": (0.0025, 0.011),  # -0.0001 / +0.0089
    "vp-disc-none-langevinx1-batch": (0.16, 0.098),  # -0.1542 / +0.0958
    "vp-disc-none-langevinx1-sample": (0.16, 0.11),  # -0.1559 / +0.1039
    "vp-disc-none-langevinx2-batch": (0.085, 0.051),  # -0.0815 / +0.0487
    "subvp-cont-euler_maruyama-langevinx1-batch": (0.0055, 0.014),  # +0.0030 / +0.0115
    "subvp-cont-euler_maruyama-langevinx1-sample": (0.0054, 0.018),  # +0.0029 / +0.0159
    "subvp-cont-euler_maruyama-langevinx1-batch-flow": (0.0036, 0.012),  # +0.0012 / +0.0096
    "subvp-cont-euler_maruyama-langevinx2-batch": (0.0049, 0.015),  # +0.0024 / +0.0124
    "subvp-cont-euler_maruyama-langevinx2-batch-flow": (0.0042, 0.014),  # +0.0017 / +0.0118
    "subvp-cont-reverse_diffusion-langevinx1-batch": (0.0055, 0.014),  # +0.0030 / +0.0115
    "subvp-cont-reverse_diffusion-langevinx1-sample": (0.0054, 0.018),  # +0.0029 / +0.0159
    "subvp-cont-reverse_diffusion-langevinx1-batch-flow": (0.0036, 0.012),  # +0.0012 / +0.0096
    "subvp-cont-reverse_diffusion-langevinx2-batch": (0.0049, 0.015),  # +0.0024 / +0.0124
    "subvp-cont-reverse_diffusion-langevinx2-batch-flow": (0.0042, 0.014),  # +0.0017 / +0.0118
    "subvp-cont-none-langevinx1-batch": (0.16, 0.039),  # -0.1560 / +0.0369
    "subvp-cont-none-langevinx1-sample": (0.17, 0.047),  # -0.1578 / +0.0451
    "subvp-cont-none-langevinx2-batch": (0.079, 0.0044),  # -0.0760 / -0.0027
    "subvp-disc-euler_maruyama-langevinx1-batch": (0.0055, 0.014),  # +0.0030 / +0.0115
    "subvp-disc-euler_maruyama-langevinx1-sample": (0.0054, 0.018),  # +0.0029 / +0.0159
    "subvp-disc-euler_maruyama-langevinx1-batch-flow": (0.0036, 0.012),  # +0.0012 / +0.0096
    "subvp-disc-euler_maruyama-langevinx2-batch": (0.0049, 0.015),  # +0.0024 / +0.0124
    "subvp-disc-euler_maruyama-langevinx2-batch-flow": (0.0042, 0.014),  # +0.0017 / +0.0118
    "subvp-disc-reverse_diffusion-langevinx1-batch": (0.0055, 0.014),  # +0.0030 / +0.0115
    "subvp-disc-reverse_diffusion-langevinx1-sample": (0.0054, 0.018),  # +0.0029 / +0.0159
    "subvp-disc-reverse_diffusion-langevinx1-batch-flow": (0.0036, 0.012),  # +0.0012 / +0.0096
    "subvp-disc-reverse_diffusion-langevinx2-batch": (0.0049, 0.015),  # +0.0024 / +0.0124
    "subvp-disc-reverse_diffusion-langevinx2-batch-flow": (0.0042, 0.014),  # +0.0017 / +0.0118
    "subvp-disc-none-langevinx1-batch": (0.16, 0.039),  # -0.1560 / +0.0369
    "subvp-disc-none-langevinx1-sample": (0.17, 0.047),  # -0.1578 / +0.0451
    "subvp-disc-none-langevinx2-batch": (0.079, 0.0044),  # -0.0760 / -0.0027
    "ve-cont-euler_maruyama-langevinx1-batch": (0.0026, 0.011),  # +0.0001 / +0.0090
    "ve-cont-euler_maruyama-langevinx1-sample": (0.0025, 0.017),  # -0.0000 / +0.0147
    "ve-cont-euler_maruyama-langevinx1-batch-flow": (0.0025, 0.0059),  # +0.0001 / +0.0041
    "ve-cont-euler_maruyama-langevinx2-batch": (0.0028, 0.012),  # -0.0004 / +0.0102
    "ve-cont-euler_maruyama-langevinx2-batch-flow": (0.0028, 0.012),  # -0.0004 / +0.0100
    "ve-cont-reverse_diffusion-langevinx1-batch": (0.0026, 0.017),  # +0.0001 / +0.0149
    "ve-cont-reverse_diffusion-langevinx1-sample": (0.0025, 0.023),  # -0.0000 / +0.0208
    "ve-cont-reverse_diffusion-langevinx1-batch-flow": (0.0027, 0.026),  # -0.0002 / +0.0240
    "ve-cont-reverse_diffusion-langevinx2-batch": (0.0028, 0.013),  # -0.0004 / +0.0108
    "ve-cont-reverse_diffusion-langevinx2-batch-flow": (0.0028, 0.013),  # -0.0004 / +0.0109
    "ve-cont-ancestral_sampling-langevinx1-batch": (0.0025, 0.0063),  # +0.0001 / +0.0046
    "ve-cont-ancestral_sampling-langevinx1-sample": (0.0025, 0.012),  # -0.0000 / +0.0102
    "ve-cont-ancestral_sampling-langevinx2-batch": (0.0028, 0.012),  # -0.0004 / +0.0097
    "ve-cont-none-langevinx1-batch": (0.29, 46),  # -0.1457 / +45.6101
    "ve-cont-none-langevinx1-sample": (0.29, 46),  # -0.1475 / +45.6942
    "ve-cont-none-langevinx2-batch": (0.23, 42),  # -0.0935 / +41.8950
    "ve-disc-euler_maruyama-langevinx1-batch": (0.0026, 0.011),  # +0.0001 / +0.0088
    "ve-disc-euler_maruyama-langevinx1-sample": (0.0025, 0.017),  # -0.0000 / +0.0144
    "ve-disc-euler_maruyama-langevinx1-batch-flow": (0.0025, 0.0056),  # +0.0001 / +0.0038
    "ve-disc-euler_maruyama-langevinx2-batch": (0.0028, 0.012),  # -0.0004 / +0.0102
    "ve-disc-euler_maruyama-langevinx2-batch-flow": (0.0028, 0.012),  # -0.0004 / +0.0100
    "ve-disc-reverse_diffusion-langevinx1-batch": (0.0026, 0.017),  # +0.0001 / +0.0145
    "ve-disc-reverse_diffusion-langevinx1-sample": (0.0025, 0.023),  # -0.0000 / +0.0204
    "ve-disc-reverse_diffusion-langevinx1-batch-flow": (0.0027, 0.025),  # -0.0002 / +0.0225
    "ve-disc-reverse_diffusion-langevinx2-batch": (0.0028, 0.013),  # -0.0004 / +0.0107
    "ve-disc-reverse_diffusion-langevinx2-batch-flow": (0.0028, 0.013),  # -0.0004 / +0.0109
    "ve-disc-ancestral_sampling-langevinx1-batch": (0.0025, 0.0061),  # +0.0001 / +0.0044
    "ve-disc-ancestral_sampling-langevinx1-sample": (0.0025, 0.012),  # -0.0000 / +0.0099
    "ve-disc-ancestral_sampling-langevinx2-batch": (0.0028, 0.012),  # -0.0004 / +0.0097
    "ve-disc-none-langevinx1-batch": (0.29, 46),  # -0.1457 / +45.6139
    "ve-disc-none-langevinx1-sample": (0.29, 46),  # -0.1475 / +45.6979
    "ve-disc-none-langevinx2-batch": (0.23, 42),  # -0.0935 / +41.9028
}


@pytest.fixture(autouse=True)
def _one_thread():
    # (80, 256) elementwise steps gain nothing from intra-op threads (this file: 20.4 s with 2 threads, 20.3 s
    # with 1, on 2 cores); one thread leaves the other core to whatever runs beside it
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@functools.lru_cache(maxsize=None)
def _law(kind, cont, pred, corr, ns, pf):
    _, osde, model = toy(kind, N, cont, wiggle=0.0)
    return law(osde, model, pred, corr, ns, pf, cont, snr=SNR, mean_field=corr == "langevin")


def test_the_table_covers_the_grid():
    assert sorted(BIAS) == sorted(_name(*c) for c in COMBOS)
    assert len(COMBOS) == 186  # 96 affine + 68 Langevin (batch norm) + 22 Langevin (sample norm)


@pytest.mark.slow
@pytest.mark.parametrize("noise_source", ["torch", "philox"])
@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: _name(*c))
def test_every_pc_combination_on_gaussian_data(combo, noise_source):
    kind, cont, pred, corr, ns, pf, norm = combo
    sde, _, model = toy(kind, N, cont, wiggle=0.0)
    torch.manual_seed(0)
    x, nfe = sampling.get_pc_sampler(sde, SHAPE, pred, corr, lambda v: v, SNR, ns, pf, cont, device="cpu",
                                     noise_source=noise_source, corrector_norm=norm)(model)
    assert nfe == N * (ns + 1) and x.shape == SHAPE and bool(torch.isfinite(x).all())
    x = x.double()
    n = x.numel()
    mean, std = x.mean().item(), x.std().item()
    bias_m, bias_s = BIAS[_name(*combo)]
    if corr == "langevin":  # standard errors from the sample's own std (46 instead of 0.8 for VE corrector-only)
        assert abs(mean - MU) < 4 * std / n ** 0.5 + bias_m
        assert abs(std - S) < 4 * std / (2 * n) ** 0.5 + bias_s
        if norm == "batch":  # and two-sided: the mean-field law, off by <= 0.0009 (measured, gaussian_law)
            mf_mean, mf_std = _law(kind, cont, pred, corr, ns, pf)
            assert abs(mean - mf_mean) < 4 * std / n ** 0.5 + 0.002 * std / S
            assert abs(std - mf_std) < 4 * std / (2 * n) ** 0.5 + 0.002 * std / S
        return
    law_mean, law_std = _law(kind, cont, pred, corr, ns, pf)
    assert abs(mean - law_mean) < 4 * law_std / n ** 0.5
    assert abs(std - law_std) < 4 * law_std / (2 * n) ** 0.5
    assert abs(law_mean - MU) < bias_m and abs(law_std - S) < bias_s  # the discretisation bias stays as measured
