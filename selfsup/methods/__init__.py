"""One file per method. ``METHODS`` is the one mapping from recipe ``method.name`` to class."""

from selfsup.methods.base import Method, MethodConfig, encode_views
from selfsup.methods.byol import BYOL, BYOLConfig
from selfsup.methods.simclr import SimCLR, SimCLRConfig
from selfsup.methods.vicreg import VICReg, VICRegConfig
from selfsup.methods.simsiam import SimSiam, SimSiamConfig
from selfsup.methods.dino import DINO, DINOConfig
from selfsup.methods.directpred import DirectPred, DirectPredConfig

METHODS: dict[str, type[Method]] = {
    "simclr": SimCLR,
    "byol": BYOL,
    "vicreg": VICReg,
    "simsiam": SimSiam,
    "dino": DINO,
    "directpred": DirectPred,
}

__all__ = ["METHODS", "Method", "MethodConfig", "encode_views", "SimCLR", "SimCLRConfig", "BYOL", "BYOLConfig",
           "VICReg", "VICRegConfig"]
__all__ += ["SimSiam", "SimSiamConfig", "DINO", "DINOConfig", "DirectPred", "DirectPredConfig"]
