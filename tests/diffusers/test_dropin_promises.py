"""Promises a drop-in makes beyond one step's arithmetic: noise drawn from (and advancing) the generator it came
from, bounded memory, visible fallbacks, pipelines that save and load with the drop-in, consistent argument
rules. Each test is a real user's workflow."""
import gc
import logging

import numpy as np
import pytest
import torch
import diffusers
from diffusers import DDPMPipeline, DiffusionPipeline

import pydiff
import pydiff.diffusers as pd
from helpers import rel_l2

SHAPE = (2, 4, 8, 8)


def _model(x, t):
    return 0.7 * torch.sin(x * 1.3 + float(t) / 500.0)


def _ddpm_run(sched, generator=None, steps=5, x=None):
    sched.set_timesteps(steps)
    x = torch.ones(SHAPE) if x is None else x
    for t in sched.timesteps:
        x = sched.step(_model(x, t), t, x, generator=generator).prev_sample
    return x


# ---------------------------------------------------------------------------------------------- Philox noise

def test_philox_noise_draws_its_seed_from_the_global_rng():
    s = pd.DDPMScheduler()
    s.pydiff_noise = "philox"
    torch.manual_seed(11)
    a = _ddpm_run(s)
    b = _ddpm_run(s)  # the global RNG moved on: new noise
    torch.manual_seed(11)
    c = _ddpm_run(s)
    assert not torch.equal(a, b)
    assert torch.equal(a, c)


def test_philox_noise_draws_from_and_advances_the_generator():
    s = pd.DDPMScheduler()
    s.pydiff_noise = "philox"
    g = torch.Generator().manual_seed(5)
    a = _ddpm_run(s, g)
    b = _ddpm_run(s, g)  # the same generator object, used again: it has advanced
    assert not torch.equal(a, b)
    assert torch.equal(a, _ddpm_run(s, torch.Generator().manual_seed(5)))
    g2 = torch.Generator().manual_seed(5)
    _ddpm_run(s, g2)
    assert not torch.equal(g2.get_state(), torch.Generator().manual_seed(5).get_state())


def test_philox_noise_with_a_generator_per_sample_is_position_independent():
    """A batch split into single-sample runs reproduces the batch when each sample has its own generator."""
    s = pd.DDPMScheduler()
    s.pydiff_noise = "philox"
    both = _ddpm_run(s, [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    second = _ddpm_run(s, [torch.Generator().manual_seed(2)], x=torch.ones((1,) + SHAPE[1:]))
    assert torch.equal(both[1:], second)
    assert not torch.equal(both[0], both[1])


def test_philox_noise_of_one_sample_is_the_same_with_a_generator_or_a_list_of_one():
    """The in-kernel stream of a batch of one and the per-sample draw of a list are the same numbers."""
    s = pd.DDPMScheduler()
    s.pydiff_noise = "philox"
    x = torch.ones((1,) + SHAPE[1:])
    one = _ddpm_run(s, torch.Generator().manual_seed(2), x=x)
    listed = _ddpm_run(s, [torch.Generator().manual_seed(2)], x=x)
    assert rel_l2(one, listed) < 1e-6


@pytest.mark.parametrize("kind", ["DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler"])
def test_dpm_dropins_honour_pydiff_noise(kind):
    def run(value, seed):
        s = getattr(pd, kind)(algorithm_type="sde-dpmsolver++")
        s.pydiff_noise = value
        s.set_timesteps(6)
        x = torch.ones(SHAPE)
        g = torch.Generator().manual_seed(seed)
        for t in s.timesteps:
            x = s.step(_model(x, t), t, x, generator=g).prev_sample
        return x

    philox = run("philox", 3)
    assert torch.equal(philox, run("philox", 3))
    assert not torch.equal(philox, run("philox", 4))
    assert not torch.equal(philox, run("diffusers", 3))  # opt-in: other numbers than diffusers' draw
    with pytest.raises(ValueError, match="pydiff_noise"):
        run("cuRAND", 3)


# ---------------------------------------------------------------------------------------------- memory

def test_per_step_eta_keeps_memory_bounded():
    s = pd.DDIMScheduler()
    s.set_timesteps(400)
    x = torch.randn(1, 4, 16, 16)
    v = torch.randn_like(x)

    def live():
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    for i, t in enumerate(s.timesteps[:50]):
        s.step(x, t, x, eta=0.001 * (i + 1), variance_noise=v)
    before = live()
    for i, t in enumerate(s.timesteps[50:], start=50):
        s.step(x, t, x, eta=0.001 * (i + 1), variance_noise=v)
    assert live() - before < 20


# ---------------------------------------------------------------------------------------------- visible fallbacks

def test_fallback_is_visible_once_per_scheduler(caplog):
    s = pd.DPMSolverMultistepScheduler(use_exponential_sigmas=True)
    s.set_timesteps(5)
    x = torch.randn(SHAPE)
    with caplog.at_level(logging.WARNING):
        for t in s.timesteps:
            x = s.step(_model(x, t), t, x).prev_sample
    msgs = [r.getMessage() for r in caplog.records if "use_exponential_sigmas" in r.getMessage()]
    assert len(msgs) == 1, [r.getMessage() for r in caplog.records]


def test_explain_lists_what_runs_fused():
    fused = pydiff.explain(pd.DPMSolverMultistepScheduler())
    assert "fused" in fused and "falls back" not in fused
    slow = pydiff.explain(pd.DPMSolverMultistepScheduler(use_exponential_sigmas=True))
    assert "falls back" in slow and "use_exponential_sigmas" in slow


# ---------------------------------------------------------------------------------------------- pipelines

def _images(pipe, steps=4):
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        return pipe(batch_size=1, generator=torch.Generator().manual_seed(3), num_inference_steps=steps,
                    output_type="pt").images


@pytest.mark.parametrize("kind", ["DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler",
                                  "DPMSolverSinglestepScheduler"])
def test_pipeline_save_and_load_keeps_the_dropin(unet, kind, tmp_path):
    pipe = DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler())
    pipe.scheduler = getattr(pd, kind).from_config(pipe.scheduler.config)
    expect = _images(pipe)
    pipe.save_pretrained(tmp_path)
    for loader in (DDPMPipeline.from_pretrained, DiffusionPipeline.from_pretrained):
        back = loader(tmp_path)
        assert type(back.scheduler) is getattr(pd, kind)
        assert rel_l2(_images(back), expect) < 1e-6
    sched = getattr(pd, kind).from_pretrained(tmp_path, subfolder="scheduler")
    back = DDPMPipeline.from_pretrained(tmp_path, scheduler=sched)
    assert back.scheduler is sched


def test_compatibles_include_the_dropins():
    names = {c for c in pd.DDIMScheduler.compatibles}
    assert pd.DPMSolverMultistepScheduler in names and pd.DDPMScheduler in names


@pytest.mark.parametrize("config", [{}, {"clip_sample": False}, {"thresholding": True},
                                    {"prediction_type": "v_prediction", "set_alpha_to_one": False}])
def test_ddim_first_use_row_equals_the_table_row(config):
    """A per-step eta gets one row per step (no table); it must be the row the table would hold: the same float32
    scalars (diffusers' 0-d ``** 0.5``: NumPy's float32 sqrt is 1 ulp off torch's on some of them), combined in
    float64 (an affine combination of two rows: float64 rounding apart)."""
    s = pd.DDIMScheduler(**config)
    s.set_timesteps(50)
    for eta in (0.0, 0.3, 1.0):
        for use_clipped in (False, True):
            table = s._rows(eta, use_clipped)
            for t in s.timesteps.tolist():
                row = s._eta_rows(use_clipped).row(t, eta)
                assert row is not None
                np.testing.assert_allclose(row, table[t], rtol=1e-13, atol=1e-15)


def test_explain_answers_for_diffusers_schedulers_and_rejects_other_objects():
    assert "pydiff.diffusers.DDIMScheduler" in pydiff.explain(diffusers.DDIMScheduler())
    with pytest.raises(TypeError, match="scheduler"):
        pydiff.explain(object())


# ---------------------------------------------------------------------------------------------- set_timesteps cost

def _row_by_row(n, reachable, build):
    table = np.full((3, n, pydiff.ops.NCOEF), np.nan)
    with np.errstate(all="ignore"):
        for o in (1, 2, 3):
            for i in range(n):
                if reachable(i, o):
                    try:
                        table[o - 1, i] = build(i, o)
                    except (ZeroDivisionError, OverflowError, ValueError):
                        pass
    return table


def _same_rows(a, b):
    assert np.array_equal(np.isfinite(a), np.isfinite(b))
    fin = np.isfinite(a)
    np.testing.assert_allclose(a[fin], b[fin], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("config", [
    {}, {"solver_order": 3}, {"solver_order": 3, "solver_type": "heun", "lower_order_final": False},
    {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": 3},
    {"algorithm_type": "sde-dpmsolver++", "prediction_type": "v_prediction"},
    {"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min"},
    {"algorithm_type": "dpmsolver", "thresholding": True, "final_sigmas_type": "sigma_min", "solver_order": 1},
    {"use_karras_sigmas": True, "solver_order": 3, "prediction_type": "sample"},
])
@pytest.mark.parametrize("steps", [5, 20])
def test_multistep_table_is_the_rule_row_by_row(config, steps):
    """set_timesteps builds every row at once; each must be the row of the scalar rule (multistep_row)."""
    from pydiff.plans import dpm_solver_diffusers as dd

    s = pd.DPMSolverMultistepScheduler(**config)
    s.set_timesteps(steps)
    cfg = s.config
    sig = s.sigmas.float().numpy()
    n = len(sig) - 1
    opts = dict(solver_order=cfg.solver_order, lower_order_final=cfg.lower_order_final,
                euler_at_final=cfg.euler_at_final, final_sigmas_type=cfg.final_sigmas_type)
    cap = [dd.multistep_order(i, n, **opts) for i in range(n)]
    kw = dict(algorithm=cfg.algorithm_type, solver_type=cfg.solver_type, prediction_type=cfg.prediction_type,
              thresholding=cfg.thresholding)
    expect = _row_by_row(n, lambda i, o: o <= cap[i] and o <= i + 1, lambda i, o: dd.multistep_row(sig, i, o, **kw))
    _same_rows(s._pydiff_rows, expect)


@pytest.mark.parametrize("config", [
    {}, {"solver_order": 3}, {"solver_order": 3, "solver_type": "heun"}, {"solver_order": 1},
    {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": 3},
    {"algorithm_type": "sde-dpmsolver++", "prediction_type": "v_prediction", "solver_order": 3},
])
@pytest.mark.parametrize("steps", [5, 20, 21])
def test_singlestep_table_is_the_rule_row_by_row(config, steps):
    from pydiff.plans import dpm_solver_diffusers as dd

    s = pd.DPMSolverSinglestepScheduler(**config)
    s.set_timesteps(steps)
    cfg = s.config
    sig = s.sigmas.float().numpy()
    n, ol = len(sig) - 1, s.order_list
    kw = dict(algorithm=cfg.algorithm_type, solver_type=cfg.solver_type, prediction_type=cfg.prediction_type)
    expect = _row_by_row(n, lambda i, o: i < len(ol) and o <= ol[i] and o <= i + 1,
                         lambda i, o: dd.singlestep_row(sig, i, o, **kw))
    _same_rows(s._pydiff_rows, expect)
