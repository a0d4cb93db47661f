"""Dense (per-location) features of any selfsup backbone, for the localized-feature methods and the dense
probe (cookbook, "Building Feature Extractors with Localization"): DenseCL, VICRegL, DetCon and SelfPatch
train on them, and the segmentation probe reads them frozen.

:func:`feature_map` returns ``[B, C, h, w]`` where a pooled backbone returns ``[B, C]``, so that
``feature_map(b, x).mean((2, 3))`` equals ``b(x)`` for the CNNs (average pooling), and a ViT's map is its
encoded patch tokens on the patch grid (its pooled features are the cls token or ``fc_norm`` of their mean).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision

from selfsup.nets.backbones import SmallCNN


def _is_resnet(net: nn.Module) -> bool:
    return isinstance(net, torchvision.models.ResNet)


def feature_map(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last feature map ``[B, C, h, w]`` of ``backbone`` on images ``x`` (before global pooling).

    - :class:`~selfsup.nets.backbones.SmallCNN`: its conv stages (stride 8 at depth 4).
    - torchvision ResNets: the output of ``layer4`` (stride 32, or 8 with the small-input stem).
    - :class:`~selfsup.nets.vit.MaskedViT`: the final-normed patch tokens on the patch grid (stride = patch size).
    """
    if isinstance(backbone, SmallCNN):
        return backbone.features(x)
    if _is_resnet(backbone):
        b = backbone
        h = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(h))))
    from selfsup.nets.vit import MaskedViT

    if isinstance(backbone, MaskedViT):
        tokens = backbone.patches(backbone.forward_tokens(x))
        gh, gw = backbone.grid(tuple(x.shape[-2:]))
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)
    raise TypeError(f"no dense feature map for a {type(backbone).__name__} backbone; dense methods and the dense "
                    f"probe need small_cnn, a torchvision ResNet or a timm ViT (MaskedViT)")


def feature_stride(backbone: nn.Module, image_size: int, in_channels: int = 3) -> int:
    """Input pixels per feature-map cell along a side, measured on one ``image_size`` image."""
    was = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            p = next(backbone.parameters())
            fm = feature_map(backbone, torch.zeros(1, in_channels, image_size, image_size, device=p.device,
                                                   dtype=p.dtype))
    finally:
        backbone.train(was)
    return image_size // fm.shape[-1]
