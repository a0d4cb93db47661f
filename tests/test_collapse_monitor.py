"""The collapse monitor (selfsup.diagnostics.collapse): what it measures, when it reports, that it is
calibrated on real runs (BYOL without a predictor collapses and is reported; the shipped byol_digits
recipe, whose embeddings contract for a few epochs after warmup, is not), that the trainer shows
each report exactly once, and that the diagnostics sit below train/ and eval/."""

from __future__ import annotations

import ast
import math
import warnings
from pathlib import Path

import pytest
import torch

from selfsup.diagnostics import CollapseMonitor, normalized_std, rankme

DIM = 64
FIXTURES = Path(__file__).parent / "data"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _healthy(seed: int = 0) -> torch.Tensor:
    return torch.randn(256, DIM, generator=_gen(seed))


def _point(seed: int = 0) -> torch.Tensor:
    """Every input mapped to (nearly) one point: complete collapse."""
    return torch.randn(1, DIM, generator=_gen(seed)) + 1e-4 * torch.randn(256, DIM, generator=_gen(seed + 1))


def _rank_one(seed: int = 0) -> torch.Tensor:
    """Embeddings spread along one line through the origin: std stays large, RankMe ~ 1."""
    return torch.randn(256, 1, generator=_gen(seed)) @ torch.randn(1, DIM, generator=_gen(seed + 1))


def test_normalized_std_is_simsiams_one_over_sqrt_d_and_zero_when_collapsed():
    assert normalized_std(torch.randn(4096, DIM, generator=_gen(1))) == pytest.approx(1 / math.sqrt(DIM), rel=0.02)
    assert normalized_std(_point()) < 1e-3 / math.sqrt(DIM)
    z = torch.randn(50, 8, generator=_gen(2))
    reference = (z / z.norm(dim=1, keepdim=True)).std(dim=0, unbiased=True).mean()
    assert normalized_std(z) == pytest.approx(float(reference), rel=1e-6)


def test_a_collapse_is_reported_once_after_patience_consecutive_checks():
    mon = CollapseMonitor(DIM, patience=3, grace_updates=1)
    assert mon.update(_point(), step=1) == []  # inside the grace period: not counted
    assert mon.update(_healthy(), step=2) == []
    assert mon.update(_point(), step=3) == []
    assert mon.update(_point(), step=4) == []
    msgs = mon.update(_point(), step=5)  # the third consecutive collapsed check
    assert len(msgs) == 1 and msgs[0].startswith("collapse at step 5") and "std" in msgs[0]
    assert mon.update(_point(), step=6) == []  # reported once, not at every later check
    assert [row["step"] for row in mon.history] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_a_dip_shorter_than_patience_is_not_reported():
    mon = CollapseMonitor(DIM, patience=3, grace_updates=0)
    for step, z in enumerate([_healthy(), _point(), _point(), _healthy(), _point(), _point(), _healthy()]):
        assert mon.update(z, step=step) == []


def test_dimensional_collapse_is_reported_by_rankme():
    mon = CollapseMonitor(DIM, rankme_fraction=0.05, patience=2, grace_updates=0)
    assert rankme(_rank_one()) < 1.5 and normalized_std(_rank_one()) > 0.5 / math.sqrt(DIM)
    assert mon.update(_rank_one(), step=1) == []
    msgs = mon.update(_rank_one(), step=2)
    assert len(msgs) == 1 and msgs[0].startswith("dimensional collapse at step 2") and "RankMe" in msgs[0]


def test_healthy_embeddings_are_never_reported():
    mon = CollapseMonitor(DIM, grace_updates=0, patience=1)
    assert all(mon.update(_healthy(seed), step=seed) == [] for seed in range(5))


def test_the_monitor_returns_its_messages_and_issues_no_warning():
    mon = CollapseMonitor(DIM, patience=1, grace_updates=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warnings.warn would raise here
        assert len(mon.update(_point(), step=1)) == 1


def test_state_dict_round_trip_continues_a_streak_exactly():
    seq = [_healthy(), _point(), _point(), _point(), _point()]
    straight = CollapseMonitor(DIM, patience=3, grace_updates=1)
    out_straight = [straight.update(z, step=i) for i, z in enumerate(seq)]
    first = CollapseMonitor(DIM, patience=3, grace_updates=1)
    out_resumed = [first.update(z, step=i) for i, z in enumerate(seq[:3])]
    resumed = CollapseMonitor.from_state(torch.load(_saved(first.state_dict()), weights_only=True))
    out_resumed += [resumed.update(z, step=i + 3) for i, z in enumerate(seq[3:])]
    assert out_resumed == out_straight and sum(map(len, out_straight)) == 1
    assert resumed.history == straight.history


def _saved(state: dict) -> Path:
    path = Path("monitor_state.pt")  # tests run in their tmp_path (conftest)
    torch.save(state, path)
    return path


def test_monitor_input_errors():
    with pytest.raises(ValueError, match="dim"):
        CollapseMonitor(DIM).update(torch.randn(8, 5))
    with pytest.raises(ValueError, match="patience"):
        CollapseMonitor(DIM, patience=0)
    with pytest.raises(ValueError, match="std_fraction"):
        CollapseMonitor(DIM, std_fraction=2.0)


def test_diagnostics_sit_below_train_and_eval():
    """selfsup/diagnostics imports nothing else from selfsup; selfsup/train never imports selfsup.eval."""
    root = Path(__file__).resolve().parent.parent / "selfsup"

    def imported(path: Path) -> set[str]:
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
        return names

    for path in (root / "diagnostics").glob("*.py"):
        bad = {m for m in imported(path) if m.startswith("selfsup") and not m.startswith("selfsup.diagnostics")}
        assert not bad, f"{path.name} imports {bad}: diagnostics must not depend on the rest of selfsup"
    for path in (root / "train").glob("*.py"):
        bad = {m for m in imported(path) if m == "selfsup.eval" or m.startswith("selfsup.eval.")}
        assert not bad, f"train/{path.name} imports {bad}: the trainer must not import from selfsup.eval"



def _byol_run(tmp_path: Path, overrides: list[str], without_predictor: bool) -> tuple[list[str], list, list[dict]]:
    """A short real byol_digits run at test scale (16 px, width 8, 192 images, batch 32) with the recipe's
    per-step learning rate (lr 1.0, no batch scaling); returns the logged lines, the Python warnings
    and the metrics rows."""
    import json

    from train_utils import TINY, tiny_digits

    from selfsup.config import load_recipe
    from selfsup.train.loop import build_method, train

    r = load_recipe("byol_digits", TINY + ["optim.lr_scaling=none", f"train.out_dir={tmp_path}", *overrides])
    torch.manual_seed(0)
    method = build_method(r, 1, 16)
    if without_predictor:
        method.predictor = torch.nn.Identity()
    lines: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = train(r, run_dir=tmp_path / "run", data=tiny_digits(), method=method,
                    log=lambda *a: lines.append(" ".join(map(str, a))))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return lines, caught, rows


def test_byol_without_predictor_collapses_and_the_trainer_shows_it_exactly_once(tmp_path, one_thread):
    """BYOL without its predictor and with target = online network collapses (BYOL, Table 5a; SimSiam,
    Table 1; cookbook, "Self-Distillation"). The trainer shows the collapse once, as a logged line: no
    RuntimeWarning besides it, and not again at every later epoch. (With the recipe's EMA target,
    removing the predictor alone does not collapse on digits: over 30 epochs the std stays at ~0.19/sqrt(D)
    and the backbone ends at kNN 0.936, against 0.928 with the predictor (LARS eta 1e-3 runs), so that run is not a collapse to
    report. With target = online the std is 0.009/sqrt(D) by epoch 5 and kNN 0.65 at epoch 11.)"""
    lines, caught, rows = _byol_run(tmp_path, ["train.epochs=6", "method.tau_base=0"], without_predictor=True)
    assert rows[-1]["emb_std"] < 0.01 / math.sqrt(DIM)  # it really collapsed: ~one point on the sphere
    shown = [line for line in lines if "collapse" in line]
    assert len(shown) == 1 and shown[0].startswith("warning: collapse at step"), shown
    assert not [w for w in caught if "collapse" in str(w.message)]


def test_shipped_byol_at_test_scale_is_not_reported(tmp_path, one_thread):
    lines, _, rows = _byol_run(tmp_path, ["train.epochs=6"], without_predictor=False)
    assert not [line for line in lines if "collapse" in line]
    assert min(r["emb_std"] for r in rows) < 0.2 / math.sqrt(DIM)  # it does contract (the old monitor's alarm)


def test_shipped_byol_digits_run_is_not_reported():
    """Replays the embeddings the trainer gave the monitor in a real 30-epoch run of the shipped byol_digits
    recipe (tests/data/byol_digits_monitor_inputs.pt, see its "about"): the epochs up to and past its
    deepest contraction. The monitor the trainer builds stays silent; the old calibration (threshold
    0.2/sqrt(D), no patience, no grace) raised the false alarm on these same inputs."""
    from selfsup.config import load_recipe

    fixture = torch.load(FIXTURES / "byol_digits_monitor_inputs.pt", weights_only=True)
    std_all = fixture["full_run_normalized_std"]
    assert std_all.index(min(std_all)) < len(fixture["steps"])  # the stored epochs hold the run's deepest dip
    fraction = load_recipe("byol_digits").train.collapse_rankme_fraction
    mon = CollapseMonitor(DIM, rankme_fraction=fraction)
    assert [m for z, step in zip(fixture["embeddings"], fixture["steps"]) for m in mon.update(z.float(), step)] == []
    old = CollapseMonitor(DIM, rankme_fraction=fraction, std_fraction=0.2, patience=1, grace_updates=0)
    assert [m for z, step in zip(fixture["embeddings"], fixture["steps"]) for m in old.update(z.float(), step)]
