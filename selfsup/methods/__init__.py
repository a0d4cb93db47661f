"""One file per method. ``METHODS`` is the one mapping from recipe ``method.name`` to class."""

from selfsup.methods.base import Method, MethodConfig, encode_views, n_global_views
from selfsup.methods.byol import BYOL, BYOLConfig
from selfsup.methods.simclr import SimCLR, SimCLRConfig
from selfsup.methods.vicreg import VICReg, VICRegConfig
from selfsup.methods.simsiam import SimSiam, SimSiamConfig
from selfsup.methods.dino import DINO, DINOConfig
from selfsup.methods.directpred import DirectPred, DirectPredConfig
from selfsup.methods.supcon import SupCon, SupConConfig
from selfsup.methods.mocov2 import MoCoV2, MoCoV2Config
from selfsup.methods.mocov3 import MoCoV3, MoCoV3Config
from selfsup.methods.nnclr import NNCLR, NNCLRConfig
from selfsup.methods.dcl import DCL, DCLW, DCLConfig, DCLWConfig
from selfsup.methods.unified import Unified, UnifiedConfig
from selfsup.methods.msf import MSF, MSFConfig
from selfsup.methods.relic import ReLIC, ReLICConfig
from selfsup.methods.dml import DML, DMLConfig
from selfsup.methods.barlow_twins import BarlowTwins, BarlowTwinsConfig
from selfsup.methods.swav import SwAV, SwAVConfig
from selfsup.methods.wmse import WMSE, WMSEConfig
from selfsup.methods.deepcluster_v2 import DeepClusterV2, DeepClusterV2Config
from selfsup.methods.ibot import IBOT, IBOTConfig
from selfsup.methods.dinov2 import DINOv2, DINOv2Config
from selfsup.methods.ijepa import IJEPA, IJEPAConfig
from selfsup.methods.data2vec2 import Data2Vec2, Data2Vec2Config
from selfsup.methods.mae import MAE, MAEConfig
from selfsup.methods.crossmae import CrossMAE, CrossMAEConfig
from selfsup.methods.aim import AIM, AIMConfig
from selfsup.methods.nepa import NEPA, NEPAConfig
from selfsup.methods.simmim import SimMIM, SimMIMConfig
from selfsup.methods.msn import MSN, PMSN, MSNConfig, PMSNConfig
from selfsup.methods.beit import BEiT, BEiTConfig
from selfsup.methods.distill import Distill, DistillConfig
from selfsup.methods.tico import TiCo, TiCoConfig
from selfsup.methods.mmcr import MMCR, MMCRConfig
from selfsup.methods.vibcreg import VIbCReg, VIbCRegConfig
from selfsup.methods.frossl import FroSSL, FroSSLConfig
from selfsup.methods.lejepa import LeJEPA, LeJEPAConfig
from selfsup.methods.emp_ssl import EMPSSL, EMPSSLConfig
from selfsup.methods.directclr import DirectCLR, DirectCLRConfig
from selfsup.methods.align_uniform import AlignUniform, AlignUniformConfig
from selfsup.methods.macl import MACL, MACLConfig
from selfsup.methods.smog import SMoG, SMoGConfig
from selfsup.methods.all4one import All4One, All4OneConfig
from selfsup.methods.visreg import VISReg, VISRegConfig
from selfsup.methods.mocov1 import MoCoV1, MoCoV1Config
from selfsup.methods.ressl import ReSSL, ReSSLConfig
from selfsup.methods.nnbyol import NNBYOL, NNBYOLConfig
from selfsup.methods.nnsiam import NNSiam, NNSiamConfig
from selfsup.methods.fastsiam import FastSiam, FastSiamConfig

from selfsup.methods.densecl import DenseCL, DenseCLConfig
from selfsup.methods.vicregl import VICRegL, VICRegLConfig
from selfsup.methods.detcon import DetCon, DetConConfig
from selfsup.methods.detcon_b import DetConB, DetConBConfig
from selfsup.methods.selfpatch import SelfPatch, SelfPatchConfig
from selfsup.methods.rotnet import RotNet, RotNetConfig
from selfsup.methods.jigsaw import Jigsaw, JigsawConfig
from selfsup.methods.relpatch import RelPatch, RelPatchConfig
from selfsup.methods.pirl import PIRL, PIRLConfig
from selfsup.methods.npid import NPID, NPIDConfig
from selfsup.methods.colorization import Colorization, ColorizationConfig
from selfsup.methods.context_encoder import ContextEncoder, ContextEncoderConfig
from selfsup.methods.denoising_ae import DenoisingAE, DenoisingAEConfig
from selfsup.methods.exemplar import Exemplar, ExemplarConfig
from selfsup.methods.counting import Counting, CountingConfig

METHODS: dict[str, type[Method]] = {
    "simclr": SimCLR,
    "densecl": DenseCL,
    "vicregl": VICRegL,
    "detcon": DetCon,
    "detcon_b": DetConB,
    "byol": BYOL,
    "vicreg": VICReg,
    "simsiam": SimSiam,
    "dino": DINO,
    "directpred": DirectPred,
    "supcon": SupCon,
    "mocov2": MoCoV2,
    "mocov3": MoCoV3,
    "nnclr": NNCLR,
    "dcl": DCL,
    "dclw": DCLW,
    "unified": Unified,
    "msf": MSF,
    "relic": ReLIC,
    "dml": DML,
    "barlow_twins": BarlowTwins,
    "swav": SwAV,
    "wmse": WMSE,
    "deepcluster_v2": DeepClusterV2,
    "ibot": IBOT,
    "dinov2": DINOv2,
    "ijepa": IJEPA,
    "data2vec2": Data2Vec2,
    "mae": MAE,
    "crossmae": CrossMAE,
    "aim": AIM,
    "nepa": NEPA,
    "simmim": SimMIM,
    "msn": MSN,
    "pmsn": PMSN,
    "beit": BEiT,
    "distill": Distill,
    "tico": TiCo,
    "mmcr": MMCR,
    "vibcreg": VIbCReg,
    "frossl": FroSSL,
    "lejepa": LeJEPA,
    "emp_ssl": EMPSSL,
    "directclr": DirectCLR,
    "align_uniform": AlignUniform,
    "macl": MACL,
    "selfpatch": SelfPatch,
    "smog": SMoG,
    "all4one": All4One,
    "visreg": VISReg,
    "mocov1": MoCoV1,
    "ressl": ReSSL,
    "nnbyol": NNBYOL,
    "nnsiam": NNSiam,
    "fastsiam": FastSiam,
    "rotnet": RotNet,
    "jigsaw": Jigsaw,
    "relpatch": RelPatch,
    "pirl": PIRL,
    "npid": NPID,
    "colorization": Colorization,
    "context_encoder": ContextEncoder,
    "denoising_ae": DenoisingAE,
    "exemplar": Exemplar,
    "counting": Counting,
}

__all__ = ["METHODS", "Method", "MethodConfig", "encode_views", "n_global_views", "SimCLR", "SimCLRConfig", "BYOL", "BYOLConfig",
           "VICReg", "VICRegConfig"]
__all__ += ["SimSiam", "SimSiamConfig", "DINO", "DINOConfig", "DirectPred", "DirectPredConfig"]
__all__ += ["SupCon", "SupConConfig", "MoCoV2", "MoCoV2Config", "MoCoV3", "MoCoV3Config", "NNCLR", "NNCLRConfig", "DCL",
            "DCLConfig", "DCLW", "DCLWConfig", "Unified", "UnifiedConfig", "MSF", "MSFConfig", "ReLIC", "ReLICConfig",
            "DML", "DMLConfig"]
__all__ += ["BarlowTwins", "BarlowTwinsConfig", "SwAV", "SwAVConfig", "WMSE", "WMSEConfig", "DeepClusterV2",
            "DeepClusterV2Config"]
__all__ += ["MAE", "MAEConfig", "CrossMAE", "CrossMAEConfig", "AIM", "AIMConfig", "NEPA", "NEPAConfig",
            "SimMIM", "SimMIMConfig"]
__all__ += ["IJEPA", "IJEPAConfig", "Data2Vec2", "Data2Vec2Config"]
__all__ += ["MSN", "MSNConfig", "PMSN", "PMSNConfig", "BEiT", "BEiTConfig"]
__all__ += ["IBOT", "IBOTConfig", "DINOv2", "DINOv2Config"]
__all__ += ["Distill", "DistillConfig"]
__all__ += ["TiCo", "TiCoConfig", "MMCR", "MMCRConfig", "VIbCReg", "VIbCRegConfig", "FroSSL", "FroSSLConfig",
            "LeJEPA", "LeJEPAConfig", "EMPSSL", "EMPSSLConfig", "DirectCLR", "DirectCLRConfig", "AlignUniform",
            "AlignUniformConfig", "MACL", "MACLConfig"]
__all__ += ["MoCoV1", "MoCoV1Config", "ReSSL", "ReSSLConfig", "NNBYOL", "NNBYOLConfig", "NNSiam", "NNSiamConfig",
            "FastSiam", "FastSiamConfig"]
__all__ += ["DenseCL", "DenseCLConfig", "VICRegL", "VICRegLConfig", "DetCon", "DetConConfig", "DetConB",
            "DetConBConfig"]
__all__ += ["RotNet", "RotNetConfig", "Jigsaw", "JigsawConfig", "RelPatch", "RelPatchConfig", "PIRL", "PIRLConfig"]
__all__ += ["NPID", "NPIDConfig"]
__all__ += ["SMoG", "SMoGConfig", "All4One", "All4OneConfig", "VISReg", "VISRegConfig"]
__all__ += ["SelfPatch", "SelfPatchConfig"]
__all__ += ["Colorization", "ColorizationConfig", "ContextEncoder", "ContextEncoderConfig", "DenoisingAE",
            "DenoisingAEConfig"]
__all__ += ["Exemplar", "ExemplarConfig"]
__all__ += ["Counting", "CountingConfig"]
