"""Backbones: torchvision ResNets (with a small-image stem), a small CPU CNN, timm ViTs.

Any ``nn.Module`` mapping ``[B, C, H, W]`` images to ``[B, D]`` features is a valid
backbone in the Python API; :func:`feature_dim` finds ``D`` by a dummy forward.
"""

from __future__ import annotations

import difflib

import torch
import torch.nn as nn
import torchvision

RESNETS = ("resnet18", "resnet34", "resnet50")
BACKBONES = ("small_cnn", *RESNETS)  # and timm:<model name>


def check_backbone_name(name: str) -> str:
    """``name`` if :func:`build_backbone` knows it, else a ValueError naming the choices: ``small_cnn``,
    ``resnet18/34/50``, or ``timm:<model>`` for a model in timm's own list (timm must be installed)."""
    if name in BACKBONES:
        return name
    if name.startswith("timm:"):
        model = name[5:]
        try:
            import timm
        except ImportError:
            raise ValueError(f"backbone '{name}' needs timm, which is not installed; pip install timm "
                             f"(or choose {', '.join(BACKBONES)})") from None
        if timm.is_model(model):
            return name
        close = difflib.get_close_matches(model, timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join('timm:' + c for c in close)}? " if close else ""
        raise ValueError(f"timm has no model '{model}'; {hint}timm.list_models() lists its names (e.g. "
                         f"timm:vit_small_patch16_224)")
    close = difflib.get_close_matches(name, BACKBONES, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise ValueError(f"unknown backbone '{name}'; {hint}choose {', '.join(BACKBONES)} or timm:<model name>")


def resnet(name: str = "resnet18", in_channels: int = 3, small_input: bool = False) -> nn.Module:
    """A torchvision ResNet whose ``fc`` is ``Identity`` (features = pooled last stage).

    ``small_input`` swaps the 7x7/2 stem and max-pool for a 3x3/1 conv and no pool,
    the usual choice for images of 64 px or less (SimCLR's CIFAR variant). Key names
    stay torchvision's, so exported weights load into ``torchvision.models.<name>()``
    built with the same stem (see :func:`torchvision_resnet`).
    """
    if name not in RESNETS:
        raise ValueError(f"unknown ResNet '{name}'; choose one of {', '.join(RESNETS)}")
    net = getattr(torchvision.models, name)(weights=None)
    if small_input:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = nn.Identity()
    return net


def torchvision_resnet(name: str, in_channels: int = 3, small_input: bool = False, num_classes: int = 1000) -> nn.Module:
    """The plain torchvision model, with the same stem as :func:`resnet`, ready for exported weights."""
    net = resnet(name, in_channels, small_input)
    net.fc = nn.Linear(_resnet_width(net), num_classes)
    return net


def _resnet_width(net: nn.Module) -> int:
    last = net.layer4[-1]
    return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels


class SmallCNN(nn.Module):
    """A small VGG-style CNN for CPU experiments: four 3x3 conv-BN-ReLU stages, global pooling.

    At 32 px and ``width=32`` it costs ~20 MFLOPs per image, so pretraining on digits
    takes seconds per epoch on two CPU cores.
    """

    def __init__(self, in_channels: int = 3, width: int = 32, depth: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for i in range(depth):
            c_out = width * 2**i
            layers += [nn.Conv2d(c_in, c_out, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


def timm_vit(name: str, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    """A timm model with the classifier removed, sized for the images (timm ViTs go through MaskedViT)."""
    try:
        import timm
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"backbone 'timm:{name}' needs timm; reinstall selfsup (pip install -e .) or pip install timm") from e
    kwargs.setdefault("dynamic_img_size", True)  # multi-crop: local crops (e.g. 96 px) resample the position embedding
    return timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels, img_size=image_size, **kwargs)


def is_vit_name(name: str) -> bool:
    """Whether ``name`` is a ``timm:`` model from timm's ``vision_transformer`` module (built as a MaskedViT)."""
    if not name.startswith("timm:"):
        return False
    try:
        from timm.models import is_model_in_modules
    except ImportError:
        return False
    return is_model_in_modules(name[5:], ["vision_transformer"])


def build_backbone(name: str, in_channels: int, image_size: int, small_input: bool | None = None,
                   width: int = 32, vit: dict | None = None, **kwargs) -> nn.Module:
    """Backbone from a recipe name: ``small_cnn``, ``resnet18/34/50`` or ``timm:<model>``.

    ``small_input`` defaults to ``image_size <= 64`` for ResNets. timm ViTs (``timm:vit_*``) become a
    :class:`selfsup.nets.vit.MaskedViT`, with ``vit`` the options of :func:`selfsup.nets.vit.build_vit`;
    other timm models are timm's own, classifier removed.
    """
    check_backbone_name(name)
    if name == "small_cnn":
        return SmallCNN(in_channels, width=width)
    if name in RESNETS:
        return resnet(name, in_channels, image_size <= 64 if small_input is None else small_input)
    if is_vit_name(name):
        from selfsup.nets.vit import build_vit

        return build_vit(name[5:], in_channels, image_size, **(vit or {}))
    return timm_vit(name[5:], in_channels, image_size, **kwargs)  # a timm: name (checked above)


@torch.no_grad()
def feature_dim(backbone: nn.Module, in_channels: int, image_size: int) -> int:
    """Output width of ``backbone``: its ``out_dim``/``num_features`` attribute, else a dummy forward."""
    for attr in ("out_dim", "num_features"):
        if isinstance(getattr(backbone, attr, None), int):
            return getattr(backbone, attr)
    was_training = backbone.training
    backbone.eval()
    p = next(backbone.parameters(), None)
    x = torch.zeros(2, in_channels, image_size, image_size, device=p.device if p is not None else "cpu")
    out = backbone(x)
    backbone.train(was_training)
    if out.dim() != 2:
        raise ValueError(f"backbone must map images to [B, D] features, got output of shape {tuple(out.shape)}")
    return out.shape[1]
