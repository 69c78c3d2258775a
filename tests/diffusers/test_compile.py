"""The diffusers drop-ins under ``torch.compile``: a whole sampling loop, model included, in one graph.

``torch.compile(run, fullgraph=True)`` raises on any graph break, so every fullgraph test here is also the check
that the loop traces without one. The compiled loop is compared with the same drop-in run eagerly (whose parity
with diffusers is what the other tests of this folder check); both draw their noise from the global RNG after
the same ``torch.manual_seed``.
"""
import pytest
import torch

import pydiff.diffusers as pd
from helpers import TinyModel

STEPS = 10


def make_sample(seed=1, dtype=torch.float32):
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def loop(sched, model, **step_kw):
    """The sampling loop of the brief: every timestep of the schedule, the model inside."""

    def run(x):
        for t in sched.timesteps:
            x = sched.step(model(x, t), t, x, **step_kw).prev_sample
        return x

    return run


class CountingBackend:
    """A torch.compile backend that records how many graphs it was given and the pydiff ops in them, then runs
    them through AOTAutograd (functionalization included) without code generation: the same arithmetic as eager."""

    def __init__(self):
        self.graphs = 0
        self.ops = []

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        for node in gm.graph.nodes:
            if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload) \
                    and node.target.namespace == "pydiff":
                self.ops.append(node.target.name())
        return torch._dynamo.backends.registry.lookup_backend("aot_eager")(gm, example_inputs)


def make(cls, config, noise=None):
    sched = getattr(pd, cls)(**config)
    if noise is not None:
        sched.pydiff_noise = noise
    sched.set_timesteps(STEPS)
    return sched


def ulps(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| in units of float32 rounding at the scale of b."""
    return ((a - b).abs().max() / (torch.finfo(torch.float32).eps * b.abs().max())).item()


CASES = [
    ("DDIMScheduler", {}, {}, None),
    ("DDIMScheduler", {"prediction_type": "v_prediction"}, {}, None),
    ("DDIMScheduler", {}, {"eta": 0.5}, None),  # torch.randn inside the graph
    ("DDIMScheduler", {}, {"eta": 0.5}, "philox"),  # the Philox key drawn as a tensor inside the graph
    ("DDIMScheduler", {"clip_sample": True}, {"eta": 1.0, "use_clipped_model_output": True}, None),
    ("DDIMScheduler", {"thresholding": True}, {}, None),
    ("DDPMScheduler", {}, {}, None),
    ("DDPMScheduler", {"prediction_type": "v_prediction"}, {}, None),
    ("DDPMScheduler", {}, {}, "philox"),
    ("DDPMScheduler", {"thresholding": True, "variance_type": "fixed_large"}, {}, None),
    ("DPMSolverMultistepScheduler", {}, {}, None),  # DPM-Solver++ 2M
    ("DPMSolverMultistepScheduler", {"prediction_type": "v_prediction"}, {}, None),
    ("DPMSolverMultistepScheduler", {"solver_order": 3}, {}, None),  # 3M
    ("DPMSolverMultistepScheduler", {"solver_order": 3, "prediction_type": "v_prediction"}, {}, None),
    ("DPMSolverMultistepScheduler", {"thresholding": True}, {}, None),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, {}, None),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "solver_type": "heun", "final_sigmas_type": "sigma_min"},
     {}, None),
    ("DPMSolverSinglestepScheduler", {}, {}, None),  # order 2
    ("DPMSolverSinglestepScheduler", {"prediction_type": "v_prediction"}, {}, None),
    ("DPMSolverSinglestepScheduler", {"solver_order": 3}, {}, None),
    ("DPMSolverSinglestepScheduler", {"solver_order": 3, "prediction_type": "v_prediction"}, {}, None),
    ("DPMSolverSinglestepScheduler", {"thresholding": True}, {}, None),
]


def case_id(case):
    cls, config, step_kw, noise = case
    parts = [cls.replace("Scheduler", "")] + [f"{k}={v}" for k, v in {**config, **step_kw}.items()]
    return "-".join(parts + ([noise] if noise else []))


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_compiled_loop_is_one_graph_equal_to_eager(case):
    cls, config, step_kw, noise = case
    model = TinyModel()
    x = make_sample()
    with torch.no_grad():
        eager_sched = make(cls, config, noise)
        torch.manual_seed(7)
        expected = loop(eager_sched, model, **step_kw)(x)
        assert eager_sched.last_fallback_reason is None

        torch._dynamo.reset()
        backend = CountingBackend()
        sched = make(cls, config, noise)
        compiled = torch.compile(loop(sched, model, **step_kw), backend=backend, fullgraph=True)
        torch.manual_seed(7)
        got = compiled(x)
        assert sched.last_fallback_reason is None
        assert backend.graphs == 1
        assert backend.ops.count("pydiff::fused_step") == STEPS, backend.ops
        assert torch.isfinite(got).all()
        assert ulps(got, expected) <= 4

        # a second run after set_timesteps reuses the graph (same guards) and starts over
        sched.set_timesteps(STEPS)
        torch.manual_seed(7)
        again = compiled(x)
        assert backend.graphs == 1
        assert ulps(again, expected) <= 4
    # the noisy cases really draw noise: another seed gives another image
    if step_kw.get("eta", 0) > 0 or cls == "DDPMScheduler" or "sde" in config.get("algorithm_type", ""):
        with torch.no_grad():
            sched.set_timesteps(STEPS)
            torch.manual_seed(8)
            other = compiled(x)
        assert (other - got).abs().max() > 1e-3


@pytest.mark.parametrize("cls", ["DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler",
                                 "DPMSolverSinglestepScheduler"])
def test_explain_counts_no_graph_break(cls):
    torch._dynamo.reset()
    sched = make(cls, {})
    with torch.no_grad():
        explanation = torch._dynamo.explain(loop(sched, TinyModel()))(make_sample())
    assert explanation.graph_break_count == 0, [str(r.reason)[:200] for r in explanation.break_reasons]
    assert explanation.graph_count == 1


@pytest.mark.slow  # Inductor's code generation: ~10 s with a warm cache, ~40 s cold on 2 busy cores
def test_inductor_compiles_the_loop():
    """The default backend (Inductor: generated C++ for the model and the glue) agrees with eager to float32
    rounding; its fusion of the model's arithmetic is what differs (measured 9e-8 of the output's scale)."""
    model = TinyModel()
    x = make_sample()
    with torch.no_grad():
        expected = loop(make("DPMSolverMultistepScheduler", {}), model)(x)
        torch._dynamo.reset()
        sched = make("DPMSolverMultistepScheduler", {})
        got = torch.compile(loop(sched, model), fullgraph=True)(x)
    assert sched.last_fallback_reason is None
    assert ulps(got, expected) <= 64


def test_integer_timesteps_and_begin_index_trace():
    """Python-int timesteps (a loop over ``timesteps.tolist()``) and a run that starts mid-schedule through
    ``set_begin_index`` (what img2img pipelines do) trace too."""
    model = TinyModel()
    x = make_sample()

    def run_from(sched, start):
        timesteps = sched.timesteps.tolist()[start:]  # host ints, made before tracing

        def run(x):
            for t in timesteps:
                tt = torch.tensor(t)
                x = sched.step(model(x, tt), t, x).prev_sample
            return x
        return run

    for cls in ("DDIMScheduler", "DPMSolverMultistepScheduler"):
        with torch.no_grad():
            eager = make(cls, {})
            compiled_sched = make(cls, {})
            if cls == "DPMSolverMultistepScheduler":
                eager.set_begin_index(3)
                compiled_sched.set_begin_index(3)
            expected = run_from(eager, 3)(x)
            torch._dynamo.reset()
            got = torch.compile(run_from(compiled_sched, 3), backend="aot_eager", fullgraph=True)(x)
        assert compiled_sched.last_fallback_reason is None
        assert ulps(got, expected) <= 4


def test_off_range_timestep_tensor_gives_nan_when_traced():
    """A traced step cannot check a timestep tensor on the host: off the table, the kernel reads a NaN row (the
    GPU rule), where eager falls back to diffusers."""
    model = TinyModel()
    x = make_sample()
    for cls in ("DDIMScheduler", "DDPMScheduler"):
        sched = make(cls, {})

        def one(x):
            t = torch.tensor(5000)
            return sched.step(model(x, t), t, x).prev_sample

        torch._dynamo.reset()
        with torch.no_grad():
            out = torch.compile(one, backend="aot_eager", fullgraph=True)(x)
        assert torch.isnan(out).all()


def test_unfused_configuration_compiles_with_graph_breaks():
    """A configuration the drop-in hands to diffusers (here ``use_exponential_sigmas``) logs that once -- a graph
    break -- and runs diffusers' step: it compiles without ``fullgraph`` and gives diffusers' result."""
    import diffusers

    model = TinyModel()
    x = make_sample()
    config = {"use_exponential_sigmas": True}
    with torch.no_grad():
        ref = diffusers.DPMSolverMultistepScheduler(**config)
        ref.set_timesteps(STEPS)
        expected = loop(ref, model)(x)
        torch._dynamo.reset()
        sched = make("DPMSolverMultistepScheduler", config)
        got = torch.compile(loop(sched, model), backend="aot_eager")(x)
    assert sched.last_fallback_reason == "use_exponential_sigmas=True"
    assert ulps(got, expected) <= 4


def test_generator_compiles_with_graph_breaks():
    """A ``torch.Generator`` cannot enter a graph: the step with one compiles with breaks around the noise draw and
    still draws diffusers' noise from it (the eager result, to float32 rounding)."""
    model = TinyModel()
    x = make_sample()
    with torch.no_grad():
        expected = loop(make("DDPMScheduler", {}), model, generator=torch.Generator().manual_seed(3))(x)
        torch._dynamo.reset()
        sched = make("DDPMScheduler", {})
        got = torch.compile(loop(sched, model, generator=torch.Generator().manual_seed(3)), backend="aot_eager")(x)
    assert ulps(got, expected) <= 4


def test_traced_step_index_is_the_host_rule():
    """The first step's index a traced DPM-Solver step uses for a Python integer timestep is ``host_step_index``'s
    (diffusers' ``index_for_timestep``: the second position of a repeated value, the last step for an absent
    one); for a timestep tensor it is the schedule's first step, as for an accelerator tensor in eager mode."""
    from pydiff.diffusers.dpmsolver_multistep import host_step_index, traced_step_index

    sched = pd.DPMSolverMultistepScheduler()
    sched.set_timesteps(timesteps=[999, 800, 800, 500, 200, 1])
    values = sched._pydiff_ts_host.tolist()
    assert values.count(800) == 2
    for v in values + [12345]:
        assert traced_step_index(sched, v) == host_step_index(sched, v)
    assert traced_step_index(sched, 800) == 2
    assert traced_step_index(sched, torch.tensor(500)) == 0
    sched.set_begin_index(3)
    assert traced_step_index(sched, 999) == 3


def test_dynamic_batch_size():
    """``dynamic=True``: one graph for every batch size (symbolic sizes reach the noise draw and the op)."""
    cls = "DDPMScheduler"
    model = TinyModel()
    torch._dynamo.reset()
    backend = CountingBackend()
    sched = make(cls, {})
    compiled = torch.compile(loop(sched, model), backend=backend, fullgraph=True, dynamic=True)
    eager = make(cls, {})
    with torch.no_grad():
        for batch in (2, 3):
            x = torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(batch))
            sched.set_timesteps(STEPS)
            eager.set_timesteps(STEPS)
            torch.manual_seed(4)
            got = compiled(x)
            torch.manual_seed(4)
            assert ulps(got, loop(eager, model)(x)) <= 4
    assert backend.graphs == 1


@pytest.mark.parametrize("cls", [pd.DDIMScheduler, pd.DPMSolverMultistepScheduler])
def test_float_arguments_that_change_between_calls(cls):
    """A loop taking guidance_scale (and DDIM's eta) as a Python float: the second call with another value recompiles
    with a symbolic float, which the argument checks must trace (a graph break there failed fullgraph)."""
    torch._dynamo.reset()
    sched = cls()
    sched.set_timesteps(3)

    def run(x, g, eta):
        for t in sched.timesteps:
            m = torch.sin(x)
            kw = {"eta": eta} if cls is pd.DDIMScheduler else {}
            x = sched.step(m, t, x, model_output_uncond=0.5 * m, guidance_scale=g, **kw).prev_sample
        return x

    compiled = torch.compile(run, backend="aot_eager", fullgraph=True)
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    for g, eta in ((2.0, 0.0), (4.0, 0.0), (3.0, 0.0)):
        sched.set_timesteps(3)
        got = compiled(x, g, eta)
        sched.set_timesteps(3)
        torch.testing.assert_close(got, run(x, g, eta), rtol=1e-6, atol=1e-6)
