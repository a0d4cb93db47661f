"""The second catalogue's methods as modules: state kept in buffers (TiCo's running covariance, LeJEPA's slice
generator), MMCR's momentum centroids, DirectCLR's projector-free loss, exact gradient caching where declared, and
LeJEPA under 2-process gloo DDP. Learning: tests/test_catalogue_learning.py; recipes: recipe_rows_catalogue.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from selfsup.config import ConfigError, load_recipe
from selfsup.losses import lejepa_loss
from selfsup.methods import METHODS
from ddp_utils import run_on_ranks
from selfsup.train.loop import train
from test_accumulate import DT, accumulated, full_batch, make, max_diff, views_of
from test_resume import EPOCHS, STEPS, _assert_same_run, _fresh
from train_utils import TINY, tiny_digits

EXACT = [("vibcreg", {"projector": "16-12", "iternorm_groups": 2}), ("frossl", {"projector": "16-12"}),
         ("lejepa", {"projector": "16-12", "num_slices": 32}), ("emp_ssl", {"projector": "16-12"}),
         ("directclr", {"dim0": 6}), ("align_uniform", {"projector": "12"}), ("macl", {"projector": "16-12"})]


def multicrop(b: int = 16, seed: int = 1) -> list[torch.Tensor]:
    """2 global views at 8 px and 2 local ones at 6 px."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, s, s, generator=g, dtype=DT) for s in (8, 8, 6, 6)]


@pytest.mark.parametrize("name,cfg", EXACT, ids=[n for n, _ in EXACT])
def test_gradient_caching_equals_the_full_batch(name, cfg):
    assert METHODS[name].accumulation == "exact"
    m = make(name, **cfg)
    views = multicrop() if name == "lejepa" else views_of(n_views=3 if name in ("emp_ssl", "frossl") else 2)
    ref, g_ref = full_batch(m, views)
    out, g = accumulated(m, views, 2)
    assert len(g) == len([p for p in m.parameters() if p.requires_grad])
    torch.testing.assert_close(out["loss"], ref["loss"].detach(), rtol=0, atol=1e-10)
    assert max_diff(g, g_ref) < 1e-10


@pytest.mark.parametrize("name", ["tico", "mmcr"])
def test_momentum_methods_refuse_accumulation_in_one_line(name):
    with pytest.raises(ConfigError, match=rf"train.accumulate=2: {name} cannot accumulate") as e:
        load_recipe(f"{name}_digits", ["train.accumulate=2"])
    assert "\n" not in str(e.value)


def test_tico_running_covariance_is_a_buffer_moved_once_per_step():
    m = make("tico", projector="16-12", beta=0.5, rho=3.0)
    assert "cov" in m.state_dict() and torch.equal(m.cov, torch.zeros(12, 12, dtype=DT))
    views = views_of()
    out = m(views)
    m(views)  # a second forward before the step does not move the state
    assert torch.equal(m.cov, torch.zeros_like(m.cov))
    m.after_step(0.0)
    with torch.no_grad():
        z1 = F.normalize(m.projector(m.backbone(views[0])), dim=1)
        z2 = F.normalize(m.teacher(views[1]), dim=1)  # the momentum encoder's embedding of the second view
    c1 = 0.5 * z1.T @ z1 / 16
    torch.testing.assert_close(m.cov, c1)
    torch.testing.assert_close(out["loss"], -(z1 * z2).sum(1).mean() + 3.0 * ((z1 @ c1) * z1).sum(1).mean())
    out2 = m(views)  # the next step's loss sees C_{t-1}
    c2 = 0.5 * c1 + 0.5 * z1.T @ z1 / 16  # the teacher moved in after_step, the online network did not
    with torch.no_grad():
        z2 = F.normalize(m.teacher(views[1]), dim=1)
    torch.testing.assert_close(out2["loss"], -(z1 * z2).sum(1).mean() + 3.0 * ((z1 @ c2) * z1).sum(1).mean())


def test_tico_without_momentum_encoder_has_no_teacher():
    m = make("tico", projector="16-12", momentum_encoder=False)
    assert m.teacher is None and m.after_step(0.5) == {}
    with pytest.raises(ValueError, match="has no EMA teacher"):
        m.encoder_parts("teacher")


def test_mmcr_momentum_centroids_average_the_online_and_momentum_means():
    m = make("mmcr", projector="16-12")
    with torch.no_grad():
        for p in m.teacher.parameters():
            p.add_(0.1 * torch.randn_like(p))
    views = views_of(n_views=4)
    out = m(views)
    with torch.no_grad():
        z = torch.stack([F.normalize(m.projector(m.backbone(v)), dim=1) for v in views], 1)
        zm = torch.stack([F.normalize(m.teacher(v), dim=1) for v in views], 1)
        c = (z.mean(1) + zm.mean(1)) / 2
    torch.testing.assert_close(out["loss"], -torch.linalg.svdvals(c).sum())
    m.after_step(0.0)  # constant momentum tau
    assert m.after_step(0.9) == {"momentum": 0.99}


def test_mmcr_lambda_adds_the_mean_per_image_nuclear_norm_of_the_online_views():
    m = make("mmcr", projector="16-12", lambda_=0.5)
    views = views_of(n_views=3)
    loss = m(views)["loss"]
    with torch.no_grad():
        z = torch.stack([F.normalize(m.projector(m.backbone(v)), dim=1) for v in views], 1)
        zm = torch.stack([F.normalize(m.teacher(v), dim=1) for v in views], 1)
    ref = -torch.linalg.svdvals((z.mean(1) + zm.mean(1)) / 2).sum() + 0.5 * torch.linalg.svdvals(z).sum(1).mean()
    torch.testing.assert_close(loss, ref)


def test_lejepa_slices_come_from_its_buffers_only():
    a, b = make("lejepa", projector="16-12", num_slices=32), make("lejepa", projector="16-12", num_slices=32)
    torch.manual_seed(123)  # the global RNG plays no part
    s0 = a.slices()
    assert s0.shape == (12, 32) and torch.equal(s0, b.slices())
    torch.testing.assert_close(s0.norm(dim=0), torch.ones(32))
    a.after_step(0.1)
    assert int(a.step) == 1 and not torch.equal(a.slices(), s0)
    torch.manual_seed(7)
    c = make("lejepa", projector="16-12", num_slices=32)
    c.slice_seed.fill_(12345)
    assert not torch.equal(c.slices(), a.slices())
    c.load_state_dict(a.state_dict())  # a checkpoint restores the draw exactly
    assert torch.equal(c.slices(), a.slices())


def test_lejepa_loss_of_globals_and_locals():
    m = make("lejepa", projector="16-12", num_slices=32, lambda_=0.3)
    views = multicrop()
    out = m(views)
    with torch.no_grad():
        z = [m.projector(m.backbone(v)) for v in views]
    ref = lejepa_loss(torch.stack(z[:2]), torch.stack(z[2:]), m.slices(), 0.3)
    torch.testing.assert_close(out["loss"], ref)
    assert {"sigreg", "inv"} <= set(out)


def _lejepa_rank(rank: int, world: int) -> dict:
    m = make("lejepa", projector="16-12", num_slices=32)
    views = [v.chunk(world)[rank] for v in multicrop()]
    m.zero_grad()
    out = m(views)
    out["loss"].backward()
    return {"loss": out["loss"].detach(), "slices": m.slices(),
            **{n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}}


def test_lejepa_two_process_ddp_equals_one_process_on_the_global_batch():
    ranks = run_on_ranks(_lejepa_rank)
    m = make("lejepa", projector="16-12", num_slices=32)
    ref, g_ref = full_batch(m, multicrop())
    assert torch.equal(ranks[0]["slices"], ranks[1]["slices"])  # every rank tests the same directions
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / 2, ref["loss"].detach())
    g = {n: (ranks[0][n] + ranks[1][n]) / 2 for n in g_ref}  # what DDP's gradient averaging gives
    assert max_diff(g, g_ref) < 1e-10


def test_directclr_uses_the_leading_backbone_dimensions_and_checks_dim0():
    m = make("directclr", dim0=6)
    assert m.encoder_parts()[1] is None  # no projector
    views = views_of()
    feats, z = m.embed(views)
    assert torch.equal(z[0], feats) and z[0].shape[1] == 8
    with pytest.raises(ValueError, match=r"method.dim0=9 exceeds the backbone's 8 feature dimensions"):
        make("directclr", dim0=9)



RESUME = {  # recipe -> overrides that keep it tiny; each has state beyond its weights
    "tico": ["method.projector=32-16"],  # running covariance, momentum encoder
    "mmcr": ["method.projector=32-16", "views.params.n_global=3"],  # momentum encoder
    "lejepa": ["method.projector=32-16", "method.num_slices=16", "views.params.n_local=2",
               "views.params.local_size=8"],  # slice seed and step
}


@pytest.mark.parametrize("name", list(RESUME))
def test_resume_mid_epoch_is_bit_identical(name, tmp_path, one_thread):
    """As tests/test_resume.py: stopped mid-run and resumed into a model built from another seed (so another
    LeJEPA slice seed), the run ends bit-identical to the uninterrupted one."""
    r = load_recipe(f"{name}_digits", TINY + [f"train.epochs={EPOCHS}", *RESUME[name]])
    data, quiet = tiny_digits(), (lambda *a: None)
    straight = train(r, run_dir=tmp_path / "a", data=data, method=_fresh(r, 0), log=quiet)
    run = tmp_path / "b"
    train(r, run_dir=run, data=data, method=_fresh(r, 0), stop_after_step=STEPS + 2, log=quiet)
    train(r, run_dir=run, resume=True, data=data, method=_fresh(r, 1), log=quiet)
    _assert_same_run(straight, run)
