"""The `pydiff` command: the bench runs, checks its candidates against diffusers, writes JSON, and rejects
bad options with a usage error."""
import json

import pytest

from pydiff.cli import main


def test_bench_writes_rows(tmp_path, capsys):
    path = tmp_path / "rows.json"
    assert main(["bench", "--sampler", "ddim", "--sampler", "dpm3m", "--shape", "2x3x8x8", "--min-time", "0.01",
                 "--json", str(path)]) == 0
    rows = json.loads(path.read_text())
    impls = {(r["sampler"], r["impl"]) for r in rows}
    assert ("ddim", "diffusers") in impls and ("dpm3m", "pydiff-reference") in impls
    assert all(r["median_us"] > 0 and r["shape"] == "2x3x8x8" for r in rows)
    assert "vs diffusers" in capsys.readouterr().out


def test_bench_bandwidth(capsys):
    assert main(["bench", "--bandwidth", "--shape", "2x3x8x8", "--min-time", "0.01", "--backend", "reference"]) == 0
    out = capsys.readouterr().out
    assert "torch copy_" in out and "fused_step-reference" in out
    assert "fused_step-reference philox" in out and "fused_step-reference noise" in out


@pytest.mark.parametrize("argv,message", [
    (["bench", "--shape", "1x0x3"], "shape dimensions must be positive"),
    (["bench", "--device", "tpu"], "device must be"),
    (["bench", "--sampler", "euler"], "invalid choice"),
])
def test_bench_rejects_bad_options(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_score_sde_ve_pc_rows(tmp_path):
    """The VE predictor-corrector pair (step_correct + step_pred) is a sampler the bench knows: one step (with
    diffusers' noise and with Philox) and a whole run, diffusers against the drop-in, each checked before it is
    timed; next to it the probability-flow ODE sampler, scipy against the device-resident RK45, NFE in the label."""
    path = tmp_path / "rows.json"
    assert main(["bench", "--sampler", "score_sde_ve", "--shape", "2x3x8x8", "--min-time", "0.01", "--whole-run",
                 "3", "--backend", "reference", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())
    impls = {(r["sampler"], r["impl"]) for r in rows}
    ode = {i for s, i in impls if s == "score_sde_ode"}
    assert impls - {("score_sde_ode", i) for i in ode} == {
        ("score_sde_ve", "diffusers"), ("score_sde_ve", "pydiff-reference"),
        ("score_sde_ve", "pydiff-reference philox"), ("score_sde_ve/run3", "diffusers"),
        ("score_sde_ve/run3", "pydiff-reference")}
    nfe = {i.split()[0]: int(i.rsplit("nfe=", 1)[1]) for i in ode}
    assert set(nfe) == {"scipy", "pydiff-reference"} and nfe["scipy"] > 0
    assert abs(nfe["pydiff-reference"] - nfe["scipy"]) <= 0.5 * nfe["scipy"]  # rk45 within 1.5x of scipy's NFE
    base = [r for r in rows if r["sampler"] == "score_sde_ode" and r["impl"].startswith("scipy")]
    assert base[0]["speedup_vs_diffusers"] == 1.0  # the ODE rows' baseline is scipy
