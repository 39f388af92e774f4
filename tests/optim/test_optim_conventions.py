"""RBD, FPD and NES follow torch.optim's conventions: settings per param group,
add_param_group honoured, state_dicts that refuse other bases, no host sync in step().

References are dense matrices built here from the engine's seeds (``dense_phi``) or
separate one-group optimisers, never the multi-group optimiser's own output.
"""

import copy
import math
import pickle
from collections import Counter

import pytest
import torch
from torch import nn

from rbd.optim import FPD, NES, RBD, module_loss
from tests.helpers import batch, dense_phi, flat_params, loss_of, small_model


def layers(model):
    """The two linear layers' parameters: two natural param groups."""
    return list(model[0].parameters()), list(model[2].parameters())


def flat(tensors):
    return torch.cat([t.detach().reshape(-1) for t in tensors]).double()


def backward(model, opts, x, y):
    for opt in opts:
        opt.zero_grad()
    loss_of(model, x, y).backward()


# --- per-group settings ----------------------------------------------------------------

GROUP_SETTINGS = [
    dict(lr=0.3, dim=3, seed=5, compartments="layer"),
    dict(lr=0.1, dim=7, seed=9, distribution="rademacher", normalize=False),
]


@pytest.mark.parametrize("cls", [RBD, FPD])
def test_two_groups_step_as_two_separate_optimisers(cls):
    joint_model, split_model = small_model(), small_model()
    joint = cls(
        [{"params": p, **s} for p, s in zip(layers(joint_model), GROUP_SETTINGS, strict=True)],
        lr=0.5,
        dim=4,
        seed=1,
    )
    separate = [cls(p, **s) for p, s in zip(layers(split_model), GROUP_SETTINGS, strict=True)]
    for t in range(3):
        x, y = batch(seed=t)
        backward(joint_model, [joint], x, y)
        joint.step()
        backward(split_model, separate, x, y)
        for opt in separate:
            opt.step()
    assert (flat_params(joint_model) - flat_params(split_model)).abs().max() <= 1e-7
    assert not torch.equal(flat_params(joint_model), flat_params(small_model()))
    assert [c.dim for c in joint.compartments] == [3, 3, 7]


def test_per_group_settings_against_dense_bases():
    """Each group's update from its own seed, dim, distribution, normalize and lr."""
    model = small_model()
    first, second = layers(model)
    opt = RBD(
        [{"params": first, **GROUP_SETTINGS[0]}, {"params": second, **GROUP_SETTINGS[1]}],
        lr=0.5,
        dim=4,
        seed=1,
    )
    x, y = batch()
    backward(model, [opt], x, y)
    want = []
    # First group: one compartment per tensor (index k), seed 5, d = 3, normalised.
    for k, p in enumerate(first):
        phi = dense_phi(5, 0, k, 3, p.numel()) / math.sqrt(p.numel())
        g = p.grad.reshape(-1).double()
        want.append(flat([p]) - 0.3 * phi.t() @ (phi @ g))
    # Second group: its own seed 9 starts its compartment indices at 0.
    n = sum(p.numel() for p in second)
    phi = dense_phi(9, 0, 0, 7, n, "rademacher")
    g = flat([p.grad for p in second])
    want.append(flat(second) - 0.1 * phi.t() @ (phi @ g) / 7)
    opt.step()
    torch.testing.assert_close(flat_params(model).double(), torch.cat(want), rtol=0, atol=1e-6)


def dense_nes(model, groups, x, y, population):
    """NES step of ``model`` whose parameters form ``groups`` = [(seed, index, sigma, lr)]
    in parameter order: offspring i perturbs group j by sigma_j eps_ij, eps_ij from
    (seed_j, 0, index_j, 0, i); every group moves by lr_j / (sigma_j n) sum_i r_i eps_ij."""
    sizes = [sum(p.numel() for p in part) for part in layers(model)]
    theta = flat_params(model).double()
    eps = [dense_phi(seed, 0, index, population, n) for (seed, index, _, _), n in
           zip(groups, sizes, strict=True)]  # fmt: skip
    reference = copy.deepcopy(model)
    fitness = []
    for i in range(population):
        step = torch.cat([s * e[i] for (_, _, s, _), e in zip(groups, eps, strict=True)])
        with torch.no_grad():
            nn.utils.vector_to_parameters((theta + step).float(), reference.parameters())
            fitness.append(float(loss_of(reference, x, y)))
    order = sorted(range(population), key=fitness.__getitem__)
    weights = torch.empty(population, dtype=torch.float64)
    for rank, i in enumerate(order):
        weights[i] = rank / (population - 1) - 0.5
    moves = [
        lr / (sigma * population) * (weights[:, None] * e).sum(0)
        for (_, _, sigma, lr), e in zip(groups, eps, strict=True)
    ]
    return theta - torch.cat(moves)


def test_nes_per_group_seed_sigma_and_lr_against_dense_computation():
    model = small_model()
    first, second = layers(model)
    x, y = batch()
    want = dense_nes(model, [(4, 0, 0.05, 0.2), (6, 0, 0.1, 0.05)], x, y, 5)
    opt = NES(
        [{"params": first}, {"params": second, "seed": 6, "sigma": 0.1, "lr": 0.05}],
        lr=0.2,
        dim=5,
        seed=4,
        sigma=0.05,
    )
    opt.step(lambda: loss_of(model, x, y))
    torch.testing.assert_close(flat_params(model).double(), want, rtol=0, atol=1e-6)


# --- add_param_group -------------------------------------------------------------------


@pytest.mark.parametrize("cls", [RBD, FPD])
def test_added_group_is_trained_by_the_next_step(cls):
    model = small_model()
    first, second = layers(model)
    opt = cls(first, lr=0.3, dim=4, seed=2)
    x, y = batch()
    backward(model, [opt], x, y)
    opt.step()
    opt.add_param_group({"params": second, "dim": 6, "lr": 0.2})
    backward(model, [opt], x, y)
    # Same seed as group 0, whose one compartment is index 0: index 1, the group's step 0.
    n = sum(p.numel() for p in second)
    phi = dense_phi(2, 0, 1, 6, n) / math.sqrt(n)
    coords = phi @ flat([p.grad for p in second])
    want = flat(second) - 0.2 * phi.t() @ coords
    opt.step()
    torch.testing.assert_close(flat(second), want, rtol=0, atol=1e-6)
    assert opt.param_groups[1]["step"] == 1 and opt.param_groups[0]["step"] == 2
    if cls is FPD:
        torch.testing.assert_close(
            opt.subspace_coordinates[1].double(), -0.2 * coords, rtol=0, atol=1e-6
        )


def test_added_nes_group_is_trained_by_the_next_step():
    model = small_model()
    first, second = layers(model)
    x, y = batch()
    want = dense_nes(model, [(3, 0, 0.05, 0.2), (3, 1, 0.1, 0.2)], x, y, 4)
    opt = NES(first, lr=0.2, dim=4, seed=3, sigma=0.05)
    opt.add_param_group({"params": second, "sigma": 0.1})
    opt.step(lambda: loss_of(model, x, y))
    torch.testing.assert_close(flat_params(model).double(), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "cls, setting, name",
    [
        (RBD, {"dim": 0}, "dim"),
        (RBD, {"seed": -1}, "seed"),
        (RBD, {"distribution": "cauchy"}, "distribution"),
        (RBD, {"compartments": "blocks"}, "compartments"),
        (RBD, {"compartment_scale": "layer"}, "compartment_scale"),
        (RBD, {"lr": -1.0}, "lr"),
        (FPD, {"even_dims": True, "compartments": "chunk:x"}, "compartments"),
        (NES, {"sigma": 0.0}, "sigma"),
        (NES, {"dim": 4}, "dim"),
        (NES, {"compartments": "layer"}, "compartments"),
    ],
)
def test_an_invalid_group_names_its_setting_and_is_not_added(cls, setting, name):
    model = small_model()
    first, second = layers(model)
    opt = cls(first, lr=0.1, dim=6)
    with pytest.raises(ValueError, match=rf"Invalid {name}:"):
        opt.add_param_group({"params": second, **setting})
    assert len(opt.param_groups) == 1
    with pytest.raises(ValueError, match=rf"Invalid {name}:"):
        cls([{"params": first}, {"params": second, **setting}], lr=0.1, dim=6)


def test_optimiser_attributes_are_validated_naming_them():
    """The worker id and the execution settings are attributes, not group settings."""
    params = small_model().parameters
    with pytest.raises(ValueError, match="Invalid chunk_size:"):
        RBD(params(), chunk_size=0)
    with pytest.raises(ValueError, match="Invalid threads:"):
        FPD(params(), threads=0)
    with pytest.raises(ValueError, match="Invalid worker:"):
        NES(params(), worker=-1)


# --- state_dict ------------------------------------------------------------------------

BASE = dict(lr=0.1, dim=4, seed=3, distribution="gaussian")


def stepped(cls, model, **settings):
    opt = cls(model.parameters(), **(BASE | settings))
    x, y = batch()
    if cls is NES:
        opt.step(lambda: loss_of(model, x, y))
    else:
        backward(model, [opt], x, y)
        opt.step()
    return opt


@pytest.mark.parametrize("cls", [RBD, FPD, NES])
@pytest.mark.parametrize("name, value", [("seed", 8), ("dim", 6), ("distribution", "uniform")])
def test_a_state_dict_from_other_bases_is_refused_naming_the_setting(cls, name, value):
    model = small_model()
    saved = stepped(cls, model).state_dict()
    other = cls(model.parameters(), **(BASE | {name: value}))
    with pytest.raises(ValueError, match=rf"saved with {name}=.*this optimiser has {name}="):
        other.load_state_dict(saved)
    assert other.param_groups[0][name] == value and other.param_groups[0]["step"] == 0
    same = cls(model.parameters(), **BASE)
    same.load_state_dict(saved)
    assert same.param_groups[0]["step"] == 1


@pytest.mark.parametrize("cls", [RBD, FPD])
def test_a_state_dict_with_other_compartments_is_refused(cls):
    model = small_model()
    saved = stepped(cls, model).state_dict()
    with pytest.raises(ValueError, match="compartments="):
        cls(model.parameters(), **BASE, compartments="layer").load_state_dict(saved)


@pytest.mark.parametrize("cls", [RBD, FPD])
def test_a_state_dict_lacking_a_setting_is_refused_naming_it_not_filled_in(cls):
    """A state_dict saved by another version (here: before update_rule and beta2 existed)
    is refused with the missing settings named, never loaded with this optimiser's."""
    model = small_model()
    saved = stepped(cls, model).state_dict()
    for group in saved["param_groups"]:
        del group["update_rule"], group["beta2"]
    opt = cls(model.parameters(), **BASE)
    with pytest.raises(ValueError, match=r"lacks the setting\(s\) \['beta2', 'update_rule'\]"):
        opt.load_state_dict(saved)
    assert opt.param_groups[0]["step"] == 0  # nothing was loaded


# --- no host sync in step() ------------------------------------------------------------

# Tensor methods that read device memory on the host (a sync on a GPU).
HOST_READS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__")
# Profiler op names of the same, including ones ATen calls internally.
SYNC_OPS = {"aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero"}


@pytest.fixture
def host_reads(monkeypatch):
    """Counter of host reads through torch.Tensor while ``counting["on"]``."""
    calls = Counter()
    counting = {"on": False}
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            if counting["on"]:
                calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def during(fn):
        calls.clear()
        counting["on"] = True
        try:
            fn()
        finally:
            counting["on"] = False
        return dict(calls)

    return during


def synced_ops(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {event.name for event in prof.events()} & SYNC_OPS


def rbd_groups(model):
    first, second = layers(model)
    return RBD(
        [{"params": first, "compartments": "layer"}, {"params": second, "seed": 4}],
        lr=0.1,
        dim=5,
        compartment_scale="network",
    )


OPTIMISERS = {
    "rbd": lambda m: RBD(m.parameters(), lr=0.1, dim=5),
    "rbd-groups": rbd_groups,
    "rbd-unnormalised": lambda m: RBD(m.parameters(), lr=0.1, dim=5, normalize=False),
    "fpd": lambda m: FPD(m.parameters(), lr=0.1, dim=5, compartments="layer", offset=True),
    "fpd-cached": lambda m: FPD(m.parameters(), lr=0.1, dim=5, cache=True),
}


def on(device, *tensors):
    return [t.to(device) for t in tensors]


# These take the `device` fixture: on a GPU (benchmarks/gpu_check.py) a host read is a sync.
@pytest.mark.parametrize("name", OPTIMISERS)
def test_step_never_reads_the_device_until_stats_are_read(name, host_reads, device):
    model = small_model().to(device)
    opt = OPTIMISERS[name](model)
    x, y = on(device, *batch())
    model[0].bias.requires_grad_(name != "rbd-groups")  # a parameter without a gradient
    for _ in range(2):
        backward(model, [opt], x, y)
        assert host_reads(opt.step) == {}
    backward(model, [opt], x, y)
    assert synced_ops(opt.step) == set()
    # The detectors see a read: the statistics, on first access, and only then.
    assert host_reads(lambda: dict(opt.stats))
    assert host_reads(lambda: dict(opt.stats)) == {}
    backward(model, [opt], x, y)
    opt.step()
    assert synced_ops(lambda: dict(opt.stats)) >= {"aten::_local_scalar_dense"}
    assert all(isinstance(v, float) for v in opt.stats.values())


def test_forward_mode_step_never_reads_the_device(host_reads, device):
    model = small_model().to(device)
    opt = RBD(model.parameters(), lr=0.1, dim=5, derivatives="forward")
    x, y = on(device, *batch())
    closure = module_loss(model, lambda out: nn.functional.cross_entropy(out, y), x)
    assert host_reads(lambda: opt.step(closure)) == {}
    assert synced_ops(lambda: opt.step(closure)) == set()
    assert math.isnan(opt.stats["grad_corr"]) and math.isfinite(opt.stats["coord_std"])


def test_nes_step_reads_the_device_once(host_reads, device):
    """NES ranks its offspring on the device; the rank weights come to the host once."""
    model = small_model().to(device)
    opt = NES(model.parameters(), lr=0.1, dim=6, antithetic=True)
    x, y = on(device, *batch())
    assert host_reads(lambda: opt.step(lambda: loss_of(model, x, y))) == {"tolist": 1}
    assert synced_ops(lambda: opt.step(lambda: loss_of(model, x, y))) == set()
    assert math.isfinite(opt.stats["loss"])


# --- documentation ---------------------------------------------------------------------


@pytest.mark.parametrize("cls", [RBD, FPD, NES])
def test_class_docstrings_state_the_update_as_maths(cls):
    assert ".. math::" in cls.__doc__ and r"\leftarrow" in cls.__doc__


# --- copies ----------------------------------------------------------------------------

COPIES = {
    "deepcopy": copy.deepcopy,
    "pickle": lambda obj: pickle.loads(pickle.dumps(obj)),
}
COPIED_SETTINGS = {
    RBD: dict(compartments="layer", distribution="rademacher"),
    FPD: dict(offset=True, cache=True),
    NES: dict(antithetic=True),
}


def _same_stats(a, b) -> bool:
    """Equal statistics, NaN (a statistic that does not apply) equal to NaN."""
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a
    )


def _train(model, opt, steps, first_batch):
    """``steps`` steps on batches first_batch, first_batch + 1, ..."""
    for index in range(first_batch, first_batch + steps):
        x, y = batch(index)
        if isinstance(opt, NES):
            opt.step(lambda x=x, y=y: loss_of(model, x, y))
        else:
            backward(model, [opt], x, y)
            opt.step()


@pytest.mark.parametrize("how", COPIES)
@pytest.mark.parametrize("cls", [RBD, FPD, NES])
def test_a_copied_optimiser_steps_exactly_as_the_original(cls, how):
    """Trainers, tuning tools and spawned processes copy or pickle a model with its
    optimiser after some steps; the copy goes on exactly as the original would."""
    model = small_model()
    opt = cls(model.parameters(), **(BASE | COPIED_SETTINGS[cls]))
    _train(model, opt, 3, first_batch=1)
    stats = dict(opt.stats)
    twin_model, twin = COPIES[how]((model, opt))
    assert twin.param_groups[0]["params"][0] is next(twin_model.parameters())
    assert _same_stats(dict(twin.stats), stats)
    _train(model, opt, 3, first_batch=4)
    _train(twin_model, twin, 3, first_batch=4)
    assert torch.equal(flat_params(twin_model), flat_params(model))
    assert _same_stats(dict(twin.stats), dict(opt.stats))


def test_an_argument_the_optimiser_does_not_take_is_refused_not_kept():
    """An unknown keyword (the old name workers= for threads, a typo) is a TypeError naming
    it, not a silent param-group setting."""
    model = torch.nn.Linear(4, 3)
    with pytest.raises(TypeError, match="workers"):
        RBD(model.parameters(), lr=0.1, dim=5, workers=2)
    with pytest.raises(TypeError, match="ofset"):
        FPD(model.parameters(), lr=0.1, dim=5, ofset=True)
