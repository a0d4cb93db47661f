"""``method.regularizers`` (KoLeo, CO2) on any method: the value added is the regulariser computed by hand, in
float64, on the same live embeddings; the gradient flows through it; weight 0 is bit-identical to the method
alone; exact under 2-process gloo DDP (the global-batch KoLeo) and under exact accumulation; refused where it
cannot be exact; and it does something: alignment alone collapses, alignment + KoLeo does not, and CO2 makes two
views' similarity distributions consistent.

Measured (1 thread, seed 0; ``test_koleo_prevents_collapse``): uniformity of the test embeddings
(Wang & Isola's log E exp(-2 ||z - z'||^2)) -0.22 with alignment alone (collapsed) vs -2.28 with KoLeo 2;
breaking ``regularizer_terms`` to return 0 fails it. ``test_co2_makes_held_out_views_consistent``: CO2 between
two views of the held-out images 0.0024 after SimCLR alone vs 0.0001 with CO2 1; with the CO2 term's sign
flipped in ``regularizer_terms`` it is 1.43 and the test fails.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from selfsup.config import ConfigError, load_recipe
from selfsup.losses import co2_loss, koleo_loss
from selfsup.methods import METHODS, encode_views
from selfsup.methods.regularizers import RegularizersConfig, regularizer_terms
from selfsup.train.accumulate import accumulated_backward
from selfsup.train.loop import build_method
from train_utils import shifted, short_run, tiny_digits

pytestmark = pytest.mark.usefixtures("one_thread")


def koleo_ref(x: torch.Tensor) -> float:
    """Eq. (5) of Sablayrolles et al. by brute force: -mean_i log min_{j != i} ||x_i/|x_i| - x_j/|x_j|||."""
    x = x.double()
    xn = x / x.norm(dim=1, keepdim=True)
    n = x.shape[0]
    total = 0.0
    for i in range(n):
        d = min((xn[i] - xn[j]).norm().item() for j in range(n) if j != i)
        total += math.log(d + 1e-8)
    return -total / n


def co2_ref(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """CO2 (Wei et al., 2021, Eq. (4)) with in-batch negatives: P_i over [q_i.p_i, q_i.p_j (j != i)] / t and
    Q_i over [p_i.q_i, p_i.q_j (j != i)] / t; mean_i of (KL(P_i||Q_i) + KL(Q_i||P_i)) / 2."""
    q = z1.double() / z1.double().norm(dim=1, keepdim=True)
    p = z2.double() / z2.double().norm(dim=1, keepdim=True)
    n, total = q.shape[0], 0.0
    for i in range(n):
        others = [j for j in range(n) if j != i]
        a = torch.stack([q[i] @ p[i]] + [q[i] @ p[j] for j in others]) / t
        b = torch.stack([p[i] @ q[i]] + [p[i] @ q[j] for j in others]) / t
        lp, lq = a.log_softmax(0), b.log_softmax(0)
        total += 0.5 * ((lp.exp() * (lp - lq)).sum() + (lq.exp() * (lq - lp)).sum()).item()
    return total / n


def _method(recipe: str, overrides: list[str] = ()):
    r = load_recipe(recipe, ["model.width=8", "data.image_size=16", *overrides])
    torch.manual_seed(0)
    return r, build_method(r, 1, 16)


def _views(n: int = 12, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1, 16, 16, generator=g) for _ in range(2)]


@pytest.mark.parametrize("recipe", ["simclr_digits", "byol_digits"])
def test_added_value_is_the_regulariser_by_hand_and_gradient_flows(recipe):
    _, plain = _method(recipe)
    _, reg = _method(recipe, ["method.regularizers.koleo=0.5", "method.regularizers.co2=0.3",
                              "method.regularizers.co2_temperature=0.1"])
    reg.load_state_dict(plain.state_dict())
    views = _views()
    out0, out = plain(views), reg(views)
    # the live embeddings the regulariser saw: the projections of both views (BYOL: the online ones)
    with torch.no_grad():
        z = [reg.projector(h) for h in encode_views(reg.backbone, views)]
    want = out0["loss"].item() + 0.5 * (koleo_ref(z[0]) + koleo_ref(z[1])) / 2 + 0.3 * co2_ref(z[0], z[1], 0.1)
    assert out["loss"].item() == pytest.approx(want, rel=1e-5, abs=1e-5)
    assert out["reg_koleo"].item() == pytest.approx((koleo_ref(z[0]) + koleo_ref(z[1])) / 2, rel=1e-5)
    assert out["reg_co2"].item() == pytest.approx(co2_ref(z[0], z[1], 0.1), rel=1e-4, abs=1e-6)
    # gradient: the regulariser's own gradient reaches the backbone
    terms = out["loss"] - out0["loss"].detach()
    g = torch.autograd.grad(out["loss"], list(reg.backbone.parameters()))
    g0 = torch.autograd.grad(out0["loss"], list(plain.backbone.parameters()))
    assert terms.requires_grad and any(not torch.allclose(a, b) for a, b in zip(g, g0))


@pytest.mark.parametrize("recipe", ["simclr_digits", "byol_digits", "tico_digits"])
def test_weight_zero_is_bit_identical(recipe):
    """Regularisers at 0 compute nothing: loss and gradients equal the method's own loss, bit for bit (BYOL's
    loss written out as before the forward passed its projections on)."""
    _, m = _method(recipe, ["method.regularizers.koleo=0", "method.regularizers.co2=0"])
    views = _views()
    out = m(views)
    g = torch.autograd.grad(out["loss"], list(m.backbone.parameters()))
    if recipe == "simclr_digits":
        _, z = m.embed(views)
        ref = m.objective(z)["loss"]
    elif recipe == "byol_digits":
        from selfsup.losses import byol_loss

        h = encode_views(m.backbone, views)
        p = [m.predictor(m.projector(x)) for x in h]
        with torch.no_grad():
            t = encode_views(m.teacher, views)
        ref = byol_loss(p[0], t[1]) + byol_loss(p[1], t[0])
    else:
        from selfsup.losses import tico_loss

        z1 = m.projector(m.backbone(views[0]))
        with torch.no_grad():
            z2 = m.teacher(views[1])
        ref = tico_loss(z1, z2, m.cov, m.cfg.beta, m.cfg.rho)[0]
    g_ref = torch.autograd.grad(ref, list(m.backbone.parameters()))
    assert torch.equal(out["loss"], ref) and all(torch.equal(a, b) for a, b in zip(g, g_ref))
    assert "reg_koleo" not in out and "reg_co2" not in out


def test_exact_accumulation_keeps_the_regulariser_exact():
    """Gradient caching adds KoLeo/CO2 on the whole batch's embeddings: K=3 micro-batches give the full batch's
    gradients (GroupNorm-free check: BatchNorm is swapped for identity, as test_accumulate does for BN)."""
    _, m = _method("simclr_digits", ["method.regularizers.koleo=0.5", "method.regularizers.co2=0.5"])
    for name, mod in list(m.named_modules()):
        for cname, child in list(mod.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(mod, cname, nn.Identity())
    views = _views(n=12)
    full = m(views)
    full["loss"].backward()
    want = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    out = accumulated_backward(m, m, views, 0.0, None, 3, "fp32", torch.device("cpu"), scaler)
    assert out["loss"].item() == pytest.approx(full["loss"].item(), rel=1e-6)
    for a, b in zip(want, [p.grad for p in m.parameters()]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_refused_where_it_cannot_be_exact():
    with pytest.raises(ConfigError, match="accumulate"):  # BYOL accumulates plainly: per micro-batch
        load_recipe("byol_digits", ["method.regularizers.koleo=0.1", "train.accumulate=2"])
    no = [n for n, c in METHODS.items() if not c.supports_regularizers()]
    assert "dino" in no and "simclr" not in no and "byol" not in no
    with pytest.raises(ConfigError, match="does not expose its live view embeddings"):
        load_recipe("dino_digits", ["method.regularizers.koleo=0.1"])
    load_recipe("simclr_digits", ["method.regularizers.koleo=0.1", "train.accumulate=2"])  # exact: allowed


def test_global_koleo_is_the_reference_in_one_process():
    """DDP parity of ``koleo_loss(distributed=True)`` (and CO2's) is in tests/test_catalogue_losses_ddp.py (one
    spawn for every case); in one process both KoLeo variants are Eq. (5) by hand, and the terms use them."""
    g = torch.Generator().manual_seed(3)
    x, z1, z2 = (torch.randn(8, 5, generator=g, dtype=torch.float64) for _ in range(3))
    assert koleo_loss(x, distributed=True).item() == pytest.approx(koleo_ref(x), rel=1e-9)
    assert koleo_loss(x).item() == pytest.approx(koleo_ref(x), rel=1e-9)
    t = regularizer_terms(RegularizersConfig(koleo=1.0, co2=1.0, co2_temperature=0.2), [z1, z2])
    assert t["reg_koleo"].item() == pytest.approx((koleo_ref(z1) + koleo_ref(z2)) / 2, rel=1e-9)
    assert t["reg_co2"].item() == pytest.approx(co2_ref(z1, z2, 0.2), rel=1e-9)


def _project(method, images: torch.Tensor) -> torch.Tensor:
    """The projector's embeddings of uint8 ``images``, scaled to [-1, 1] as the digits recipes' views are."""
    return method.projector(method.backbone((images.float() / 255 - 0.5) / 0.5))


def _uniformity(method, data) -> float:
    """Wang & Isola's uniformity of the test images' normalised embeddings, with batch statistics in BatchNorm
    (as training sees them: after 16 steps the running statistics still hold much of their initial values)."""
    method.train()
    with torch.no_grad():
        z = nn.functional.normalize(_project(method, data.test.images), dim=1)
    return torch.pdist(z).pow(2).mul(-2).exp().mean().log().item()


def test_koleo_prevents_collapse(tmp_path):
    """Alignment alone (align_uniform with lambda_ 0) collapses every image to one point; KoLeo spreads them."""
    data = tiny_digits(n_train=256, n_test=128)
    base = ["method.lambda_=0", "optim.lr=1.0", "train.online_probe=false"]
    _, _, alone = short_run("align_uniform_digits", tmp_path / "a", base, epochs=2, data=data)
    _, _, spread = short_run("align_uniform_digits", tmp_path / "b", base + ["method.regularizers.koleo=2"],
                             epochs=2, data=data)
    u_alone, u_spread = _uniformity(alone, data), _uniformity(spread, data)
    assert u_alone > -0.5 and u_spread < u_alone - 1.0, (u_alone, u_spread)


def _test_pair_co2(method, data) -> float:
    """CO2 (in-batch negatives, tau_con 0.05) between two views of the held-out images: each test image and the
    same image shifted by up to 2 px (a fixed seed), through the backbone and projector in eval mode."""
    method.eval()
    with torch.no_grad():
        a = data.test.images
        za, zb = _project(method, a), _project(method, shifted(a, 2, seed=1))
        return co2_loss(za, zb, temperature=0.05, distributed=False).item()


def test_co2_makes_held_out_views_consistent(tmp_path):
    """CO2 does what it is for: SimCLR with CO2 (alpha 1, lightly's default) leaves the two views of held-out images
    with far more consistent similarity distributions than SimCLR alone (its kNN learning test:
    tests/test_catalogue_learning.py, ``simclr+co2``)."""
    data = tiny_digits(n_train=256, n_test=128)
    base = ["train.online_probe=false"]
    _, _, alone = short_run("simclr_digits", tmp_path / "a", base, epochs=2, data=data)
    _, _, reg = short_run("simclr_digits", tmp_path / "b", base + ["method.regularizers.co2=1"], epochs=2, data=data)
    c_alone, c_reg = _test_pair_co2(alone, data), _test_pair_co2(reg, data)
    assert c_reg < 0.25 * c_alone, (c_alone, c_reg)


# Methods with a forward of their own that pass their live view embeddings to Method.regularize (the second
# catalogue's joint-embedding methods; MoCo v1 inherits MoCo v2's forward).
OWN_FORWARD = ["mocov1_digits", "mocov2_digits", "ressl_digits", "nnbyol_digits", "nnsiam_digits",
               "fastsiam_digits", "smog_digits", "all4one_digits", "mmcr_digits"]


def _forward(m, views, seed: int = 5):
    torch.manual_seed(seed)  # MoCo/ReSSL's shuffle-BN permutation comes from the global RNG
    return m(views)


@pytest.mark.parametrize("recipe", OWN_FORWARD)
def test_own_forward_methods_opt_in(recipe, monkeypatch):
    """Weight 0: loss and backbone gradients bit-identical to the method with ``regularize`` bypassed, no terms
    logged. Weight > 0: the loss grows by exactly the weighted terms, the terms are KoLeo / CO2 by hand (float64)
    on the embeddings the method passed (each [n, D], at least one with gradient), and the gradient changes."""
    _, zero = _method(recipe, ["method.regularizers.koleo=0", "method.regularizers.co2=0"])
    _, reg = _method(recipe, ["method.regularizers.koleo=0.5", "method.regularizers.co2=0.3"])
    reg.load_state_dict(zero.state_dict())
    views = _views(n=16)  # shuffle-BN's 8 groups need 16 images
    out0 = _forward(zero, views)
    g0 = torch.autograd.grad(out0["loss"], list(zero.backbone.parameters()))
    assert "reg_koleo" not in out0 and "reg_co2" not in out0
    seen = []
    real = type(reg).regularize

    def spy(self, out, z):
        seen.append(z)
        return real(self, out, z)

    monkeypatch.setattr(type(reg), "regularize", spy)
    out = _forward(reg, views)
    g = torch.autograd.grad(out["loss"], list(reg.backbone.parameters()))
    monkeypatch.setattr(type(reg), "regularize", lambda self, out, z: out)
    bare = _forward(zero, views)
    g_bare = torch.autograd.grad(bare["loss"], list(zero.backbone.parameters()))
    assert torch.equal(out0["loss"], bare["loss"]) and all(torch.equal(a, b) for a, b in zip(g0, g_bare))

    (z,) = seen
    assert len(z) >= 2 and all(v.shape[0] == 16 and v.dim() == 2 for v in z) and any(v.requires_grad for v in z)
    live = [v.detach() for v in z if v.requires_grad]
    koleo = sum(koleo_ref(v) for v in live) / len(live)
    co2 = co2_ref(z[0].detach(), z[1].detach(), 0.05)
    assert out["reg_koleo"].item() == pytest.approx(koleo, rel=1e-5)
    assert out["reg_co2"].item() == pytest.approx(co2, rel=1e-4, abs=1e-6)
    assert out["loss"].item() == pytest.approx(out0["loss"].item() + 0.5 * koleo + 0.3 * co2, rel=1e-5, abs=1e-5)
    assert any(not torch.allclose(a, b) for a, b in zip(g, g0))


def test_every_method_that_does_not_opt_in_refuses_in_one_line():
    """Every method that does not opt in refuses KoLeo on its digits recipe with the one-line error (those that opt
    in are exercised above and in the embed/objective tests)."""
    from pathlib import Path

    import selfsup

    recipes = Path(selfsup.__file__).parent / "recipes"
    opted = {n for n, c in METHODS.items() if c.supports_regularizers()}
    assert {r.removesuffix("_digits") for r in OWN_FORWARD} <= opted
    assert {"dino", "detcon", "densecl", "rotnet"}.isdisjoint(opted)
    for name in METHODS:
        if not (recipes / f"{name}_digits.yaml").exists():
            continue
        if name in opted:
            continue
        with pytest.raises(ConfigError, match="does not expose its live view embeddings") as e:
            load_recipe(f"{name}_digits", ["method.regularizers.koleo=0.1"])
        assert "\n" not in str(e.value) and "koleo=0" in str(e.value)
