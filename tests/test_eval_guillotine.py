"""Guillotine probes: per-layer features in one pass and linear probes at every layer."""

import copy

import pytest
import torch
from torch import nn

from selfsup.data import ImageArray
from selfsup.eval.features import extract_features
from selfsup.eval.guillotine import default_stages, guillotine_probe, layer_features, layer_names, projector_points
from train_utils import tiny_digits
from selfsup.nets.backbones import SmallCNN, resnet
from selfsup.nets.heads import mlp

MEAN, STD = (0.5,), (0.5,)


pytestmark = pytest.mark.usefixtures("one_thread")


def _digits(n_train=400, n_test=200):
    d = tiny_digits(n_train, n_test, size=16)
    return d.train, d.test


def _normalised(images):
    return (images.float() / 255 - 0.5) / 0.5


def test_layer_features_match_a_manual_forward():
    train, _ = _digits(40)
    torch.manual_seed(0)
    net, proj = SmallCNN(1, width=8), mlp(64, "32-16")
    net.train(), proj.train()
    state = copy.deepcopy(net.state_dict())
    feats = layer_features(net, proj, train, MEAN, STD, stages=["features.1", "features.5"], batch_size=16)
    assert list(feats) == ["features.1", "features.5", "backbone", "projector.2", "projector.3"]
    assert list(feats) == layer_names(net, proj, ["features.1", "features.5"])
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "features.1": (40, 8), "features.5": (40, 16), "backbone": (40, 64), "projector.2": (40, 32),
        "projector.3": (40, 16)}
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in feats.values())
    x = _normalised(train.images)
    with torch.no_grad():
        net.eval(), proj.eval()
        bn_out = net.features[:2](x).mean(dim=(2, 3))  # BatchNorm output, before the in-place ReLU
        stage2 = net.features[:6](x).mean(dim=(2, 3))
        h = net(x)
        z2, z = proj[:3](h.clone()), proj(h.clone())
        net.train(), proj.train()
    assert torch.allclose(feats["features.1"], bn_out, atol=1e-5) and (feats["features.1"] < 0).any()
    assert torch.allclose(feats["features.5"], stage2, atol=1e-5)
    assert torch.allclose(feats["backbone"], h, atol=1e-5)
    assert torch.allclose(feats["backbone"], extract_features(net, train.images, MEAN, STD), atol=1e-5)
    assert torch.allclose(feats["projector.2"], z2, atol=1e-5) and torch.allclose(feats["projector.3"], z, atol=1e-5)
    # eval mode inside: BN statistics untouched, train flags restored, hooks removed
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert net.training and proj.training
    assert not any(m._forward_hooks for m in net.modules())


def test_resnet_stages_are_pooled_and_the_last_equals_the_backbone_output():
    torch.manual_seed(0)
    net = resnet("resnet18", in_channels=1, small_input=True)
    images = torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8)
    assert default_stages(net) == ["layer1", "layer2", "layer3"]
    feats = layer_features(net, None, images, MEAN, STD, stages=["layer1", "layer2", "layer3", "layer4"])
    assert [tuple(v.shape) for v in feats.values()] == [(6, 64), (6, 128), (6, 256), (6, 512), (6, 512)]
    assert torch.allclose(feats["layer4"], feats["backbone"], atol=1e-5)
    assert default_stages(SmallCNN(1, width=8)) == ["features.2", "features.5", "features.8"]


def test_projector_points_and_non_sequential_projectors():
    assert projector_points(mlp(64, "32-32-8")) == [2, 5, 6]
    assert projector_points(mlp(64, "32-8", last_norm=True)) == [2, 4]

    class Proj(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(64, 5)

        def forward(self, x):
            return self.lin(x)

    images = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8)
    feats = layer_features(SmallCNN(1, width=8), Proj(), images, MEAN, STD, stages=[])
    assert list(feats) == ["backbone", "projector"] and feats["projector"].shape == (4, 5)


def test_probe_accuracies_differ_per_layer():
    train, test = _digits()
    torch.manual_seed(0)
    net = SmallCNN(1, width=8)
    proj = mlp(64, "32-1")  # a 1-d bottleneck: the last projector layer cannot separate 10 digits
    res = guillotine_probe(net, proj, train, test, MEAN, STD, stages=["features.2"], epochs=10, batch_size=64,
                           lrs=(0.1, 1.0), wds=(0.0,))
    assert list(res) == ["features.2", "backbone", "projector.2", "projector.3"]
    acc = {k: r.test_acc for k, r in res.items()}
    assert acc["backbone"] > 0.6 and acc["projector.3"] < 0.35 < acc["features.2"] < acc["backbone"] - 0.1
    assert res["backbone"].protocol.startswith("linear probe at backbone (")
    assert res["projector.3"].head[-1].in_features == 1


def test_unknown_stage_names_list_the_available_modules():
    net = SmallCNN(1, width=8)
    images = torch.zeros(2, 1, 16, 16, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"no module\(s\) \['layer9'\]; available module names: features, features.0"):
        layer_features(net, None, images, MEAN, STD, stages=["layer9"])
    with pytest.raises(ValueError, match="one value per channel"):
        layer_features(net, None, images, (0.5, 0.5, 0.5), STD)
    with pytest.raises(ValueError, match="uint8"):
        layer_features(net, None, images.float(), MEAN, STD)
    with pytest.raises(ValueError, match="no labels"):
        guillotine_probe(net, None, ImageArray(images), None, MEAN, STD)


def test_vit_blocks_are_token_averaged():
    import timm
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16, patch_size=4,
                            depth=2, in_chans=1)
    assert default_stages(vit) == ["blocks.0"]
    feats = layer_features(vit, None, torch.randint(0, 256, (3, 1, 16, 16), dtype=torch.uint8), MEAN, STD,
                           stages=["blocks.0", "blocks.1"])
    assert [tuple(v.shape) for v in feats.values()] == [(3, 192)] * 3
