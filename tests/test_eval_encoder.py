"""``eval.encoder``: which backbone a run is evaluated and exported with (student or EMA teacher).

DINO evaluates its teacher (Caron et al. 2021, Sec. 5.2; official ``eval_linear.py --checkpoint_key
teacher``); BYOL, MoCo and the others their online/query network. Evaluation, ``load_backbone`` and
``export_backbone`` must all use the same one.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import selfsup.run_evaluation as run_evaluation
from selfsup.config import ConfigError, load_recipe
from selfsup.methods import METHODS
from selfsup.rundir import encoder_parts, export_backbone, load_backbone
from selfsup.train.loop import build_method
from selfsup.nets.backbones import is_vit_name
from train_utils import TINY, VIT_TINY, short_run, tiny_digits


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def _captured_backbone(monkeypatch) -> list:
    """Record the backbone ``evaluate_run`` hands to ``evaluate_backbone``."""
    seen: list = []
    original = run_evaluation.evaluate_backbone

    def spy(backbone, *args, **kwargs):
        seen.append({k: v.detach().clone() for k, v in backbone.state_dict().items()})
        return original(backbone, *args, **kwargs)

    monkeypatch.setattr(run_evaluation, "evaluate_backbone", spy)
    return seen


def test_dino_evaluates_and_exports_the_teacher(tmp_path, monkeypatch, one_thread) -> None:
    run, _, method = short_run("dino_digits", tmp_path, ["method.head=32-32-16", "method.out_dim=32",
                                                         "eval.at_end=false"])
    student = method.backbone.state_dict()
    teacher = method.teacher.module[0].state_dict()
    assert not _equal(student, teacher)  # one epoch of EMA at 0.99: the two have drifted apart

    backbone, meta = load_backbone(run)
    assert meta["encoder"] == "teacher" and _equal(backbone.state_dict(), teacher)
    exported = torch.load(export_backbone(run)[0], weights_only=True)
    assert _equal(exported, teacher) and not _equal(exported, student)

    seen = _captured_backbone(monkeypatch)
    data = tiny_digits()
    run_evaluation.evaluate_run(run, data=data, protocols=["knn"], log=lambda *a: None)
    assert _equal(seen[-1], teacher) and json.loads((run / "eval.json").read_text())["encoder"] == "teacher"
    metrics = run_evaluation.evaluate_run(run, data=data, protocols=["knn"], encoder="student", log=lambda *a: None)
    assert _equal(seen[-1], student) and json.loads((run / "eval.json").read_text())["encoder"] == "student"
    assert any(m.name == "online probe test acc" for m in metrics)  # the probe learnt on student features

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["eval"]["encoder"] = "student"  # the recipe's setting switches evaluation and export together
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    backbone, meta = load_backbone(run)
    assert meta["encoder"] == "student" and _equal(backbone.state_dict(), student)
    assert _equal(torch.load(export_backbone(run)[0], weights_only=True), student)
    run_evaluation.evaluate_run(run, data=data, protocols=["knn"], log=lambda *a: None)
    assert _equal(seen[-1], student)


def _method(recipe: str, overrides: list[str] = ()):
    vit = is_vit_name(load_recipe(recipe).model.backbone)
    r = load_recipe(recipe, TINY + (VIT_TINY + ["model.vit.depth=4"] if vit else []) + list(overrides))
    return build_method(r, 1, 16)


#: the encoder each paper evaluates when it has an EMA teacher (each method's ``eval_encoder`` comment cites it)
TEACHER_EVALUATED = {"dino", "ibot", "dinov2", "ijepa", "msn", "pmsn", "selfpatch"}  # SelfPatch: DINO's choice


def test_teacher_of_a_method_without_one_is_one_line() -> None:
    with pytest.raises(ConfigError, match="eval.encoder=teacher: simclr has no EMA teacher") as e:
        load_recipe("simclr_digits", ["eval.encoder=teacher"])
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="simclr has no EMA teacher") as e:
        encoder_parts(_method("simclr_digits"), "teacher")
    assert "\n" not in str(e.value)
    relic = _method("relic_digits", ["method.tau_base=null"])  # h = f: no target network
    with pytest.raises(ConfigError, match="relic has no EMA teacher"):
        encoder_parts(relic, "teacher")


@pytest.mark.parametrize("name", sorted(n for n, cls in METHODS.items() if cls.teacher_attr))
def test_teacher_parts_are_the_ema_copies(name: str) -> None:
    """For every method with an EMA teacher: ``teacher`` gives the EMA's own backbone (and projector)
    modules, ``student`` the trained ones, and the paper's default is the teacher for DINO, iBOT, DINOv2,
    I-JEPA (ijepa#55) and MSN/PMSN, the student otherwise."""
    m = _method(f"{name}_digits")
    ema = getattr(m, m.teacher_attr)
    backbone, head = m.encoder_parts("teacher")
    assert backbone is ema.module[0] and backbone is not m.backbone
    assert head is (ema.module[1] if hasattr(m, "projector") else None)
    assert m.encoder("student") is m.backbone
    assert m.eval_encoder == ("teacher" if name in TEACHER_EVALUATED else "student")
    assert m.encoder() is (backbone if name in TEACHER_EVALUATED else m.backbone)
