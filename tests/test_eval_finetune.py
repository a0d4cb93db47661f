"""Full fine-tuning, layer-wise lr decay, label smoothing and mixup."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data import ImageArray
from selfsup.eval.finetune import Classifier, finetune, mixup, smooth_targets
from selfsup.nets.layer_decay import layer_ids, param_groups_lrd
from train_utils import tiny_digits
from selfsup.nets.backbones import SmallCNN, resnet



pytestmark = pytest.mark.usefixtures("one_thread")


def _digits(n_train=300, n_test=200):
    d = tiny_digits(n_train, n_test, size=16)
    return d.train, d.test


def _scales(groups):
    return {name: (g["lr_scale"], g["no_decay"]) for g in groups for name in g["names"]}


def test_resnet18_layer_ids_and_lr_scales():
    model = Classifier(resnet("resnet18", in_channels=1, small_input=True), nn.Linear(512, 10))
    ids = layer_ids(model)
    assert ids["backbone.conv1.weight"] == ids["backbone.bn1.bias"] == 0
    expected_block = {"layer1.0": 1, "layer1.1": 2, "layer2.0": 3, "layer2.1": 4, "layer3.0": 5, "layer3.1": 6,
                      "layer4.0": 7, "layer4.1": 8}
    for block, i in expected_block.items():
        assert {v for k, v in ids.items() if k.startswith(f"backbone.{block}.")} == {i}
    assert ids["backbone.layer2.0.downsample.0.weight"] == 3
    assert ids["head.weight"] == ids["head.bias"] == 9
    d = 0.5
    groups = param_groups_lrd(model, base_lr=0.1, weight_decay=0.05, layer_decay=d)
    scales = _scales(groups)
    assert set(scales) == {n for n, _ in model.named_parameters()}  # every parameter exactly once
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert scales["backbone.conv1.weight"] == (pytest.approx(d**9), False)
    assert scales["backbone.bn1.weight"] == (pytest.approx(d**9), True)
    assert scales["backbone.layer3.1.conv2.weight"] == (pytest.approx(d**3), False)
    assert scales["backbone.layer4.1.bn2.bias"] == (pytest.approx(d), True)
    assert scales["head.weight"] == (1.0, False) and scales["head.bias"] == (1.0, True)
    for g in groups:
        assert g["lr"] == pytest.approx(0.1 * d ** (9 - g["layer_id"]))
        assert g["weight_decay"] == (0.0 if g["no_decay"] else 0.05)
    # the bare backbone (fc = Identity) keeps the same numbering: its last block is one below the head
    assert _scales(param_groups_lrd(model.backbone, 1.0, 0.0, d))["layer4.1.conv1.weight"][0] == pytest.approx(d)


def test_small_cnn_stage_ids_and_no_decay_means_one_lr():
    model = Classifier(SmallCNN(1, width=8), nn.Linear(64, 10))
    ids = layer_ids(model)
    assert [ids[f"backbone.features.{i}.weight"] for i in (0, 1, 3, 4, 6, 7, 9, 10)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert ids["head.weight"] == 4
    assert {g["lr_scale"] for g in param_groups_lrd(model, 1.0, 0.1, None)} == {1.0}


def test_vit_layer_ids_follow_beit_mae():
    import timm
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16, patch_size=4, depth=3)
    model = Classifier(vit, nn.Linear(vit.num_features, 10))
    ids = layer_ids(model)
    for name in ("backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed.proj.weight"):
        assert ids[name] == 0
    for i in range(3):
        assert {v for k, v in ids.items() if k.startswith(f"backbone.blocks.{i}.")} == {i + 1}
    assert ids["backbone.norm.weight"] == ids["head.weight"] == 4
    scales = _scales(param_groups_lrd(model, 1.0, 0.05, 0.65))
    assert scales["backbone.pos_embed"] == (pytest.approx(0.65**4), True)  # listed by timm's no_weight_decay()
    assert scales["backbone.blocks.0.attn.qkv.weight"] == (pytest.approx(0.65**3), False)
    assert scales["backbone.blocks.2.mlp.fc1.weight"] == (pytest.approx(0.65), False)
    assert scales["head.weight"] == (1.0, False)


def test_lrdecay_rejects_unknown_architectures_and_bad_values():
    mlp = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="layer_decay=None"):
        param_groups_lrd(mlp, 1.0, 0.0, 0.75)
    assert len(param_groups_lrd(mlp, 1.0, 0.0, None)) == 2  # no decay needed: any model works
    custom = param_groups_lrd(mlp, 1.0, 0.0, 0.5, ids={"0.weight": 0, "0.bias": 0, "2.weight": 1, "2.bias": 1})
    assert _scales(custom)["0.weight"] == (0.5, False)
    with pytest.raises(ValueError, match="layer_decay"):
        param_groups_lrd(mlp, 1.0, 0.0, 1.5)


def test_smooth_targets_match_cross_entropy_label_smoothing():
    y = torch.tensor([0, 2, 1])
    t = smooth_targets(y, 4, 0.1)
    assert torch.allclose(t.sum(dim=1), torch.ones(3))
    assert t[0, 0].item() == pytest.approx(0.9 + 0.1 / 4) and t[0, 1].item() == pytest.approx(0.1 / 4)
    logits = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    assert F.cross_entropy(logits, t).item() == pytest.approx(F.cross_entropy(logits, y, label_smoothing=0.1).item())
    assert torch.equal(smooth_targets(y, 4, 0.0), F.one_hot(y, 4).float())
    with pytest.raises(ValueError, match="label_smoothing"):
        smooth_targets(y, 4, 1.0)


def test_mixup_makes_convex_combinations_of_inputs_and_one_hot_targets():
    b = 16
    x = torch.randn(b, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    targets = torch.eye(b)  # one class per sample reveals the partner j of every row
    xm, tm, lam = mixup(x, targets, 0.4, torch.Generator().manual_seed(0))
    assert 0.0 < lam < 1.0 and lam != 0.5
    assert torch.allclose(tm.sum(dim=1), torch.ones(b))
    partners = []
    for i in range(b):
        nz = torch.nonzero(tm[i]).flatten().tolist()
        j = i if nz == [i] else next(k for k in nz if k != i)
        assert tm[i, i].item() == pytest.approx(1.0 if j == i else lam)
        assert torch.allclose(xm[i], lam * x[i] + (1 - lam) * x[j], atol=1e-6)
        partners.append(j)
    assert sorted(partners) == list(range(b))  # a permutation pairs the rows
    again = mixup(x, targets, 0.4, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], xm) and again[2] == lam  # seeded
    same = mixup(x, targets, 0.0, torch.Generator().manual_seed(0))
    assert same[0] is x and same[2] == 1.0
    lams = [mixup(x, targets, 1.0, g)[2] for g in [torch.Generator().manual_seed(s) for s in range(200)]]
    assert 0.4 < sum(lams) / len(lams) < 0.6  # Beta(1, 1) = U(0, 1)


def test_finetune_learns_digits_and_leaves_the_callers_backbone_alone():
    train, test = _digits()
    torch.manual_seed(0)
    net = SmallCNN(1, width=8)
    net.train()
    before = copy.deepcopy(net.state_dict())
    res = finetune(net, train, test, epochs=5, lr=1e-2, batch_size=32, mixup_alpha=0.2, seed=0)
    assert res.test_acc > 0.5 and res.val_acc > 0.5
    assert len(res.history) == 5 and res.history[-1]["lr"] < res.history[0]["lr"]  # cosine decay
    vals = [h["val_acc"] for h in res.history]
    assert res.best_epoch == vals.index(max(vals)) + 1 and res.val_acc == max(vals)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert net.training and all(p.requires_grad for p in net.parameters())
    assert res.model.backbone is not net and not res.model.training
    x = (test.images[:32].float() / 255 - 0.5) / 0.5  # default mean/std for 1 channel
    acc = (res.model(x).argmax(1) == test.labels[:32]).float().mean().item()
    assert acc > 0.4 and res.mean == (0.5,)
    assert "layer decay=0.75" in res.protocol


def test_finetune_is_seeded_and_applies_layer_decay():
    train, _ = _digits(96)
    net = SmallCNN(1, width=8)
    a = finetune(net, train, None, epochs=1, lr=1e-2, batch_size=32, layer_decay=1e-3, val_fraction=0.2, seed=3)
    b = finetune(net, train, None, epochs=1, lr=1e-2, batch_size=32, layer_decay=1e-3, val_fraction=0.2, seed=3)
    assert a.history == b.history and a.test_acc is None
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    orig = net.state_dict()
    change = [(sa[f"backbone.features.{i}.weight"] - orig[f"features.{i}.weight"]).abs().max().item()
              for i in (3, 6, 9)]
    # stage s moves with lr x 1e-3 ** (4 - s): each stage ~1000x less than the next, the stem ~not at all
    assert change[0] < change[1] / 100 and change[1] < change[2] / 100
    assert change[2] < 1e-3 < sa["head.weight"].abs().max()
    assert torch.allclose(sa["backbone.features.0.weight"], orig["features.0.weight"], atol=1e-9, rtol=0)


def test_finetune_bad_input_raises_clear_errors():
    train, _ = _digits(64)
    net = SmallCNN(1, width=8)
    with pytest.raises(ValueError, match="no labels"):
        finetune(net, ImageArray(train.images), None)
    with pytest.raises(ValueError, match="optimizer"):
        finetune(net, train, None, optimizer="lars")
    with pytest.raises(ValueError, match="fp16"):
        finetune(net, train, None, precision="fp16", device="cpu")
    with pytest.raises(ValueError, match="unknown view kind"):
        finetune(net, train, None, augment="strong")
    with pytest.raises(ValueError, match="num_classes"):
        finetune(net, train, None, num_classes=3)
