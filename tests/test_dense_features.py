"""selfsup.nets.dense.feature_map: the map average-pools to the pooled features (CNNs), and a ViT's map is its
patch tokens on the grid."""

import pytest
import torch

from selfsup.nets import build_backbone
from selfsup.nets.dense import feature_map, feature_stride


@pytest.mark.parametrize("name,size,stride", [("small_cnn", 32, 8), ("resnet18", 32, 8), ("resnet18", 96, 32)])
def test_cnn_map_pools_to_backbone_features(name, size, stride):
    torch.manual_seed(0)
    net = build_backbone(name, 3, size).eval()
    x = torch.randn(2, 3, size, size)
    fm = feature_map(net, x)
    assert fm.shape[-1] == size // stride and feature_stride(net, size) == stride
    torch.testing.assert_close(fm.mean((2, 3)), net(x), rtol=1e-5, atol=1e-5)


def test_vit_map_is_patch_tokens_on_grid():
    torch.manual_seed(0)
    net = build_backbone("timm:vit_tiny_patch16_224", 3, 32, vit={"patch_size": 8, "depth": 2}).eval()
    x = torch.randn(2, 3, 32, 32)
    fm = feature_map(net, x)
    tokens = net.patches(net.forward_tokens(x))
    assert fm.shape == (2, net.embed_dim, 4, 4)
    torch.testing.assert_close(fm[:, :, 1, 2], tokens[:, 1 * 4 + 2])  # row-major grid
    assert feature_stride(net, 32) == 8


def test_unknown_backbone_is_refused():
    with pytest.raises(TypeError, match="no dense feature map"):
        feature_map(torch.nn.Linear(3, 3), torch.zeros(1, 3))
