r"""data2vec 2.0 (Baevski et al., 2023): efficient self-supervised learning with contextualized target
representations, for images.

- **Masks** (:func:`selfsup.views.masks.inverse_block_mask`, drawn per step by the trainer): with
  ``inverse_mask`` the 20% *visible* patches arrive as 3 x 3 islands (``mask_prob`` 0.8, ``mask_length`` 3,
  ``mask_prob_adjust`` 0.07). **Multi-mask**: every image is used ``clone_batch`` (M) times with M
  different masks; :meth:`Data2Vec2.make_masks` returns M bool ``[batch, N]`` masks (True = masked), clone m
  of image b being row ``b * M + m`` of the student's batch (``repeat_interleave``, as fairseq).
- **Student**: the backbone (a :class:`selfsup.nets.vit.MaskedViT` with a cls token) embeds each image once,
  the embedding is cloned M times, and the masked patches are **dropped** (MAE-style, ``mode="drop"``).
- **Teacher**: an EMA of the whole encoder (a deep copy; ``ema_encoder_only: false``; the decoder is not
  EMA'd) runs **once per image on the unmasked input**; the targets are
  :func:`selfsup.losses.masked_regression.data2vec_targets` of the feed-forward outputs before the residual of its last
  ``average_top_k_layers`` blocks (``end_of_block_targets: false``; instance norm over the tokens per layer,
  mean, then layer norm), over the patch tokens (fairseq drops the extra tokens first), shared by the M clones.
- **Decoder** (:class:`Data2Vec2Decoder`, fairseq's ``Decoder2d``): the encoder's patch outputs are scattered
  back to their grid positions and the masked positions are filled with Gaussian noise of std
  ``mask_noise_std`` 0.01 (no learned mask token, no positions); then ``decoder_layers`` blocks of grouped
  ``Conv2d(decoder_kernel, groups=decoder_groups)`` -> LayerNorm without affine -> GELU, each with a residual
  when the widths agree, and a linear projection back to D.
- **Loss**: :func:`selfsup.losses.masked_regression.data2vec_loss` on the masked tokens (squared error summed over D,
  times 1/sqrt(D), mean over the masked tokens = fairseq's sum divided by ``sample_size``), plus
  ``cls_loss`` x the same error between the student's cls token and the mean patch target.

The paper gives no formula for the cls term; fairseq multiplies it by ``cls_loss * sample_size`` before the
division by ``sample_size``, i.e. it is **summed** over the process's instances (batch x clones) while the
regression is a mean. ``cls_reduction: sum`` (default) reproduces this; ``mean`` averages it instead, so its
weight no longer depends on the per-process batch.

EMA: the momentum is annealed linearly from ``tau_base`` 0.9998 to ``tau_end`` 0.99999 over the first
``ema_anneal_epochs`` (fairseq ``ema_anneal_end_step`` 100k updates of 256 images = 20 ImageNet epochs),
then held. Paper vs code: fairseq's image encoder uses post-LayerNorm blocks (``layer_norm_first: false``);
selfsup's backbone is timm's pre-norm ViT, whose FFN output before the residual plays the same role.

Recipe defaults (fairseq ``examples/data2vec/config/v2/base_images_only_task.yaml``, ViT-B/16):
depth 12 (``prenet_depth`` 2 + ``depth`` 10), ``average_top_k_layers`` 10, ``clone_batch`` 16, decoder 6 x
768, kernel 3, groups 16, ``cls_loss`` 0.01; Adam betas (0.9, 0.95), weight decay 0.05, lr 1e-3 at 256
images per update (16 per GPU x 16 GPUs), cosine with 50,040 warmup updates, ``max_update`` 375,300 (about
10 warmup and 75 ImageNet epochs, derived), gradient clipping 4, fp16; MAE's views (RandomResizedCrop(0.2,
1) + flip, fairseq ``mae_image_pretraining``). Evaluation: the student (fine-tuning starts from it).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from selfsup.losses.masked_regression import data2vec_loss, data2vec_targets
from selfsup.methods.base import Method, MethodConfig, fresh_generator, require_vit
from selfsup.nets import EMA
from selfsup.nets.vit import MaskedViT
from selfsup.views.masks import inverse_block_mask


class Data2Vec2Config(MethodConfig):
    name: Literal["data2vec2"] = "data2vec2"
    mask_prob: float = Field(0.8, gt=0, lt=1, description="fraction of patches masked (inverse mask: 1 - visible)")
    mask_length: int = Field(3, ge=1, description="side of the visible blocks")
    mask_prob_adjust: float = Field(0.07, ge=0, lt=1, description="extra block centres drawn before the exact count")
    clone_batch: int = Field(16, ge=1, description="masks (student clones) per image, one teacher pass")
    average_top_k_layers: int = Field(10, ge=1, description="teacher blocks whose FFN outputs make the targets")
    mask_noise_std: float = Field(0.01, ge=0, description="std of the noise at masked decoder inputs")
    decoder_layers: int = Field(6, ge=1, description="conv decoder blocks")
    decoder_dim: int = Field(768, gt=0, description="conv decoder channels")
    decoder_kernel: int = Field(3, ge=1, description="conv decoder kernel size")
    decoder_groups: int = Field(16, ge=1, description="conv decoder groups")
    cls_loss: float = Field(0.01, ge=0, description="weight of the cls-token regression onto the mean target")
    cls_reduction: Literal["sum", "mean"] = Field("sum", description="cls term over the instances: sum (fairseq's "
                                                  "cls_loss x sample_size) or mean")
    tau_base: float = Field(0.9998, ge=0, le=1, description="teacher EMA momentum at the start")
    tau_end: float = Field(0.99999, ge=0, le=1, description="teacher EMA momentum after the anneal")
    ema_anneal_epochs: float = Field(20.0, ge=0, description="epochs of the linear momentum anneal")


class Data2Vec2Decoder(nn.Module):
    """fairseq's ``Decoder2d``: tokens ``[B, N, D]`` on an ``h x w`` grid -> ``[B, N, D]``."""

    def __init__(self, embed_dim: int, grid: tuple[int, int], dim: int, layers: int, kernel: int,
                 groups: int) -> None:
        super().__init__()
        if embed_dim % groups or dim % groups:
            raise ValueError(f"decoder_groups={groups} must divide the embedding width {embed_dim} and "
                             f"decoder_dim={dim}")
        self.grid, self.kernel = tuple(grid), kernel
        self.convs = nn.ModuleList(nn.Conv2d(embed_dim if i == 0 else dim, dim, kernel, padding=kernel // 2,
                                             groups=groups) for i in range(layers))
        self.proj = nn.Linear(dim, embed_dim)

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        b, n, c = x.shape
        h, w = grid or self.grid
        x = x.transpose(1, 2).reshape(b, c, h, w)
        residual = x
        for conv in self.convs:
            y = conv(x)[..., :h, :w]  # SamePad2d: an even kernel's extra row and column are cut
            y = F.layer_norm(y.transpose(1, 3), y.shape[1:2]).transpose(1, 3)  # over channels, no affine
            y = F.gelu(y)
            x = y + residual if y.shape[1] == residual.shape[1] else y
            residual = x
        return self.proj(x.reshape(b, -1, n).transpose(1, 2))


def annealed_momentum(tau_base: float, tau_end: float, epoch: float, anneal_epochs: float) -> float:
    """fairseq's ``get_annealed_rate``: linear from ``tau_base`` to ``tau_end`` over ``anneal_epochs``, then held."""
    if anneal_epochs <= 0 or epoch >= anneal_epochs:
        return tau_end
    return tau_base + (tau_end - tau_base) * max(epoch, 0.0) / anneal_epochs


class Data2Vec2(Method):
    Config = Data2Vec2Config
    default_views = "crop"
    teacher_attr = "teacher"
    eval_encoder = "student"  # fairseq fine-tunes the student model

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: Data2Vec2Config, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        vit = require_vit(backbone, "data2vec2")
        if cfg.average_top_k_layers > len(vit.blocks):
            raise ValueError(f"average_top_k_layers={cfg.average_top_k_layers} exceeds the backbone's "
                             f"{len(vit.blocks)} blocks; lower method.average_top_k_layers")
        if cfg.cls_loss > 0 and vit.cls_token is None:
            raise ValueError("data2vec2 cls_loss > 0 needs a cls token; set model.vit.class_token=true or "
                             "method.cls_loss=0")
        self.decoder = Data2Vec2Decoder(vit.embed_dim, vit.base_grid, cfg.decoder_dim, cfg.decoder_layers,
                                        cfg.decoder_kernel, cfg.decoder_groups)
        self.teacher = EMA(nn.Sequential(self.backbone, nn.Identity()))  # whole encoder; not the decoder
        self.teacher.eval()

    def train(self, mode: bool = True) -> "Data2Vec2":
        super().train(mode)
        self.teacher.eval()  # fairseq: ``self.ema.model.eval()``
        return self

    @property
    def teacher_encoder(self) -> MaskedViT:
        return self.teacher.module[0]

    def make_masks(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        c = self.cfg
        m = inverse_block_mask(batch * c.clone_batch, self.backbone.base_grid, c.mask_prob, generator,
                               block=c.mask_length, adjust=c.mask_prob_adjust).mask
        return tuple(m.view(batch, c.clone_batch, -1).unbind(1))  # M masks [batch, N]; image-major rows

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's targets ``[B, N, D]`` (one pass per image, unmasked): ``data2vec_targets`` of the FFN
        outputs of its last ``average_top_k_layers`` blocks, over the patch tokens."""
        t = self.teacher_encoder
        k = self.cfg.average_top_k_layers
        _, outs = t.encode(t.embed(x), layers=list(range(-k, 0)), ffn=True)
        return data2vec_targets([t.patches(o) for o in outs], k)

    def student(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x [B, C, H, W]`` and ``mask [B * M, N]`` (clone m of image b at row b * M + m) -> the encoded
        prefix and visible patch tokens ``[B * M, P + K, D]``; the patch embedding is computed once per image."""
        vit: MaskedViT = self.backbone
        tokens = vit.embed(x).repeat_interleave(mask.shape[0] // x.shape[0], 0)
        return vit.encode(vit.mask(tokens, mask, "drop"))

    def decoder_input(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encoded visible patches scattered back to ``[B * M, N, D]``; masked positions get N(0, noise std)."""
        vis = self.backbone.patches(z)
        full = torch.randn(mask.shape[0], mask.shape[1], vis.shape[-1], device=vis.device, dtype=vis.dtype)
        full = full * self.cfg.mask_noise_std
        keep = (~mask).nonzero()[:, 1].view(mask.shape[0], -1)
        return full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, vis.shape[-1]), vis)

    def forward(self, views, progress=0.0, labels=None, masks=None):
        x = views[0]
        if masks is None:
            masks = self.make_masks(x.shape[0], fresh_generator())
        m = len(masks)
        mask = torch.stack([mk.to(x.device) for mk in masks], 1).flatten(0, 1)  # [B * M, N]
        y = self.targets(x)  # [B, N, D], one teacher pass per image
        z = self.student(x, mask)
        vit: MaskedViT = self.backbone
        pred = self.decoder(self.decoder_input(z, mask), vit.grid(tuple(x.shape[-2:])))
        reg = data2vec_loss(pred, y.repeat_interleave(m, 0), mask)
        out = {"regression": reg.detach()}
        loss = reg
        if self.cfg.cls_loss > 0:
            cls_target = y.mean(1).repeat_interleave(m, 0)
            cls = data2vec_loss(z[:, :1], cls_target[:, None], reduction=self.cfg.cls_reduction)
            loss = loss + self.cfg.cls_loss * cls
            out["cls"] = cls.detach()
        feats = vit.pool(z[::m]).detach()  # clone 0 of each image, its visible patches
        return {"loss": loss, "feats": feats, "emb": feats, **out}

    @torch.no_grad()
    def after_step(self, progress: float) -> dict[str, float]:
        c = self.cfg
        tau = annealed_momentum(c.tau_base, c.tau_end, progress * self.epochs, c.ema_anneal_epochs)
        self.teacher.update(nn.Sequential(self.backbone, nn.Identity()), tau)
        return {"momentum": tau}
