"""Backbones, heads and EMA teachers."""

from selfsup.nets.backbones import SmallCNN, build_backbone, feature_dim, resnet, torchvision_resnet
from selfsup.nets.dino_head import DINOHead
from selfsup.nets.ema import EMA, cosine_momentum
from selfsup.nets.heads import mlp, online_probe, out_dim, parse_spec
from selfsup.nets.queue import MemoryBank
from selfsup.nets.prototypes import Prototypes

__all__ = ["SmallCNN", "build_backbone", "feature_dim", "resnet", "torchvision_resnet", "EMA", "cosine_momentum",
           "mlp", "online_probe", "out_dim", "parse_spec", "MemoryBank"]
__all__ += ["DINOHead"]
__all__ += ["Prototypes"]
from selfsup.nets.instance_bank import InstanceBank, initial_features

__all__ += ["InstanceBank", "initial_features"]
from selfsup.nets.class_attention import ClassAttentionBlock, MatchingAggregation

__all__ += ["ClassAttentionBlock", "MatchingAggregation"]
