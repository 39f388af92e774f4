"""What the intrinsic-dimension protocol (Li et al. 2018) needs, against references built
another way: Adam and momentum on FPD's coordinates are torch.optim's on c in
theta = theta_0 + Phi^T c; Li et al.'s networks have their D; he_normal draws N(0, 2/fan_in)
truncated at 2 std; the L2 term is Keras's on kernels."""

import math

import pytest
import torch
import torch.nn.functional as F

from rbd.bases import generate_directions, step_seeds
from rbd.optim import FPD, RBD, build_optimizer
from rbd.spec import RunSpec, parse_run_key, run_problems
from rbd.train.models import build_model, count_params
from rbd.train.steps import l2_penalty


def _regression(size=60, n=32):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, size, generator=gen), torch.randn(n, generator=gen)


@pytest.mark.parametrize("distribution", ["gaussian", "fastfood"])
@pytest.mark.parametrize("rule", ["adam", "momentum"])
def test_fpd_update_rules_are_torch_optims_on_the_subspace_coordinates(distribution, rule):
    x, y = _regression()
    w = torch.zeros(x.shape[1], requires_grad=True)
    opt = FPD([w], lr=0.05, dim=7, distribution=distribution, seed=3, update_rule=rule, beta2=0.99)
    phi = opt.directions(opt.compartments[0]).double()  # dense rows, materialised
    c = torch.zeros(7, dtype=torch.float64, requires_grad=True)
    if rule == "adam":
        reference = torch.optim.Adam([c], lr=0.05, betas=(0.9, 0.99), eps=1e-8)
    else:
        reference = torch.optim.SGD([c], lr=0.05, momentum=0.9)
    for _ in range(20):
        opt.zero_grad()
        ((x @ w - y) ** 2).mean().backward()
        opt.step()
        reference.zero_grad()
        ((x.double() @ (phi.t() @ c) - y.double()) ** 2).mean().backward()
        reference.step()
    assert torch.allclose(w.double(), phi.t() @ c, atol=1e-6)
    assert torch.allclose(opt.subspace_coordinates[0].double(), c, atol=1e-6)


def test_rbd_adam_keeps_one_moment_per_direction_index_over_fresh_bases():
    x, y = _regression()
    size = x.shape[1]
    w = torch.zeros(size, requires_grad=True)
    opt = RBD([w], lr=0.01, dim=5, seed=1, update_rule="adam")
    m = torch.zeros(5, dtype=torch.float64)
    v = torch.zeros(5, dtype=torch.float64)
    expected = torch.zeros(size, dtype=torch.float64)
    for t in range(1, 6):
        seeds = step_seeds(1, t - 1, 0, 0, 5)  # step t - 1's fresh directions
        phi = generate_directions(seeds, size, "gaussian").double() / math.sqrt(size)
        opt.zero_grad()
        ((x @ w - y) ** 2).mean().backward()
        c = phi @ w.grad.double()
        m = 0.9 * m + 0.1 * c
        v = 0.999 * v + 0.001 * c * c
        s = (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
        expected -= 0.01 * phi.t() @ s
        opt.step()
        assert torch.allclose(w.double(), expected, atol=1e-6)


def test_sgd_method_with_update_rules_is_torch_optim():
    params = [torch.nn.Parameter(torch.zeros(3))]
    adam = build_optimizer("sgd", params, lr=0.1, dim=1, update_rule="adam", beta2=0.99)
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["betas"] == (0.9, 0.99)
    momentum = build_optimizer("sgd", params, lr=0.1, dim=1, update_rule="momentum")
    assert momentum.defaults["momentum"] == 0.9
    assert build_optimizer("sgd", params, lr=0.1, dim=1).defaults["momentum"] == 0
    with pytest.raises(ValueError, match="update_rule"):
        build_optimizer("sgd", params, lr=0.1, dim=1, update_rule="lbfgs")
    with pytest.raises(ValueError, match="update_rule"):
        FPD(params, update_rule="adagrad")


def test_li_et_al_networks_have_their_parameter_counts():
    # Li et al.: 784-200-200-10 (199,210) and LeNet 6-16-120-84 (44,426), by hand:
    assert count_params(build_model("fc2x200", (1, 28, 28))) == (
        784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10
    )
    lenet = (6 * 25 + 6) + (16 * 6 * 25 + 16) + (256 * 120 + 120) + (120 * 84 + 84) + 850
    assert count_params(build_model("lenet", (1, 28, 28))) == lenet == 44_426


def test_he_normal_is_truncated_normal_with_variance_two_over_fan_in():
    torch.manual_seed(0)
    model = build_model("fc2x200", (1, 28, 28), init="he_normal")
    weight = model[1].weight  # 200 x 784
    std = math.sqrt(2 / 784)
    assert weight.abs().max() <= 2 * std + 1e-7
    # A normal truncated at +-2 std keeps 0.7737 of its variance.
    assert weight.std().item() == pytest.approx(std * math.sqrt(0.7737), rel=0.02)
    assert model[1].bias.abs().max() == 0


def test_l2_penalty_is_keras_l2_on_kernels_only():
    model = build_model("lenet", (1, 28, 28))
    kernels = [m.weight for m in model if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    by_hand = 1e-4 * sum(float((k.double() ** 2).sum()) for k in kernels)
    assert float(l2_penalty(model, 1e-4)) == pytest.approx(by_hand, rel=1e-6)
    with torch.no_grad():
        model[0].bias.fill_(3.0)  # biases are not penalised
    assert float(l2_penalty(model, 1e-4)) == pytest.approx(by_hand, rel=1e-6)
    x = torch.rand(4, 1, 28, 28)
    loss = F.cross_entropy(model(x), torch.zeros(4, dtype=torch.long))
    assert float(loss + l2_penalty(model, 0.0)) == float(loss)


def _spec(**changes):
    values = dict(method="fpd", model="fc2x200", dataset="mnist", dim=750,
                  distribution="fastfood", lr=1e-3, epochs=100, seed=0)  # fmt: skip
    return RunSpec(**(values | changes))


def test_settings_that_cannot_work_are_named():
    assert run_problems(_spec(update_rule="adam", l2=1e-4)) == []
    assert [p for p, _ in run_problems(_spec(method="nes", update_rule="adam"))] == ["update_rule"]
    assert [p for p, _ in run_problems(_spec(method="nes", l2=1e-4))] == ["l2"]
    assert [p for p, _ in run_problems(_spec(l2=-1.0))] == ["l2"]
    assert [p for p, _ in run_problems(_spec(dim=199_211))] == ["dim"]


def test_run_keys_carry_the_new_settings_and_read_back():
    spec = _spec(update_rule="adam", beta2=0.99, l2=1e-4, init="he_normal", batch_size=128)
    assert "rule-adam" in spec.key and "b2-0.99" in spec.key and "l2-0.0001" in spec.key
    assert parse_run_key(spec.key) == spec
    # Defaults stay out of the key: no existing run directory is renamed.
    assert "rule" not in _spec().key and "l2" not in _spec().key
