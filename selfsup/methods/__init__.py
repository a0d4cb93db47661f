"""One file per method. ``METHODS`` is the one mapping from recipe ``method.name`` to class."""

from selfsup.methods.base import Method, MethodConfig, encode_views
from selfsup.methods.byol import BYOL, BYOLConfig
from selfsup.methods.simclr import SimCLR, SimCLRConfig
from selfsup.methods.vicreg import VICReg, VICRegConfig

METHODS: dict[str, type[Method]] = {
    "simclr": SimCLR,
    "byol": BYOL,
    "vicreg": VICReg,
}

__all__ = ["METHODS", "Method", "MethodConfig", "encode_views", "SimCLR", "SimCLRConfig", "BYOL", "BYOLConfig",
           "VICReg", "VICRegConfig"]
