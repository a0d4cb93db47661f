"""Config, heads, EMA, schedules, optimizers and checkpoints."""

import os

import pytest
import torch
import torch.nn as nn

from selfsup.config import ConfigError, apply_overrides, load_recipe
from selfsup.nets import EMA, MemoryBank, build_backbone, cosine_momentum, feature_dim, mlp, parse_spec
from selfsup.train.checkpoint import CheckpointError, load, save_atomic
from selfsup.train.optim import LARS, build_optimizer, set_lr_wd
from selfsup.train.schedules import cosine, scaled_lr, warmup_cosine


# ---- config ------------------------------------------------------------------------------------------
def test_overrides_are_typed_and_nested():
    r = load_recipe("simclr_digits", ["optim.lr=0.5", "train.epochs=7", "method.temperature=0.3",
                                      "views.params.scale=[0.2, 1.0]", "data.path=null"])
    assert r.optim.lr == 0.5 and r.train.epochs == 7 and r.method.temperature == 0.3
    assert r.views.params["scale"] == [0.2, 1.0] and r.data.path is None


def test_override_switches_method_and_checks_its_keys():
    r = load_recipe("simclr_digits", ["method={name: byol}"])
    assert r.method.name == "byol" and r.method.tau_base == 0.996
    with pytest.raises(ConfigError, match="method.temperature"):
        load_recipe("byol_digits", ["method.temperature=0.1"])  # BYOL has no temperature


def test_override_strings_are_never_evaluated():
    with pytest.raises(ConfigError, match="optim.lr"):
        load_recipe("simclr_digits", ["optim.lr=__import__('os').getcwd()"])
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, ["no_equals_sign"])


def test_yaml_is_parsed_safely(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("method: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(str(p))


# ---- heads and backbones -------------------------------------------------------------------------------
def test_mlp_from_spec():
    assert parse_spec("2048-2048-256") == [2048, 2048, 256]
    head = mlp(32, "64-64-16", last_norm=True)
    linears = [m for m in head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 64), (64, 64), (64, 16)]
    assert isinstance(head[-1], nn.BatchNorm1d) and not head[-1].affine
    assert head(torch.randn(5, 32)).shape == (5, 16)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in mlp(8, "16-4", norm="none"))
    with pytest.raises(ValueError, match="2048-2048-256"):
        parse_spec("2048-x")


def test_backbones_and_feature_dim():
    for name, d in [("small_cnn", 256), ("resnet18", 512), ("resnet50", 2048)]:
        net = build_backbone(name, in_channels=1, image_size=32)
        assert feature_dim(net, 1, 32) == d
    net = build_backbone("resnet18", 3, 32)
    assert net.conv1.kernel_size == (3, 3) and isinstance(net.maxpool, nn.Identity)  # small-image stem
    assert build_backbone("resnet18", 3, 224).conv1.kernel_size == (7, 7)
    custom = nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert feature_dim(custom, 3, 16) == 5  # any module mapping images to vectors
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg", 3, 32)


# ---- EMA -------------------------------------------------------------------------------------------------
def test_ema_update_and_cosine_momentum():
    assert cosine_momentum(0.996, 0.0) == pytest.approx(0.996)
    assert cosine_momentum(0.996, 1.0) == pytest.approx(1.0)
    assert cosine_momentum(0.996, 0.5) == pytest.approx(0.998)
    student = nn.Linear(3, 2)
    teacher = EMA(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    before = teacher.module.weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    teacher.update(student, tau=0.9)
    torch.testing.assert_close(teacher.module.weight, 0.9 * before + 0.1 * student.weight)
    teacher.update(student, tau=1.0)  # tau = 1 freezes the teacher
    torch.testing.assert_close(teacher.module.weight, 0.9 * before + 0.1 * student.weight)


# ---- memory bank ------------------------------------------------------------------------------------------
def test_memory_bank_fifo_and_state_dict():
    bank = MemoryBank(5, 2, with_labels=True)
    bank.enqueue(torch.ones(3, 2), torch.arange(3))
    assert bank.get().shape == (3, 2) and not bank.full
    bank.enqueue(2 * torch.ones(3, 2), torch.arange(3, 6))
    assert bank.full and int(bank.ptr) == 1
    assert sorted(bank.get_labels().tolist()) == [1, 2, 3, 4, 5]  # label 0 (oldest) was overwritten
    copy = MemoryBank(5, 2, with_labels=True)
    copy.load_state_dict(bank.state_dict())
    assert torch.equal(copy.get(), bank.get()) and int(copy.ptr) == 1 and copy.full


# ---- schedules and optimizers -------------------------------------------------------------------------------
def test_schedules():
    assert warmup_cosine(1.0, 0.0, 0.1) == 0.0
    assert warmup_cosine(1.0, 0.05, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(1.0, 0.1, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(1.0, 0.55, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(1.0, 1.0, 0.1, final=0.1) == pytest.approx(0.1)
    assert cosine(0.04, 0.4, 0.5) == pytest.approx(0.22)
    assert scaled_lr(0.3, 512) == pytest.approx(0.6)
    assert scaled_lr(0.075, 4096, "sqrt") == pytest.approx(0.075 * 64)
    assert scaled_lr(1e-4, 2048, "linear", 512) == pytest.approx(4e-4)  # SimMIM's B/512
    assert scaled_lr(0.004, 4096, "sqrt", 1024) == pytest.approx(0.008)  # DINOv2's sqrt_wrt_1024


def ref_lars_step(w, g, mu, lr, wd, eta, m):
    g = g + wd * w
    trust = eta * w.norm() / g.norm()
    mu = m * mu + trust * g
    return w - lr * mu, mu


def test_lars_matches_equation():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    w0 = lin.weight.detach().clone()
    opt = build_optimizer([{"params": [lin.weight]}, {"params": [lin.bias], "no_decay": True}], "lars",
                          lr=0.5, weight_decay=0.1, momentum=0.9, eta=0.02)
    assert isinstance(opt, LARS)
    mu = torch.zeros_like(w0)
    w = w0
    for _ in range(2):
        opt.zero_grad()
        lin(torch.randn(8, 4)).pow(2).sum().backward()
        g = lin.weight.grad.clone()
        opt.step()
        w, mu = ref_lars_step(w, g, mu, 0.5, 0.1, 0.02, 0.9)
        torch.testing.assert_close(lin.weight.detach(), w)


def _norm_and_bias_names(module: nn.Module) -> set[str]:
    """Names of every bias and every normalisation-layer parameter of ``module``."""
    norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    out = {n for n, _ in module.named_parameters() if n.split(".")[-1] == "bias"}
    for mod_name, mod in module.named_modules():
        if isinstance(mod, norms):
            out |= {f"{mod_name}.{n}" for n, _ in mod.named_parameters(recurse=False)}
    return out


@pytest.mark.parametrize("opt_name", ["sgd", "adamw", "lars"])
def test_biases_and_norms_get_no_weight_decay_and_no_lars_trust_ratio(opt_name):
    from selfsup.train.loop import build_method

    torch.manual_seed(0)
    method = build_method(load_recipe("simclr_digits", ["model.width=4"]), 1, 16)  # the default Method.param_groups
    name_of = {id(p): n for n, p in method.named_parameters()}
    groups = method.param_groups()
    no_decay = {name_of[id(p)] for g in groups if g.get("no_decay") for p in g["params"]}
    decay = {name_of[id(p)] for g in groups if not g.get("no_decay") for p in g["params"]}
    assert no_decay == _norm_and_bias_names(method) and decay == set(name_of.values()) - no_decay
    assert decay and all(dict(method.named_parameters())[n].ndim > 1 for n in decay)  # conv/linear weights
    with torch.no_grad():  # non-zero values everywhere (BN biases start at 0, where LARS' ratio is 1 anyway)
        for p in method.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    params = dict(method.named_parameters())
    lr, wd, eta = 0.5, 0.1, 0.02
    opt = build_optimizer(groups, opt_name, lr=lr, weight_decay=wd, momentum=0.9, eta=eta)
    set_lr_wd(opt, lr, wd, peak_lr=lr)  # as the trainer does every step

    # 1) a step with zero gradient: decay alone moves the parameters
    before = {n: p.detach().clone() for n, p in params.items()}
    for p in params.values():
        p.grad = torch.zeros_like(p)
    opt.step()
    # SGD: w - lr * wd * w; AdamW (decoupled): w * (1 - lr * wd); LARS: the decayed gradient wd * w is
    # rescaled by eta * |w| / |wd * w| = eta / wd, so w * (1 - lr * eta)
    shrink = 1 - lr * (eta if opt_name == "lars" else wd)
    for n in decay:
        torch.testing.assert_close(params[n].detach(), before[n] * shrink, msg=f"{n} not decayed")
    for n in no_decay:
        assert torch.equal(params[n].detach(), before[n]), f"{n} was decayed"

    # 2) LARS with a real gradient: no_decay params take a plain momentum-SGD step (no trust ratio),
    #    decayed ones are rescaled by eta * |w| / |g + wd * w|
    if opt_name == "lars":
        opt = build_optimizer(groups, "lars", lr=lr, weight_decay=wd, momentum=0.9, eta=eta)
        before = {n: p.detach().clone() for n, p in params.items()}
        grads = {n: torch.randn_like(p) for n, p in params.items()}
        for n, p in params.items():
            p.grad = grads[n].clone()
        opt.step()
        for n in no_decay:
            torch.testing.assert_close(params[n].detach(), before[n] - lr * grads[n], msg=f"{n}: trust ratio applied")
        for n in decay:
            g = grads[n] + wd * before[n]
            trust = eta * before[n].norm() / g.norm()
            torch.testing.assert_close(params[n].detach(), before[n] - lr * trust * g, msg=f"{n}: no trust ratio")


def test_set_lr_wd_honours_group_flags():
    p1, p2, p3 = (nn.Parameter(torch.zeros(2, 2)) for _ in range(3))
    opt = build_optimizer([{"params": [p1]}, {"params": [p2], "no_decay": True, "lr_scale": 0.1},
                           {"params": [p3], "fixed_lr": True}], "sgd", lr=1.0, weight_decay=0.5)
    set_lr_wd(opt, lr=0.2, weight_decay=0.3, peak_lr=1.0)
    g1, g2, g3 = opt.param_groups
    assert (g1["lr"], g1["weight_decay"]) == (0.2, 0.3)
    assert g2["lr"] == pytest.approx(0.02) and g2["weight_decay"] == 0.0
    assert g3["lr"] == 1.0


# ---- checkpoints --------------------------------------------------------------------------------------------
def test_checkpoint_atomic_and_safe(tmp_path):
    path = tmp_path / "ck.pt"
    save_atomic({"w": torch.ones(3), "epoch": 2}, path)
    assert load(path)["epoch"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temp file left behind

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_atomic({"w": Boom()}, path)
    assert load(path)["epoch"] == 2  # the old checkpoint survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]

    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="unreadable"):
        load(tmp_path / "evil.pt")  # weights_only refuses arbitrary objects
