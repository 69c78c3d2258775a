"""The backend registry is the one answer to device/dtype support, and it always says why a backend is missing."""
import os
import subprocess
import sys

import pytest
import torch

from pydiff.ops import BACKENDS, backend_report, backends as registry, fused_step, coef_row, resolve_backend


def test_report_names_every_backend_with_a_reason():
    report = backend_report()
    assert tuple(report) == BACKENDS
    assert report["reference"] is None
    for name, why in report.items():
        assert why is None or (isinstance(why, str) and why)


def test_runs_on_table():
    assert registry.runs_on("reference", "cpu", torch.float64)
    assert registry.runs_on("cpu", "cpu", torch.float64) and not registry.runs_on("cpu", "cuda")
    assert not registry.runs_on("cuda", "cpu") and not registry.runs_on("cuda", "cuda", torch.float64)
    assert not registry.runs_on("triton", "cuda", torch.float64)
    assert registry.runs_on("triton", "cpu") == (os.environ.get("TRITON_INTERPRET") == "1")


def test_explicit_backend_errors_name_the_cause():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("cuDNN", x)
    with pytest.raises(ValueError, match="cannot run on cpu tensors"):
        resolve_backend("cuda", x)
    if registry.runs_on("triton", "cpu"):
        with pytest.raises(TypeError, match="does not take torch.float64"):
            fused_step(x.double(), x.double(), torch.tensor(coef_row()), backend="triton")


def test_automatic_choice_on_cpu():
    x = torch.zeros(2, 3)
    expect = "cpu" if registry.backend_available("cpu") else "reference"
    assert resolve_backend(None, x) in (expect, os.environ.get("PYDIFF_BACKEND"))


def test_missing_backend_is_reported_not_dropped():
    """With the compiled module hidden, cpu is reported unavailable with a reason and calls fall back visibly."""
    code = (
        "import sys; sys.modules['pydiff._C'] = None\n"
        "from pydiff.ops import backend_report, available_backends\n"
        "r = backend_report(); assert r['cpu'], r; assert 'cpu' not in available_backends()\n"
        "print('ok', r['cpu'])\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYDIFF_BACKEND": ""})
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ok")
