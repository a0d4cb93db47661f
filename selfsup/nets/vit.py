"""A masked Vision Transformer over timm: ``embed -> mask -> encode``, with prefix tokens handled inside.

timm's ``VisionTransformer.forward_features`` fuses patch embedding, positional embedding, token dropping
and the blocks, so masked image modeling cannot reach the middle (timm#2540) and every library
re-implements the front half. :class:`MaskedViT` adopts a timm ViT's own modules under timm's own names
(``patch_embed``, ``cls_token``, ``reg_token``, ``pos_embed``, ``blocks``, ``norm``, ``fc_norm``), so its
weights load into ``timm.create_model(...)`` as they are, and splits the forward pass in three:

- :meth:`MaskedViT.embed` ``(x) -> tokens [B, P + N, D]``: patch embedding, then the positional embedding
  (learned, resampled for other grids, or fixed 2-D sin-cos as in MAE, MoCo v3 and I-JEPA) added to the
  N patch tokens, then the P prefix tokens (cls, registers) in front. Prefix tokens get no positional
  embedding (timm's ``no_embed_class``; DINOv2's registers); a learned cls token makes one unnecessary.
- :meth:`MaskedViT.mask` ``(tokens, mask, mode)``: ``mask`` addresses **patch tokens only** (``[B, N]``, True =
  masked, or ``[B, K]`` indices for ``mode="keep"``), so no caller ever offsets an index by the prefix.
  ``"drop"`` removes the masked patches (MAE, I-JEPA, data2vec 2.0, MSN); ``"replace"`` swaps them for the
  learned mask token plus their positional embedding (SimMIM, BEiT, iBOT, DINOv2: the token replaces
  the patch embedding before the position is added).
- :meth:`MaskedViT.encode` ``(tokens)``: ``norm_pre``, the blocks, the final norm; optionally the outputs of
  chosen blocks, or their feed-forward outputs before the residual (data2vec 2.0's targets).

Every sample of a batch keeps the same number of tokens, so attention runs through
``F.scaled_dot_product_attention`` (timm's fused path) with no attention mask.
(The issue's ``blocks(tokens)`` is :meth:`encode`: ``blocks`` stays timm's ``ModuleList``.)

:func:`build_vit` makes one from a timm name plus the ViT tricks of the cookbook ("Techniques for High
Performance Masked Image Modeling"): patch size, stochastic depth (linear ramp or DINOv2's uniform rate),
LayerScale, qk-norm, registers, cls or average pooling with ``fc_norm``, sin-cos positions and MoCo v3's
frozen random patch projection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["MaskedViT", "ViTFeatures", "VIT_FEATURES", "build_vit", "vit_features", "sincos_2d", "freeze_patch_projection",
           "set_uniform_drop_path"]


def sincos_2d(grid: tuple[int, int], dim: int, temperature: float = 10000.0) -> Tensor:
    r"""Fixed 2-D sin-cos positional embedding ``[h * w, dim]`` in MAE's layout (``util/pos_embed.py``).

    The first ``dim/2`` channels encode the column (x, w axis) and the last ``dim/2`` the row; each half is
    ``[sin(c * omega), cos(c * omega)]`` with ``omega_k = temperature^{-k / (dim/4)}``, ``k = 0..dim/4-1``.
    Patches are row-major. (timm's ``build_sincos2d_pos_embed`` orders the channels differently; this
    layout is kept so that MAE-convention checkpoints line up.)
    """
    if dim % 4:
        raise ValueError(f"sin-cos positions need an embedding width divisible by 4, got {dim}")
    h, w = grid
    omega = temperature ** (-torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")

    def half(coord: Tensor) -> Tensor:
        angle = coord.reshape(-1, 1) * omega
        return torch.cat([angle.sin(), angle.cos()], 1)

    return torch.cat([half(cols), half(rows)], 1).float()


def freeze_patch_projection(patch_embed: nn.Module) -> None:
    """MoCo v3's random patch projection (Chen et al. 2021, Sec. 5 "stop-grad-conv1"): the patch
    projection keeps a uniform random init with ``val = sqrt(6 / (3 * p * p + D))`` (Xavier on the
    flattened weight) and zero bias, and gets no gradient."""
    proj = patch_embed.proj
    fan = proj.weight[0].numel() + proj.weight.shape[0]  # C * p * p + D
    val = math.sqrt(6.0 / fan)
    with torch.no_grad():
        nn.init.uniform_(proj.weight, -val, val)
        if proj.bias is not None:
            nn.init.zeros_(proj.bias)
    for p in proj.parameters():
        p.requires_grad = False


def set_uniform_drop_path(blocks: Sequence[nn.Module], rate: float) -> None:
    """DINOv2's stochastic depth: the same drop-path rate in every block (``drop_path_uniform: true``),
    instead of timm's linear ramp from 0 to ``rate``."""
    from timm.layers import DropPath

    for b in blocks:
        for attr in ("drop_path1", "drop_path2"):
            if hasattr(b, attr):
                setattr(b, attr, DropPath(rate) if rate > 0 else nn.Identity())


class MaskedViT(nn.Module):
    """A timm ``VisionTransformer`` split into :meth:`embed`, :meth:`mask` and :meth:`encode`.

    ``vit`` must be built with ``class_token`` or not, any ``reg_tokens``, and ``no_embed_class=True``
    (positions for the patches only); :func:`build_vit` does this. ``pos_embed``: ``"learn"`` (timm's
    parameter, resampled bicubically for other grids, e.g. multi-crop's local crops) or ``"sincos"``
    (fixed, recomputed in closed form for every grid). ``mask_token``: create the learned token of
    ``mask(..., mode="replace")`` (trunc-normal, std 0.02). ``pool``: ``"cls"`` (the normed cls token) or
    ``"avg"`` (mean of the patch tokens, then ``fc_norm`` if set), the features ``forward`` returns.
    """

    def __init__(self, vit: nn.Module, pos_embed: Literal["learn", "sincos"] = "learn", mask_token: bool = False,
                 pool: Literal["cls", "avg"] = "cls", fc_norm: bool | None = None) -> None:
        super().__init__()
        if getattr(vit, "pos_embed", None) is not None and not getattr(vit, "no_embed_class", False):
            raise ValueError("MaskedViT needs a timm ViT built with no_embed_class=True (positions for patches only); "
                             "use selfsup.nets.build_vit")
        if pool == "cls" and getattr(vit, "cls_token", None) is None:
            raise ValueError("pool='cls' needs a class token; build the ViT with class_token=True or use pool='avg'")
        self.patch_embed = vit.patch_embed
        self.cls_token = vit.cls_token
        self.reg_token = vit.reg_token
        self.pos_embed = vit.pos_embed
        self.norm_pre = vit.norm_pre
        self.blocks = vit.blocks
        self.norm = vit.norm
        self.embed_dim = self.out_dim = vit.embed_dim
        self.num_prefix = int(vit.num_prefix_tokens)
        self.patch_size = int(self.patch_embed.patch_size[0])
        self.base_grid = tuple(int(g) for g in self.patch_embed.grid_size)
        self.pos_kind = pos_embed
        if pos_embed == "sincos":
            if self.pos_embed is None:
                raise ValueError("pos_embed='sincos' needs a ViT with a position embedding")
            with torch.no_grad():
                self.pos_embed.copy_(sincos_2d(self.base_grid, self.embed_dim)[None])
            self.pos_embed.requires_grad = False
        elif pos_embed != "learn":
            raise ValueError(f"pos_embed must be 'learn' or 'sincos', got {pos_embed!r}")
        self.mask_token: nn.Parameter | None = None
        if mask_token:
            self.add_mask_token()
        if pool not in ("cls", "avg"):
            raise ValueError(f"pool must be 'cls' or 'avg', got {pool!r}")
        self.pool_kind = pool
        use_fc_norm = pool == "avg" if fc_norm is None else fc_norm
        self.fc_norm = nn.LayerNorm(self.embed_dim, eps=1e-6) if use_fc_norm else nn.Identity()
        #: recompute each block's activations in the backward pass instead of storing them (:meth:`_block`)
        self.grad_checkpointing = False

    def no_weight_decay(self) -> set[str]:
        """Tokens and positions get no weight decay (MAE, BEiT: ``model.no_weight_decay()``)."""
        return {"cls_token", "reg_token", "pos_embed", "mask_token"}

    def add_mask_token(self) -> nn.Parameter:
        """The learned mask token of ``mode="replace"``, created (trunc-normal, std 0.02) if absent."""
        if self.mask_token is None:
            p = next(self.parameters())
            self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim, device=p.device, dtype=p.dtype))
            nn.init.trunc_normal_(self.mask_token, std=0.02)
        return self.mask_token

    # ------------------------------------------------------------------ the three stages

    def grid(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """The patch grid ``(h, w)`` of an image of ``image_hw`` pixels."""
        p = self.patch_size
        if image_hw[0] % p or image_hw[1] % p:
            raise ValueError(f"image size {tuple(image_hw)} is not a multiple of the patch size {p}")
        return image_hw[0] // p, image_hw[1] // p

    def positions(self, grid: tuple[int, int]) -> Tensor | None:
        """Positional embedding ``[1, h * w, D]`` of the patch tokens of a ``grid``, or None."""
        if self.pos_embed is None:
            return None
        if tuple(grid) == self.base_grid:
            return self.pos_embed
        if self.pos_kind == "sincos":
            return sincos_2d(tuple(grid), self.embed_dim).to(self.pos_embed)[None]
        from timm.layers import resample_abs_pos_embed

        return resample_abs_pos_embed(self.pos_embed, new_size=list(grid), old_size=list(self.base_grid),
                                      num_prefix_tokens=0)

    def embed(self, x: Tensor) -> Tensor:
        """Images ``[B, C, H, W]`` -> tokens ``[B, P + N, D]``: prefix tokens, then the patch tokens (row-major)
        with their positions added."""
        t = self.patch_embed(x)
        if t.dim() == 4:  # timm's dynamic size: [B, h, w, D]
            grid = (t.shape[1], t.shape[2])
            t = t.flatten(1, 2)
        else:
            grid = self.grid(tuple(x.shape[-2:]))
        pos = self.positions(grid)
        if pos is not None:
            t = t + pos
        return torch.cat([*self._prefix(t.shape[0]), t], 1) if self.num_prefix else t

    def _prefix(self, batch: int) -> list[Tensor]:
        out = []
        for tok in (self.cls_token, self.reg_token):
            if tok is not None:
                out.append(tok.expand(batch, -1, -1))
        return out

    def prefix(self, tokens: Tensor) -> Tensor:
        """The prefix tokens ``[B, P, D]`` (cls first, then registers)."""
        return tokens[:, : self.num_prefix]

    def patches(self, tokens: Tensor) -> Tensor:
        """The patch tokens ``[B, N', D]`` (every token after the prefix)."""
        return tokens[:, self.num_prefix:]

    def mask(self, tokens: Tensor, mask: Tensor | None,
             mode: Literal["drop", "replace", "keep"] = "drop") -> Tensor:
        """Mask the patch tokens of ``tokens`` (from :meth:`embed`); the prefix is untouched.

        - ``"drop"``: ``mask [B, N]`` bool, True = removed; every row must mask the same number of patches
          (the batch stays rectangular). The kept patches stay in their order.
        - ``"keep"``: ``mask [B, K]`` long, the patch indices (0..N-1) to keep, in the given order.
        - ``"replace"``: ``mask [B, N]`` bool; masked patches become ``mask_token`` + their position.

        ``mask=None`` (or an all-False mask) returns ``tokens`` unchanged.
        """
        if mask is None:
            return tokens
        patches, n = self.patches(tokens), tokens.shape[1] - self.num_prefix
        if mode == "keep":
            if mask.dim() != 2 or mask.shape[0] != tokens.shape[0] or mask.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"mode='keep' needs [B, K] integer patch indices, got {mask.dtype} {tuple(mask.shape)}")
            kept = patches.gather(1, mask.long().unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
            return torch.cat([self.prefix(tokens), kept], 1)
        if mask.dtype != torch.bool or tuple(mask.shape) != (tokens.shape[0], n):
            raise ValueError(f"mask must be bool [B, N] = [{tokens.shape[0]}, {n}] over the patch tokens (no prefix), "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        if mode == "drop":
            counts = (~mask).sum(1)
            if bool((counts != counts[0]).any()):
                raise ValueError("mode='drop' needs the same number of masked patches in every row (a rectangular "
                                 f"batch); got {counts.min().item()}..{counts.max().item()} kept")
            keep = (~mask).nonzero()[:, 1].view(mask.shape[0], -1)  # row-major: ascending per row
            return self.mask(tokens, keep, "keep")
        if mode == "replace":
            if self.mask_token is None:
                raise ValueError("mode='replace' needs a mask token; build MaskedViT(..., mask_token=True)")
            fill = self.mask_token.to(patches.dtype).expand(patches.shape[0], n, -1)
            pos = self.positions(self._square(n))
            if pos is not None:
                fill = fill + pos.to(patches.dtype)
            out = torch.where(mask.unsqueeze(-1), fill, patches)
            return torch.cat([self.prefix(tokens), out], 1)
        raise ValueError(f"mode must be 'drop', 'keep' or 'replace', got {mode!r}")

    def _square(self, n: int) -> tuple[int, int]:
        if n == self.base_grid[0] * self.base_grid[1]:
            return self.base_grid
        s = math.isqrt(n)
        if s * s != n:
            raise ValueError(f"cannot tell the grid of {n} patch tokens; use square images")
        return s, s

    def encode(self, tokens: Tensor, layers: Sequence[int] | None = None,
               ffn: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """``norm_pre``, the blocks, the final norm. With ``layers`` (block indices, negative from the end),
        also return those blocks' outputs (before the final norm), or with ``ffn=True`` their feed-forward
        outputs before the residual (data2vec 2.0), as ``(tokens, [outputs])``."""
        x = self.norm_pre(tokens)
        if layers is None:
            for b in self.blocks:
                x = self._block(b, x)
            return self.norm(x)
        depth = len(self.blocks)
        want = sorted({i % depth for i in layers})
        outs: dict[int, Tensor] = {}
        for i, b in enumerate(self.blocks):
            if ffn and i in want:
                x, outs[i] = self._block(b, x, ffn=True)
            else:
                x = self._block(b, x)
                if i in want:
                    outs[i] = x
        return self.norm(x), [outs[i % depth] for i in layers]

    def _block(self, b: nn.Module, x: Tensor, ffn: bool = False):
        """Block ``b`` on ``x`` (with ``ffn``: also its feed-forward output before the residual). With
        ``grad_checkpointing`` while training with gradients, the block's activations are not kept but
        recomputed in the backward pass (``torch.utils.checkpoint``, non-reentrant, the RNG state saved so
        that drop path draws the same paths again): about a third more compute for a fraction of the memory."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(_ffn_block if ffn else b, *((b, x) if ffn else (x,)), use_reentrant=False)
        return _ffn_block(b, x) if ffn else b(x)

    def pool(self, tokens: Tensor) -> Tensor:
        """Features ``[B, D]`` from encoded tokens: the cls token (``pool="cls"``) or ``fc_norm`` of the
        mean patch token (``pool="avg"``)."""
        if self.pool_kind == "cls":
            return self.fc_norm(tokens[:, 0])
        return self.fc_norm(self.patches(tokens).mean(1))

    def forward_tokens(self, x: Tensor, mask: Tensor | None = None, mode: str = "drop") -> Tensor:
        """``encode(mask(embed(x), mask, mode))``: the encoded tokens ``[B, P + N', D]``."""
        return self.encode(self.mask(self.embed(x), mask, mode))

    def forward(self, x: Tensor, mask: Tensor | None = None, mode: str = "drop") -> Tensor:
        """Pooled features ``[B, D]`` (the backbone interface every method and evaluator uses)."""
        return self.pool(self.forward_tokens(x, mask, mode))


def _ffn_block(b: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """A timm block's output and its feed-forward output before the residual (data2vec 2.0's targets)."""
    x = x + b.drop_path1(b.ls1(b.attn(b.norm1(x))))
    f = b.mlp(b.norm2(x))
    return x + b.drop_path2(b.ls2(f)), f


def build_vit(name: str, in_channels: int, image_size: int, patch_size: int | None = None,
              embed_dim: int | None = None, depth: int | None = None, num_heads: int | None = None,
              mlp_ratio: float | None = None, drop_path_rate: float = 0.0,
              drop_path: Literal["linear", "uniform"] = "linear", layer_scale: float | None = None,
              qk_norm: bool = False, registers: int = 0, class_token: bool = True, pool: Literal["cls", "avg"] = "cls",
              fc_norm: bool | None = None, pos_embed: Literal["learn", "sincos"] = "learn",
              freeze_patch_embed: bool = False, mask_token: bool = False,
              grad_checkpointing: bool = False) -> MaskedViT:
    """A :class:`MaskedViT` from a timm ViT name (e.g. ``vit_small_patch16_224``), no weights downloaded.

    ``None`` keeps the named model's value. ``drop_path``: ``"linear"`` (timm: 0 -> rate over depth; MAE,
    BEiT, iBOT) or ``"uniform"`` (DINOv2). ``layer_scale``: LayerScale init (DINOv2 1e-5; BEiT/SimMIM 0.1).
    ``registers``: DINOv2's register tokens (Darcet et al. 2024: 4). ``freeze_patch_embed``: MoCo v3's
    frozen random patch projection. ``grad_checkpointing``: activation checkpointing of every block
    (:meth:`MaskedViT._block`).
    """
    import timm

    kw: dict = dict(pretrained=False, num_classes=0, in_chans=in_channels, img_size=image_size, global_pool="",
                    class_token=class_token, no_embed_class=True, reg_tokens=registers, dynamic_img_size=True,
                    qk_norm=qk_norm, drop_path_rate=drop_path_rate if drop_path == "linear" else 0.0)
    if layer_scale is not None:
        kw["init_values"] = layer_scale
    for key, value in (("patch_size", patch_size), ("embed_dim", embed_dim), ("depth", depth),
                       ("num_heads", num_heads), ("mlp_ratio", mlp_ratio)):
        if value is not None:
            kw[key] = value
    vit = timm.create_model(name, **kw)
    if drop_path == "uniform":
        set_uniform_drop_path(vit.blocks, drop_path_rate)
    elif drop_path != "linear":
        raise ValueError(f"drop_path must be 'linear' or 'uniform', got {drop_path!r}")
    if freeze_patch_embed:
        freeze_patch_projection(vit.patch_embed)
    out = MaskedViT(vit, pos_embed=pos_embed, mask_token=mask_token, pool=pool, fc_norm=fc_norm)
    out.grad_checkpointing = grad_checkpointing
    return out


#: the frozen-feature readouts of a ViT (``eval.features``): the backbone's own pooling, the cls token, the mean
#: patch token, both, or DINOv2's linear-eval inputs (cls of the last 4 blocks, each normed, +- the mean patch)
VIT_FEATURES = ("pool", "cls", "avg", "cls_avg", "last4_cls", "last4_cls_avg")


class ViTFeatures(nn.Module):
    """A :class:`MaskedViT` read out as ``kind`` (one of :data:`VIT_FEATURES`) for frozen-feature probes.

    ``last4_*`` follow DINOv2's ``eval/linear.py`` (``create_linear_input``): the cls tokens of the last 4
    blocks, each through the final norm, concatenated, then (``_avg``) the mean patch token of the last block.
    ``avg`` is ``fc_norm`` of the mean patch token (MAE's fine-tuning readout): the ViT's own, else a new LayerNorm.
    """

    def __init__(self, vit: MaskedViT, kind: str) -> None:
        super().__init__()
        if kind not in VIT_FEATURES:
            raise ValueError(f"unknown ViT features {kind!r}; choose one of {', '.join(VIT_FEATURES)}")
        if kind != "avg" and kind != "pool" and vit.cls_token is None:
            raise ValueError(f"features {kind!r} need a cls token; this ViT has none (use 'avg' or 'pool')")
        self.backbone, self.kind = vit, kind  # ``backbone``: layer-wise lr decay sees through the wrapper
        # MAE fine-tunes fc_norm(mean patch token) (``--global_pool``); a ViT pretrained with cls pooling has none
        self.fc_norm = nn.LayerNorm(vit.embed_dim, eps=1e-6) if kind == "avg" and isinstance(vit.fc_norm, nn.Identity) \
            else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        vit, kind = self.backbone, self.kind
        if kind == "pool":
            return vit(x)
        tokens = vit.embed(x)
        if kind.startswith("last4"):
            n = min(4, len(vit.blocks))
            out, layers = vit.encode(tokens, layers=list(range(-n, 0)))
            parts = [vit.norm(t)[:, 0] for t in layers]
        else:
            out = vit.encode(tokens)
            parts = [out[:, 0]] if kind in ("cls", "cls_avg") else []
        if kind == "avg":
            return vit.fc_norm(self.fc_norm(vit.patches(out).mean(1)))
        if kind.endswith("avg"):
            parts.append(vit.patches(out).mean(1))
        return torch.cat(parts, 1)


def vit_features(backbone: nn.Module, kind: str) -> nn.Module:
    """``backbone`` itself for ``kind="pool"``, else a :class:`ViTFeatures` readout of it (a MaskedViT)."""
    if kind == "pool":
        return backbone
    if not isinstance(backbone, MaskedViT):
        raise ValueError(f"eval features {kind!r} need a ViT backbone; {type(backbone).__name__} has only its pooled "
                         f"features (eval.features=[pool])")
    return ViTFeatures(backbone, kind)
