"""Prefix-causal attention for a :class:`selfsup.nets.vit.MaskedViT` (AIM's PrefixLM, NEPA's causal ViT).

timm's ViT blocks take an additive ``attn_mask``; :func:`causal_encode` runs ``norm_pre``, the blocks under the
mask of :func:`prefix_causal_mask`, and the final norm, the same modules as ``MaskedViT.encode`` (so the weights
are the bidirectional encoder's, which downstream evaluation runs without a mask).
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor


def prefix_causal_mask(prefix_len: Tensor, n: int) -> Tensor:
    """Boolean ``[B, N, N]``: query ``i`` may attend to key ``j`` iff ``j <= i`` or ``j < S_b`` (PrefixLM;
    ``prefix_len`` ``[B]`` holds each sequence's :math:`S_b`, 0 or 1 for plain causal attention)."""
    j = torch.arange(n, device=prefix_len.device)
    return (j[None, :] <= j[:, None])[None] | (j[None, None, :] < prefix_len.view(-1, 1, 1))


def check_masked_blocks(vit: torch.nn.Module, method: str) -> None:
    """A one-line error when this timm's ViT blocks take no attention mask."""
    if "attn_mask" not in inspect.signature(vit.blocks[0].forward).parameters:
        raise ValueError(f"{method} needs timm ViT blocks that take an attention mask (attn_mask; this timm's do "
                         f"not): pip install -U timm")


def causal_encode(vit: torch.nn.Module, tokens: Tensor, prefix_len: Tensor) -> Tensor:
    """``vit.norm(blocks(norm_pre(tokens)))`` with every block under the prefix-causal mask of ``prefix_len``
    (over all ``tokens``, prefix tokens such as a cls token included). The mask is additive (0 / -inf) so that
    timm's fused and plain attention paths agree."""
    allowed = prefix_causal_mask(prefix_len, tokens.shape[1])
    bias = torch.zeros(allowed.shape, dtype=tokens.dtype, device=tokens.device)
    bias = bias.masked_fill(~allowed, float("-inf"))[:, None]
    h = vit.norm_pre(tokens)
    for blk in vit.blocks:
        h = blk(h, attn_mask=bias)
    return vit.norm(h)
