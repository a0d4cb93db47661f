"""Distillation from a frozen teacher (lightly-train's ``distillation``, v1): any student backbone learns to
match the features of a teacher the user supplies.

Per step (lightly-train ``Distillation.training_step_impl``): one view per image, mixed with a shuffled copy of
the batch (mixup, lambda ~ U(0, 1)); the teacher's L2-normalised features enter a queue (the global batch, then
the queue is read); the student's features go through a linear projection (trunc-normal init, std 0.02) to the
teacher's width, and :func:`~selfsup.losses.feature_distillation.queue_distillation_loss` (temperature 0.07)
compares the two softmax similarities to the queue. ``loss: cosine`` regresses the projected features onto the
teacher's instead (:func:`~selfsup.losses.feature_distillation.cosine_distillation_loss`).

The teacher (``method.teacher``), loaded with ``weights_only=True`` and never downloaded:

- a selfsup run directory: its backbone as its evaluation uses it (``config.yaml`` + ``checkpoint.pt``);
- a weights file (``.pt``/``.pth`` state dict or ``.safetensors``) with ``method.teacher_backbone``: ``small_cnn``
  or ``resnet18/34/50`` (selfsup's, e.g. ``selfsup export``'s state dict), ``torchvision:<name>`` (e.g. a
  torchvision ResNet-50 state dict; its ``fc`` is dropped) or ``timm:<name>`` (timm's model, classifier removed).

It stays frozen and in eval mode (BatchNorm statistics and dropout fixed) whatever the trainer sets; it sees the
student's views. It is kept in the checkpoints (resume needs no path) but not in exports (the student is).
Differences from lightly-train: the queue holds the global batch under DDP (lightly-train's is per GPU) and only
its filled rows enter the softmax (lightly-train's starts as zeros); teacher, data and schedule are the user's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from selfsup.losses.feature_distillation import cosine_distillation_loss, queue_distillation_loss
from selfsup.methods.base import Method, MethodConfig
from selfsup.nets.queue import MemoryBank


class DistillConfig(MethodConfig):
    name: Literal["distill"] = "distill"
    teacher: str | None = Field(None, description="the frozen teacher: a selfsup run directory, or a weights file "
                                "(.pt/.pth state dict, .safetensors) with method.teacher_backbone")
    teacher_backbone: str | None = Field(None, description="architecture of a weights-file teacher: small_cnn, "
                                         "resnet18/34/50 (selfsup's), torchvision:<name> or timm:<name>")
    teacher_width: int = Field(32, gt=0, description="width of a small_cnn weights-file teacher")
    loss: Literal["queue_kl", "cosine"] = Field("queue_kl", description="queue_kl: KL of similarities to a queue "
                                                "of teacher features (lightly-train); cosine: cosine regression")
    temperature: float = Field(0.07, gt=0, description="softmax temperature of the teacher and the student")
    queue_size: int = Field(8192, gt=0, description="teacher features kept as the pseudo-classifier")
    mixup: bool = Field(True, description="mix each image with a shuffled one, lambda ~ U(0, 1) (lightly-train)")


class Distill(Method):
    Config = DistillConfig
    default_views = "crop"  # one view per image
    no_accumulation_reason = "its queue takes the step's whole teacher batch before the loss reads it"

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: DistillConfig, epochs: int = 100,
                 teacher: nn.Module | None = None) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        if teacher is None:
            teacher = load_teacher(cfg.teacher, cfg.teacher_backbone, cfg.teacher_width)
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher_dim = teacher_dim(self.teacher)
        self.projector = nn.Linear(feat_dim, self.teacher_dim)
        nn.init.trunc_normal_(self.projector.weight, std=0.02)
        nn.init.zeros_(self.projector.bias)
        self.queue = MemoryBank(cfg.queue_size, self.teacher_dim)

    def train(self, mode: bool = True) -> "Distill":
        """The student follows ``mode``; the teacher stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, views, progress=0.0, labels=None):
        """Every view is distilled (lightly-train: one; ``views.params.n_views`` sets more), at the first
        view's resolution."""
        x = torch.cat([v for v in views if v.shape[-2:] == views[0].shape[-2:]])
        if self.cfg.mixup and self.training:
            lam = torch.rand(()).item()
            x = lam * x + (1 - lam) * x[torch.randperm(x.shape[0]).to(x.device)]
        with torch.no_grad():
            t = self.teacher(x)
            t = nn.functional.normalize(t.to(torch.promote_types(t.dtype, torch.float32)), dim=1)  # >= fp32
        h = self.backbone(x)
        s = self.projector(h)
        if self.cfg.loss == "cosine":
            loss = cosine_distillation_loss(s, t)
        else:
            if self.training:
                self.queue.enqueue(t)
            loss = queue_distillation_loss(s, t, self.queue.get() if int(self.queue.count) else t, self.cfg.temperature)
        b = views[0].shape[0]  # view 0's rows, for the online probe and the monitors
        return {"loss": loss, "feats": h[:b].detach(), "emb": s[:b].detach()}


def teacher_dim(teacher: nn.Module) -> int:
    for attr in ("out_dim", "num_features", "feat_dim"):
        if isinstance(getattr(teacher, attr, None), int):
            return getattr(teacher, attr)
    raise ValueError(f"cannot tell the feature width of the teacher {type(teacher).__name__}; give it an out_dim")


def load_teacher(path: str | None, backbone: str | None = None, width: int = 32) -> nn.Module:
    """The teacher of ``method.teacher`` (see the module docstring), in eval mode."""
    if not path:
        raise ValueError("method.teacher is required: a selfsup run directory (e.g. runs/simclr_digits-...) or a "
                         "weights file with method.teacher_backbone")
    p = Path(path)
    if p.is_dir():
        if backbone:
            raise ValueError(f"method.teacher_backbone={backbone}: a run directory brings its own backbone; drop it")
        return _teacher_from_run(p)
    if not p.is_file():
        raise ValueError(f"method.teacher '{p}' is neither a run directory nor a weights file")
    if not backbone:
        raise ValueError(f"method.teacher '{p}' is a weights file: name its architecture with method.teacher_backbone "
                         f"(small_cnn, resnet50, torchvision:resnet50, timm:vit_small_patch16_224, ...)")
    state = _read_weights(p)
    channels = next(v.shape[1] for v in state.values() if v.dim() == 4)  # the stem's input channels
    if backbone.startswith("torchvision:"):
        import torchvision

        net = torchvision.models.get_model(backbone.split(":", 1)[1], weights=None)
        dim = net.fc.in_features
        if channels != 3:
            net.conv1 = nn.Conv2d(channels, net.conv1.out_channels, 7, 2, 3, bias=False)
        net.fc = nn.Identity()
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        net.load_state_dict(state)
        net.out_dim = dim
        return net.eval()
    if backbone.startswith("timm:"):
        import timm

        net = timm.create_model(backbone.split(":", 1)[1], pretrained=False, num_classes=0, in_chans=channels)
        head = {k for k in state if k not in net.state_dict() and k.split(".")[0] in ("head", "fc", "classifier")}
        net.load_state_dict({k: v for k, v in state.items() if k not in head})
        return net.eval()
    from selfsup.nets.backbones import build_backbone, feature_dim

    small = state.get("conv1.weight") is not None and state["conv1.weight"].shape[-1] == 3  # 3x3 stem, no max-pool
    net = build_backbone(backbone, channels, 224, small_input=small, width=width)
    net.load_state_dict(state)
    net.out_dim = feature_dim(net, channels, 224)
    return net.eval()


def _read_weights(p: Path) -> dict[str, torch.Tensor]:
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    state = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"method.teacher '{p}' is not a state dict of tensors")
    return state


def _teacher_from_run(run: Path) -> nn.Module:
    """The backbone a run evaluates (its student, or its EMA teacher for DINO-like methods), from its files."""
    import yaml

    from selfsup.methods import METHODS
    from selfsup.nets.backbones import build_backbone

    if not (run / "config.yaml").is_file() or not (run / "checkpoint.pt").is_file():
        raise ValueError(f"method.teacher '{run}' has no config.yaml and checkpoint.pt; pass a selfsup run directory")
    recipe = yaml.safe_load((run / "config.yaml").read_text())
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    meta, weights = state["meta"], state["method"]
    cls = METHODS[recipe["method"]["name"]]
    which = (recipe.get("eval") or {}).get("encoder") or cls.eval_encoder
    prefix = f"{cls.teacher_attr}.module.0." if which == "teacher" else "backbone."
    m = recipe.get("model") or {}
    net = build_backbone(m.get("backbone", "small_cnn"), meta["channels"], meta["image_size"],
                         small_input=m.get("small_input"), width=m.get("width", 32), vit=m.get("vit"))
    net.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
    if not hasattr(net, "out_dim"):
        net.out_dim = int(meta["feat_dim"])
    return net.eval()
