"""Scheduler latency: diffusers' against pydiff's, side by side in one run.

Three tables:

* one ``scheduler.step`` mid-schedule (host overhead included: that is what a sampling loop pays), for
  diffusers, pydiff's drop-in on every backend, and — for DDIM and DDPM — the strongest simple peer: the same
  update written in plain torch and compiled with ``torch.compile`` (``torch-compile``);
* a whole run the way a pipeline drives a scheduler: ``set_timesteps`` and every ``step`` (``whole_run``);
* with ``bandwidth``: the fused step against a device copy.

``score_sde_ve`` times one predictor-corrector step pair (``step_correct`` then ``step_pred``) with diffusers'
noise and, per backend, with in-kernel Philox noise (``philox``); next to it ``score_sde_ode`` times score_sde's
probability-flow ODE sampler (VE, exact Gaussian score) with the reference's scipy solver (the baseline of those
rows) and pydiff's device-resident RK45, the number of model evaluations in each label.

The ``*_cfg`` samplers (``ddim_cfg``, ``ddpm_cfg``, ``dpm2m_cfg``) time one classifier-free guided step
(Ho & Salimans 2022; guidance scale ``CFG_SCALE``): diffusers' step after the combination
``uncond + s (cond - uncond)`` in torch (the baseline, as a pipeline runs it), and per backend pydiff's plain
fused step on one output (``plain``: what a guided step should cost), the torch combination followed by the
fused step (``combine``) and the fused guided step (``cfg``: ``step(..., model_output_uncond=, guidance_scale=)``,
both outputs read once in the kernel).

On CUDA calls run back to back in batches with one synchronisation each; on CPU ``time.perf_counter`` around
each call; medians are reported. Every candidate gets the same inputs and options and is checked against
diffusers before it is timed, so a fast wrong kernel cannot post a number.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch

from .ops import available_backends, backend_available, runs_on

SAMPLERS = ("ddim", "ddpm", "dpm2m", "dpm3m", "score_sde_ve", "ddim_cfg", "ddpm_cfg", "dpm2m_cfg")
CFG_SCALE = 7.5  # diffusers' Stable Diffusion pipelines' default guidance_scale
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}


@dataclass
class Row:
    sampler: str
    impl: str
    device: str
    dtype: str
    shape: str
    median_us: float
    speedup_vs_diffusers: float


def _schedulers(sampler: str):
    import diffusers

    from . import diffusers as pd

    if sampler == "ddim":
        # eta > 0 and clipping: the full update, noise included
        cfg, kw = dict(clip_sample=True), dict(eta=1.0)
        return diffusers.DDIMScheduler(**cfg), pd.DDIMScheduler(**cfg), kw
    if sampler == "ddpm":
        cfg = dict(clip_sample=True)
        return diffusers.DDPMScheduler(**cfg), pd.DDPMScheduler(**cfg), {}
    if sampler in ("dpm2m", "dpm3m"):  # DPM-Solver++ multistep, order 2 or 3 (the production default family)
        cfg = dict(solver_order=int(sampler[3]), algorithm_type="dpmsolver++")
        return diffusers.DPMSolverMultistepScheduler(**cfg), pd.DPMSolverMultistepScheduler(**cfg), {}
    if sampler == "score_sde_ve":  # one predictor-corrector step: step_correct then step_pred (M = 1)
        return diffusers.ScoreSdeVeScheduler(), pd.ScoreSdeVeScheduler(), {}
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")


def _setup(sampler, shape, dtype, device):
    """The two schedulers, a sample, a model output and the step's keyword arguments (DDIM: a fixed
    ``variance_noise``), the same for every candidate."""
    ref, ours, kw = _schedulers(sampler)
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    m = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    if sampler == "ddim":
        kw = dict(kw, variance_noise=torch.randn(shape, generator=gen).to(device=device, dtype=dtype))
    return ref, ours, x, m, kw


def step_callables(sampler: str, shape, dtype: torch.dtype, device, backends=None, steps: int = 50,
                   peer: bool = True):
    """``{name: callable}`` for diffusers' step, pydiff's drop-in step on each backend and (``peer``, DDIM and
    DDPM) the ``torch.compile``d plain-torch update.

    The noise comes from a fixed ``variance_noise`` (DDIM) or a freshly seeded generator (DDPM), so every
    candidate does the same arithmetic.
    """
    device = torch.device(device)
    if sampler.endswith("_cfg"):
        return cfg_step_callables(sampler, shape, dtype, device, backends, steps)
    multistep = sampler.startswith("dpm")
    if multistep:
        steps = 20
    ref, ours, x, m, kw = _setup(sampler, shape, dtype, device)
    k = steps // 2

    pc = sampler == "score_sde_ve"

    def prepare(s):
        s.set_timesteps(steps, device=device)
        if pc:
            s.set_sigmas(steps)
        if multistep:  # run to the middle of the schedule so the history holds solver_order outputs
            for i in range(k):
                s.step(m, s.timesteps[i], x)

    def make(s):
        if multistep:
            def call():
                s._step_index = k  # replay the same mid-schedule step (the arithmetic is the same every time)
                return s.step(m, s.timesteps[k], x).prev_sample
            return call
        if pc:
            def call():
                return _pc_step(s, m, t, x, torch.Generator(device="cpu").manual_seed(1))
            return call

        def call():
            extra = {} if sampler == "ddim" else {"generator": torch.Generator(device="cpu").manual_seed(1)}
            return s.step(m, t, x, **kw, **extra).prev_sample
        return call

    prepare(ref)
    t = ref.timesteps[k]

    if backends is None:
        backends = [b for b in available_backends() if _runs_on(b, device, dtype)]
    out = {"diffusers": make(ref)}
    expect = out["diffusers"]().double()
    for b in backends:
        s = type(ours).from_config(ours.config)
        s.pydiff_backend = b
        prepare(s)
        fn = make(s)
        _check_agrees(f"pydiff {sampler} on backend {b}", fn(), expect, dtype)
        out[f"pydiff-{b}"] = fn
    if pc:
        out.update(_philox_pc_steps(ours, prepare, make, backends, dtype))
    fn = compiled_peer(sampler, ref, t, shape, dtype, device, kw) if peer else None
    if fn is not None:
        z = kw["variance_noise"] if sampler == "ddim" else torch.randn(
            shape, generator=torch.Generator(device="cpu").manual_seed(1)).to(device=device, dtype=dtype)
        try:
            first = fn(x, m, z)[0]
        except Exception as exc:  # torch.compile needs a working compiler toolchain; the peer is optional
            print(f"pydiff bench: torch-compile peer of {sampler} skipped ({type(exc).__name__}: "
                  f"{str(exc).splitlines()[0] if str(exc) else ''})", flush=True)
        else:
            _check_agrees(f"the compiled {sampler} peer", first, expect, dtype)
            out["torch-compile"] = lambda: fn(x, m, z)[0]
    return out


def cfg_step_callables(sampler: str, shape, dtype: torch.dtype, device, backends=None, steps: int = 50):
    """``{name: callable}`` for one classifier-free guided step of ``sampler`` (``<base>_cfg``) mid-schedule:
    ``diffusers`` (torch combination, then diffusers' step), and per backend ``pydiff-<b> plain`` (the fused step
    on one output, no guidance), ``pydiff-<b> combine`` (torch combination, then the fused step) and
    ``pydiff-<b> cfg`` (the fused guided step). Each is checked against diffusers on the same inputs first."""
    base = sampler[: -len("_cfg")]
    multistep = base.startswith("dpm")
    if multistep:
        steps = 20
    ref, ours, x, m, kw = _setup(base, shape, dtype, device)
    m_u = torch.randn(shape, generator=torch.Generator(device="cpu").manual_seed(2)).to(device=device, dtype=dtype)
    k = steps // 2
    g = CFG_SCALE

    def prepare(s):
        s.set_timesteps(steps, device=device)
        if multistep:  # the history of a mid-schedule step (its values do not change the arithmetic's cost)
            for i in range(k):
                s.step(m, s.timesteps[i], x)

    def make(s, how):
        def extra():
            return {"generator": torch.Generator(device="cpu").manual_seed(1)} if base == "ddpm" else {}

        def call():
            if multistep:
                s._step_index = k  # replay the same mid-schedule step
            if how == "cfg":
                out = s.step(m, t, x, **kw, **extra(), model_output_uncond=m_u, guidance_scale=g)
            elif how == "combine":
                out = s.step(m_u + g * (m - m_u), t, x, **kw, **extra())
            else:
                out = s.step(m, t, x, **kw, **extra())
            return out.prev_sample
        return call

    prepare(ref)
    t = ref.timesteps[k]
    # the expectations from fresh schedulers in the same state (a multistep step changes the history)
    expect_plain = make(_fresh(ref, prepare), "plain")().double()
    out = {"diffusers": make(ref, "combine")}
    expect = out["diffusers"]().double()
    if backends is None:
        backends = [b for b in available_backends() if _runs_on(b, device, dtype)]
    for b in backends:
        for how in ("plain", "combine", "cfg"):
            s = type(ours).from_config(ours.config)
            s.pydiff_backend = b
            prepare(s)
            fn = make(s, how)
            _check_agrees(f"pydiff {sampler} ({how}) on backend {b}", fn(), expect_plain if how == "plain" else expect,
                          dtype)
            out[f"pydiff-{b} {how}"] = fn
    return out


def _fresh(sched, prepare):
    s = type(sched).from_config(sched.config)
    prepare(s)
    return s


def whole_run_callables(sampler: str, shape, dtype: torch.dtype, device, backends=None, steps: int = 20):
    """``{name: callable}``: ``set_timesteps(steps)`` and every ``step`` of one run, with a fixed model output
    (the model's cost is not the scheduler's), for diffusers and pydiff's drop-in on each backend."""
    device = torch.device(device)
    ref, ours, x0, m, kw = _setup(sampler, shape, dtype, device)

    def make(s):
        def call():
            s.set_timesteps(steps, device=device)
            x = x0
            if sampler == "score_sde_ve":
                s.set_sigmas(steps)
                gen = torch.Generator(device="cpu").manual_seed(1)
                for t in s.timesteps:
                    x = _pc_step(s, m, t, x, gen)
                return x
            extra = {} if sampler != "ddpm" else {"generator": torch.Generator(device="cpu").manual_seed(1)}
            for t in s.timesteps:
                x = s.step(m, t, x, **kw, **extra).prev_sample
            return x
        return call

    out = {"diffusers": make(ref)}
    expect = out["diffusers"]().double()
    if backends is None:
        backends = [b for b in available_backends() if _runs_on(b, device, dtype)]
    for b in backends:
        s = type(ours).from_config(ours.config)
        s.pydiff_backend = b
        fn = make(s)
        _check_agrees(f"pydiff {sampler} whole run on backend {b}", fn(), expect, dtype)
        out[f"pydiff-{b}"] = fn
    return out


def _pc_step(s, m, t, x, generator):
    """One predictor-corrector step as diffusers' ScoreSdeVePipeline drives the scheduler (one corrector step)."""
    x = s.step_correct(m, x, generator=generator).prev_sample
    return s.step_pred(m, t, x, generator=generator).prev_sample


def _philox_pc_steps(ours, prepare, make, backends, dtype):
    """The score-SDE step pair with in-kernel Philox noise (``pydiff_noise = "philox"``) per backend, each
    checked against the reference backend's Philox step (the same noise stream, so the same result)."""
    out, expect = {}, None
    for b in ["reference"] + [b for b in backends if b != "reference"]:
        s = type(ours).from_config(ours.config)
        s.pydiff_backend, s.pydiff_noise = b, "philox"
        prepare(s)
        fn = make(s)
        if expect is None:
            expect = fn().double()
        else:
            _check_agrees(f"pydiff philox step pair on backend {b} (against the reference backend)", fn(), expect,
                          dtype)
        if b in backends:
            out[f"pydiff-{b} philox"] = fn
    return out


def ode_callables(shape, dtype: torch.dtype, device, backends=None, tol: float = 1e-5):
    """``{name: callable}`` for score_sde's probability-flow ODE sampler on a VE SDE (N = 1000) with the exact
    score of Gaussian data: the reference's ``solver='scipy'`` (``solve_ivp`` RK45 on the host, the baseline
    of the table) and pydiff's device-resident ``solver='rk45'`` per backend, at ``rtol = atol = tol``. The
    labels carry the number of model evaluations; every rk45 result is checked against scipy's first."""
    from .score_sde import sampling, sde_lib
    from .testing import score_sde as oracle

    device = torch.device(device)
    sde = sde_lib.VESDE(N=1000)
    model = oracle.gaussian_model(oracle.OracleSDE("ve", N=1000), True, mu=0.3, s=0.8, wiggle=0.0)
    z = sde.prior_sampling(shape).to(device=device, dtype=dtype)

    def make(solver, backend=None):
        fn = sampling.get_ode_sampler(sde, shape, lambda x: x, rtol=tol, atol=tol, device=device, solver=solver,
                                      **({} if backend is None else {"backend": backend}))
        return lambda: fn(model, z=z)

    ref = make("scipy")
    x_ref, nfe_ref = ref()
    out = {f"scipy nfe={nfe_ref}": lambda: ref()[0]}
    if backends is None:
        backends = [b for b in available_backends() if _runs_on(b, device, dtype)]
    for b in backends:
        fn = make("rk45", b)
        x, nfe = fn()
        _check_agrees(f"rk45 ODE sampler on backend {b} (against scipy)", x, x_ref, dtype)
        out[f"pydiff-{b} rk45 nfe={nfe}"] = (lambda f: lambda: f()[0])(fn)
    return out


def _check_agrees(what, got, expect, dtype):
    """A candidate is timed only if it gives diffusers' result (relative L2; 1e-4 in fp32/fp64, 2e-2 in half)."""
    got, expect = got.double(), expect.double()
    err = ((got - expect).norm() / expect.norm()).item()
    if not err < (1e-4 if dtype in (torch.float32, torch.float64) else 2e-2):
        raise RuntimeError(f"{what} disagrees with diffusers (rel L2 {err:.2e})")


def _runs_on(backend, device, dtype):
    return runs_on(backend, torch.device(device).type, dtype)


def compiled_peer(sampler: str, sched, timestep, shape, dtype, device, kw):
    """The step as a plain-torch function compiled with ``torch.compile`` (DDIM and DDPM), or None.

    The same scalars as diffusers' step at ``timestep`` (eta, clipping, noise given as a tensor), written as
    the textbook update: ``x0 = clamp((x - sqrt(1-a_t) eps)/sqrt(a_t))``, then DDIM's
    ``sqrt(a_prev) x0 + sqrt(1-a_prev-std^2) eps + std z`` or DDPM's posterior mean plus ``std z``. It returns
    ``(prev_sample, x0)``, the two tensors pydiff's fused step writes.
    """
    if sampler not in ("ddim", "ddpm"):
        return None
    t = int(timestep)
    ac = sched.alphas_cumprod.double()
    if sampler == "ddim":
        prev = t - sched.config.num_train_timesteps // sched.num_inference_steps
        a_prev = float(ac[prev]) if prev >= 0 else float(sched.final_alpha_cumprod)
    else:
        prev = int(sched.previous_timestep(t))
        a_prev = float(ac[prev]) if prev >= 0 else 1.0
    a_t = float(ac[t])
    sa, sb = a_t ** 0.5, (1 - a_t) ** 0.5
    clip = float(sched.config.clip_sample_range) if sched.config.clip_sample else float("inf")
    if sampler == "ddim":
        eta = float(kw.get("eta", 0.0))
        std = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
        c_x0, c_eps, c_x = a_prev ** 0.5, (1 - a_prev - std ** 2) ** 0.5, 0.0
    else:
        beta = 1 - a_t / a_prev
        std = ((1 - a_prev) / (1 - a_t) * beta) ** 0.5
        c_x0, c_eps, c_x = a_prev ** 0.5 * beta / (1 - a_t), 0.0, (a_t / a_prev) ** 0.5 * (1 - a_prev) / (1 - a_t)

    def update(x, eps, z):
        x0 = ((x - sb * eps) / sa).clamp(-clip, clip)
        return c_x0 * x0 + c_eps * eps + c_x * x + std * z, x0

    return torch.compile(update, fullgraph=True, dynamic=False)


def time_callable(fn, device, min_time: float = 0.3, min_reps: int = 20, warmup: int = 5) -> float:
    """Median wall time of one call, in microseconds.

    CPU: each call timed alone. CUDA: calls run back to back in batches (as a sampling loop issues them),
    with one synchronisation per batch of >= ~2 ms, so that neither the sync's own cost nor an idle GPU
    between calls is counted; the figure is the batch time over the batch size (host overhead included
    whenever it exceeds the kernel time — that is the eager cost a loop pays).
    """
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    if not cuda:
        samples = []
        start = time.perf_counter()
        while len(samples) < min_reps or time.perf_counter() - start < min_time:
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
            if len(samples) >= 10000:
                break
        return statistics.median(samples) * 1e6
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    inner = max(1, min(1000, int(2e-3 / max(time.perf_counter() - t0, 1e-7))))
    samples = []
    start = time.perf_counter()
    while len(samples) < min_reps or time.perf_counter() - start < min_time:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        torch.cuda.synchronize()
        samples.append((time.perf_counter() - t0) / inner)
        if len(samples) >= 2000:
            break
    return statistics.median(samples) * 1e6


def _check_device(device):
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA device is available here")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    return str(dev)


def run(samplers=SAMPLERS, shape=(1, 4, 64, 64), dtype="fp32", device=None, backends=None, min_time=0.3,
        peer=True, whole_run_steps=None):
    """Benchmark every sampler; returns a list of ``Row``: one step each (``sampler``), and with
    ``whole_run_steps`` also a whole run of that many steps (``sampler`` suffixed ``/run``)."""
    device = _check_device(device)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    if backends is not None:
        for b in backends:
            if not backend_available(b):
                raise ValueError(f"backend {b!r} is not available here; available: {available_backends()}")
    tdtype = DTYPES[dtype]
    rows = []
    jobs = [(s, step_callables(s, shape, tdtype, device, backends, peer=peer)) for s in samplers]
    if whole_run_steps:  # (the guided samplers: one step only; a guided run is that step times the steps)
        jobs += [(f"{s}/run{whole_run_steps}", whole_run_callables(s, shape, tdtype, device, backends,
                                                                     whole_run_steps))
                 for s in samplers if not s.endswith("_cfg")]
    if "score_sde_ve" in samplers and tdtype != torch.float16 and tdtype != torch.bfloat16:
        # the probability-flow ODE sampler next to the PC step; its baseline is the reference's scipy solver
        jobs.append(("score_sde_ode", ode_callables(shape, tdtype, device, backends)))
    for label, calls in jobs:
        base = None
        for name, fn in calls.items():
            us = time_callable(fn, device, min_time=min_time)
            base = us if (name == "diffusers" or name.startswith("scipy")) else base
            rows.append(Row(label, name, str(device), dtype, "x".join(map(str, shape)), us, base / us))
    return rows


def format_table(rows) -> str:
    w = max([len("sampler")] + [len(r.sampler) for r in rows])  # "score_sde_ve/run20" is the longest label
    wi = max([18] + [len(r.impl) for r in rows])  # "pydiff-triton combine" (the guided rows) is the longest
    head = (f"{'sampler':{w}} {'implementation':{wi}} {'device':7} {'dtype':5} {'shape':14} {'median us':>10} "
            f"{'vs diffusers':>12}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.sampler:{w}} {r.impl:{wi}} {r.device:7} {r.dtype:5} {r.shape:14} {r.median_us:10.1f} "
                     f"{r.speedup_vs_diffusers:11.2f}x")
    return "\n".join(lines)


def rows_as_dicts(rows):
    return [asdict(r) for r in rows]


@dataclass
class BandwidthRow:
    impl: str
    device: str
    dtype: str
    shape: str
    median_us: float
    gb_per_s: float
    fraction_of_copy: float


def bandwidth(shape=(32, 3, 512, 512), dtype="fp32", device=None, backends=None, min_time=0.3):
    """Effective bandwidth of a DDIM-like fused step (reads x, m; writes x', x0) against a device copy.

    The copy (``y.copy_(x)``, 2 tensors moved) is the measured ceiling; the fused step moves 4 tensors. Per
    backend three rows: no noise; in-kernel Philox noise (``seed=``: the same 4 tensors, plus the generator's
    arithmetic, which should hide behind the memory traffic on a GPU); a noise tensor (5 tensors moved).
    """
    from .ops import coef_row, fused_step

    device = torch.device(_check_device(device))
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    tdtype = DTYPES[dtype]
    x = torch.randn(shape, device=device).to(tdtype)
    m = torch.randn(shape, device=device).to(tdtype)
    out, x0 = torch.empty_like(x), torch.empty_like(x)
    coef = torch.tensor(coef_row(P=1.2, Q=-0.3, B0=0.9, D=0.4, CLIP=1.0), device=device)
    nbytes = x.numel() * x.element_size()
    copy_us = time_callable(lambda: out.copy_(x), device, min_time=min_time)
    copy_gbs = 2 * nbytes / copy_us / 1e3
    sh = "x".join(map(str, shape))
    rows = [BandwidthRow("torch copy_", str(device), dtype, sh, copy_us, copy_gbs, 1.0)]
    if backends is None:
        backends = [b for b in available_backends() if _runs_on(b, device, tdtype)]
    noisy = torch.tensor(coef_row(P=1.2, Q=-0.3, B0=0.9, D=0.4, C=0.1, CLIP=1.0), device=device)
    z = torch.randn(shape, device=device).to(tdtype)
    variants = [("", coef, {}, 4), (" philox", noisy, {"seed": 5}, 4), (" noise", noisy, {"noise": z}, 5)]
    for b in backends:
        for tag, c, extra, moved in variants:
            fn = lambda b=b, c=c, extra=extra: fused_step(x, m, c, out=out, w_out=x0, backend=b, **extra)  # noqa: E731
            us = time_callable(fn, device, min_time=min_time)
            gbs = moved * nbytes / us / 1e3
            rows.append(BandwidthRow(f"fused_step-{b}{tag}", str(device), dtype, sh, us, gbs, gbs / copy_gbs))
    return rows


def format_bandwidth(rows) -> str:
    head = f"{'implementation':28} {'device':7} {'dtype':5} {'shape':14} {'median us':>10} {'GB/s':>8} {'of copy':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.impl:28} {r.device:7} {r.dtype:5} {r.shape:14} {r.median_us:10.1f} {r.gb_per_s:8.1f} "
                     f"{100 * r.fraction_of_copy:7.1f}%")
    return "\n".join(lines)
