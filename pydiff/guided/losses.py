"""guided-diffusion's ``losses.py`` names: the Gaussian KL and the discretized decoder likelihood
(``pydiff.plans.guided`` holds the formulas)."""
from ..plans.guided import approx_standard_normal_cdf, discretized_gaussian_log_likelihood, normal_kl

__all__ = ["approx_standard_normal_cdf", "discretized_gaussian_log_likelihood", "normal_kl"]
