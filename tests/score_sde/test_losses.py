"""The training objectives against a direct float64 computation of the published losses, with the same
draws (torch's generator in the reference's order: t or the labels, then z)."""
import math

import pytest
import torch

from pydiff.score_sde import VESDE, VPSDE, losses, subVPSDE
from pydiff.testing import score_sde as oracle
from sde_cases import toy

N = 40


def batch():
    return torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("reduce_mean", [True, False])
@pytest.mark.parametrize("likelihood_weighting", [True, False])
def test_sde_loss(kind, reduce_mean, likelihood_weighting):
    sde, osde, model = toy(kind, N, True)
    x0 = batch()
    eps = 1e-5
    torch.manual_seed(0)
    loss = losses.get_sde_loss_fn(sde, False, reduce_mean, True, likelihood_weighting, eps)(model, x0)
    torch.manual_seed(0)
    t = (torch.rand(6) * (1 - eps) + eps).double()
    z = torch.randn_like(x0).double()
    m = torch.exp(osde.log_mean(t)) if kind != "ve" else torch.ones_like(t)
    std = osde.std(t)
    xt = oracle.bv(m, x0) * x0.double() + oracle.bv(std, x0) * z
    s = oracle.score_fn(osde, model, xt, t, t.float(), True)
    if likelihood_weighting:
        per = ((s + z / oracle.bv(std, x0)) ** 2).reshape(6, -1)
        w = osde.sde(x0.double(), t)[1] ** 2
    else:
        per = ((s * oracle.bv(std, x0) + z) ** 2).reshape(6, -1)
        w = torch.ones_like(t)
    red = per.mean(1) if reduce_mean else 0.5 * per.sum(1)
    expected = (red * w).mean()
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert abs(loss.item() - expected.item()) < 2e-5 * abs(expected.item())


@pytest.mark.parametrize("reduce_mean", [True, False])
def test_smld_loss(reduce_mean):
    sde, osde, model = toy("ve", N, False)
    x0 = batch()
    torch.manual_seed(0)
    loss = losses.get_smld_loss_fn(sde, False, reduce_mean)(model, x0)
    torch.manual_seed(0)
    labels = torch.randint(0, N, (6,))
    sig = osde.sigmas.flip(0)[labels]  # NCSN: label 0 is sigma_max
    z = torch.randn_like(x0).double()
    xt = x0.double() + oracle.bv(sig, x0) * z
    s = model(xt.float(), labels).double()
    per = ((s + z / oracle.bv(sig, x0)) ** 2).reshape(6, -1)
    red = per.mean(1) if reduce_mean else 0.5 * per.sum(1)
    expected = (red * sig ** 2).mean()
    assert abs(loss.item() - expected.item()) < 2e-5 * abs(expected.item())


@pytest.mark.parametrize("reduce_mean", [True, False])
def test_ddpm_loss(reduce_mean):
    sde, osde, model = toy("vp", N, False)
    x0 = batch()
    torch.manual_seed(0)
    loss = losses.get_ddpm_loss_fn(sde, False, reduce_mean)(model, x0)
    torch.manual_seed(0)
    labels = torch.randint(0, N, (6,))
    ab = osde.abar[labels]
    z = torch.randn_like(x0).double()
    xt = oracle.bv(ab.sqrt(), x0) * x0.double() + oracle.bv((1 - ab).sqrt(), x0) * z
    per = ((model(xt.float(), labels).double() - z) ** 2).reshape(6, -1)
    expected = (per.mean(1) if reduce_mean else 0.5 * per.sum(1)).mean()
    assert abs(loss.item() - expected.item()) < 2e-5 * abs(expected.item())


class Net(torch.nn.Module):
    """A tiny trainable VP noise predictor."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)

    def forward(self, x, labels):
        return self.lin(x) * (1 + labels.float()[:, None, None] / 1000)


class FakeEMA:
    def __init__(self, params):
        self.shadow = [p.detach().clone() * 0 for p in params]
        self.updates = 0

    def update(self, params):
        self.updates += 1

    def store(self, params):
        self.saved = [p.detach().clone() for p in params]

    def copy_to(self, params):
        for p, s in zip(params, self.shadow):
            p.data.copy_(s)

    def restore(self, params):
        for p, s in zip(params, self.saved):
            p.data.copy_(s)


@pytest.mark.parametrize("continuous", [True, False])
def test_step_fn_train_and_eval(continuous):
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    calls = []

    def optimize_fn(optimizer, params, step):
        calls.append(step)
        optimizer.step()

    state = dict(model=net, optimizer=opt, ema=FakeEMA(net.parameters()), step=0)
    x0 = batch()
    before = [p.detach().clone() for p in net.parameters()]
    train = losses.get_step_fn(VPSDE(N=N), True, optimize_fn, reduce_mean=True, continuous=continuous)
    loss = train(state, x0)
    assert loss.requires_grad and state["step"] == 1 and calls == [0] and state["ema"].updates == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))  # the optimizer moved them
    after = [p.detach().clone() for p in net.parameters()]
    ev = losses.get_step_fn(VPSDE(N=N), False, reduce_mean=True, continuous=continuous)
    torch.manual_seed(3)
    eval_loss = ev(state, x0)
    assert not eval_loss.requires_grad
    assert all(torch.equal(a, b) for a, b in zip(after, net.parameters()))  # restored after the EMA weights
    # evaluated under the EMA (zero) weights: the network outputs 0, so the DDPM/DSM loss is E||z||^2-like
    zero = Net()
    for p in zero.parameters():
        p.data.zero_()
    torch.manual_seed(3)
    fn = losses.get_sde_loss_fn(VPSDE(N=N), False, True, True, False) if continuous else \
        losses.get_ddpm_loss_fn(VPSDE(N=N), False, True)
    assert math.isclose(eval_loss.item(), fn(zero, x0).item(), rel_tol=1e-6)


def test_loss_bad_input():
    with pytest.raises(TypeError, match="vesde"):
        losses.get_smld_loss_fn(VPSDE(), True)
    with pytest.raises(TypeError, match="vpsde"):
        losses.get_ddpm_loss_fn(VESDE(), True)
    with pytest.raises(ValueError, match="likelihood_weighting"):
        losses.get_step_fn(VPSDE(), False, continuous=False, likelihood_weighting=True)
    with pytest.raises(ValueError, match="discrete training"):
        losses.get_step_fn(subVPSDE(), False, continuous=False)
    with pytest.raises(ValueError, match="eps"):
        losses.get_sde_loss_fn(VPSDE(), True, eps=0.0)
    with pytest.raises(ValueError, match="optimize_fn"):
        losses.get_step_fn(VPSDE(), True)
