"""The dense evaluation protocol (selfsup.eval.dense_probe, ``dense_miou``) and the digit_scenes dataset it runs on:
mIoU against a hand-computed confusion matrix, the probe on oracle and noise features, determinism, the dataset's
masks, and the protocol through ``selfsup train`` / ``selfsup eval`` (table, eval.json, report, bad input)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.cli import main
from selfsup.data import DataError, load_data
from selfsup.data.digit_scenes import IGNORE_INDEX, SCENE_CLASSES, load_digit_scenes
from selfsup.eval import Metric, write_report
from selfsup.eval.dense_probe import confusion_matrix, dense_linear_probe, frozen_feature_maps, miou_from_confusion
from selfsup.nets import build_backbone
from train_utils import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def test_miou_matches_a_hand_computed_confusion_matrix():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 0]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    conf = confusion_matrix(pred, target, 4, ignore_index=255)
    # rows true, columns predicted; the ignored pixel (predicted 2) is not counted; class 3 never occurs
    want = torch.tensor([[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    assert torch.equal(conf, want)
    miou, acc, iou = miou_from_confusion(conf)
    # IoU_0 = 2 / (3 + 3 - 2) = 1/2; IoU_1 = 2 / (2 + 3 - 2) = 2/3; IoU_2 = 1 / (2 + 1 - 1) = 1/2; class 3 absent
    assert iou[:3] == pytest.approx([1 / 2, 2 / 3, 1 / 2]) and math.isnan(iou[3])
    assert miou == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)
    assert acc == pytest.approx(5 / 7)
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix(pred, torch.full_like(target, 4), 4)


@pytest.fixture(scope="module")
def scenes():
    return load_digit_scenes(16)


def test_digit_scenes_are_deterministic_with_exact_per_pixel_labels(scenes):
    a, b, c = scenes, load_digit_scenes(16), load_digit_scenes(16, seed=1)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.masks, b.test.masks)
    assert not torch.equal(a.train.images, c.train.images)
    digits = load_data(None, image_size=16)
    assert torch.equal(a.train.labels, digits.train.labels) and torch.equal(a.test.labels, digits.test.labels)
    assert a.train.mask_classes == SCENE_CLASSES and len(SCENE_CLASSES) == 11
    for split in (a.train, a.test):
        m, y = split.masks.long(), split.labels
        fg = m > 0
        assert fg.flatten(1).any(1).all()  # every scene holds its digit
        assert torch.equal(m.flatten(1).max(1).values, y + 1)  # the digit's pixels carry class label + 1 ...
        assert bool(((m == 0) | (m == (y + 1).view(-1, 1, 1))).all())  # ... and no other class appears
        assert not bool((m == IGNORE_INDEX).any())
        # the mask is exactly where the ink was pasted: one stroke value per image (170-255) plus N(0, 8) noise, so
        # the masked pixels of an image are bright and tightly spread (a mask off by a pixel takes in background)
        x = split.images[:, 0].float()
        for img, f in zip(x, fg):
            assert img[f].mean() > 150 and img[f].std() < 20
    assert a.train.masks.shape == (1437, 16, 16) and a.summary().startswith("digit_scenes: 1437 train / 360 test")
    with pytest.raises(DataError, match="takes no path"):
        load_data("x.npz", format="digit_scenes")


def _oracle(masks: torch.Tensor) -> torch.Tensor:
    return F.one_hot(masks.long(), 11).permute(0, 3, 1, 2).float()


def test_probe_reads_oracle_features_and_not_noise_deterministically(scenes):
    d = scenes
    tr_m, te_m = d.train.masks[:96], d.test.masks[:48]
    oracle = dense_linear_probe(_oracle(tr_m), tr_m, _oracle(te_m), te_m, 11, epochs=8, lr=0.05, seed=0)
    g = torch.Generator().manual_seed(0)
    noise = dense_linear_probe(torch.randn(96, 11, 16, 16, generator=g), tr_m, torch.randn(48, 11, 16, 16, generator=g),
                               te_m, 11, epochs=8, lr=0.05, seed=0)
    assert oracle.miou > 0.9 and oracle.pixel_acc > 0.97
    assert noise.miou < 0.25
    again = dense_linear_probe(_oracle(tr_m), tr_m, _oracle(te_m), te_m, 11, epochs=8, lr=0.05, seed=0)
    assert again.miou == oracle.miou and torch.equal(again.confusion, oracle.confusion)


def test_frozen_feature_maps_of_a_backbone_keep_its_mode(scenes):
    net = build_backbone("small_cnn", 1, 16, width=8).train()
    fm = frozen_feature_maps(net, scenes.test.images[:5], [0.5], [0.25])
    assert fm.shape[0] == 5 and fm.dim() == 4 and net.training


def test_dense_miou_through_train_eval_and_the_report(tmp_path, capsys):
    argv = [*TINY, "data.format=digit_scenes", "train.epochs=1", "eval.protocols=[knn,dense_miou]",
            "eval.dense_epochs=1", "eval.at_end=false", f"train.out_dir={tmp_path}", "train.run_name=r"]
    assert main(["train", *argv]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "r")]) == 0  # the recipe's eval.protocols
    out = capsys.readouterr().out
    assert "dense mIoU" in out and "dense pixel acc" in out and "linear segmentation probe" in out
    rows = {m["name"]: m for m in json.loads((tmp_path / "r" / "eval.json").read_text())["metrics"]}
    assert 0 < rows["dense mIoU"]["value"] < 1 and "DINOv2" in rows["dense mIoU"]["protocol"]
    metrics = [Metric(**m) for m in rows.values()]  # the report's table (--report adds t-SNE: 15 s, tested in test_cli)
    _, md = write_report(tmp_path / "r", metrics, {"eval": {"protocols": ["knn", "dense_miou"]}}, [], {})
    assert "dense mIoU" in md.read_text() and "linear segmentation probe" in md.read_text()
    # a dataset without masks (exported weights evaluated on plain digits): one line naming the fix, exit 2
    assert main(["export", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    assert main(["eval", "--weights", str(tmp_path / "r" / "backbone.pt"), "--recipe", "simclr_digits", *TINY,
                 "--protocols", "dense_miou"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "data.format=digit_scenes" in err[0]
