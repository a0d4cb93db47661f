"""SelfPatch's matching-aggregation module (Yun et al., CVPR 2022, Sec. 3.2): class-attention blocks
(CaiT, Touvron et al. 2021) in which a learned token attends to a set of patch tokens.

Two uses, as in the official ``SelfPatchHead``: :meth:`MatchingAggregation.summary` lets the token
attend to every patch of an image (the image-level representation DINO's CLS loss trains), and
:meth:`MatchingAggregation.aggregate` lets one token per patch attend to that patch's positives only
(``[B, N, k]`` indices with a validity mask), giving the aggregated positive :math:`y_i` of patch
:math:`i`. Both outputs, and the patch tokens the student compares with them (:meth:`norm`), pass the
module's final LayerNorm. Official sizes: 2 blocks, MLP ratio 4, the backbone's heads, LayerNorm eps 1e-6.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ClassAttentionBlock", "MatchingAggregation"]


class ClassAttentionBlock(nn.Module):
    """``c <- c + Attn(LN([c, x]))[c]; c <- c + MLP(LN(c))``: only the class token ``c`` is updated; the
    keys and values are ``[c, x]``. ``valid [B, n]`` (True = attend) masks patch tokens; ``c`` is always kept."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"ClassAttentionBlock: width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, cls: Tensor, valid: Tensor | None = None) -> Tensor:
        b, n, d = x.shape
        u = self.norm1(torch.cat([cls, x], 1))  # [B, 1 + n, D]
        heads = lambda t: t.reshape(b, t.shape[1], self.num_heads, d // self.num_heads).transpose(1, 2)
        mask = None
        if valid is not None:
            mask = torch.cat([valid.new_ones(b, 1), valid], 1).view(b, 1, 1, n + 1)
        a = F.scaled_dot_product_attention(heads(self.q(u[:, :1])), heads(self.k(u)), heads(self.v(u)), attn_mask=mask)
        cls = cls + self.proj(a.transpose(1, 2).reshape(b, 1, d))
        return cls + self.mlp(self.norm2(cls))


class MatchingAggregation(nn.Module):
    """A learned token, ``depth`` :class:`ClassAttentionBlock` s and a final LayerNorm (module docstring).
    Linear weights truncated-normal std 0.02, biases 0, the token truncated-normal std 0.02 (official init)."""

    def __init__(self, dim: int, num_heads: int, depth: int = 2, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(ClassAttentionBlock(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.final_norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    def _attend(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        c = self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype)
        for blk in self.blocks:
            c = blk(x, c, valid)
        return self.final_norm(c[:, 0])

    def summary(self, tokens: Tensor) -> Tensor:
        """``[B, N, D]`` patch tokens -> ``[B, D]``: the token after attending to every patch."""
        return self._attend(tokens)

    def aggregate(self, tokens: Tensor, index: Tensor, valid: Tensor) -> Tensor:
        """``[B, N, D]`` tokens, positives ``index``/``valid`` ``[B, N, k]`` -> ``[B, N, D]``: for each patch, the
        token after attending to that patch's valid positives only."""
        b, n, d = tokens.shape
        k = index.shape[-1]
        pos = tokens.gather(1, index.reshape(b, n * k, 1).expand(-1, -1, d)).reshape(b * n, k, d)
        return self._attend(pos, valid.reshape(b * n, k)).reshape(b, n, d)

    def norm(self, tokens: Tensor) -> Tensor:
        """The final LayerNorm alone (the student's patch tokens, as the official ``SelfPatchHead``)."""
        return self.final_norm(tokens)
