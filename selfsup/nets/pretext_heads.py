"""The classifier heads of the spatial pretext tasks: late fusion of per-tile backbone features (Noroozi & Favaro
2016's context-free network, Doersch et al. 2015's pair network)."""

from __future__ import annotations

import torch
import torch.nn as nn

from selfsup.nets.heads import mlp


class TileClassifier(nn.Module):
    """``feats [B, T, D]`` (one backbone feature per tile, in their shown order) -> logits ``[B, classes]``: a
    per-tile ``Linear(D, tile_dim) + ReLU`` shared by all tiles (fc6), the ``T`` outputs concatenated, then an MLP
    with hidden widths ``hidden`` (``"4096"``: fc7; ``""``: none) to the classes (fc8). No normalisation layers, as
    the papers' AlexNet heads."""

    def __init__(self, feat_dim: int, tiles: int, tile_dim: int, hidden: str, classes: int) -> None:
        super().__init__()
        self.tiles = tiles
        self.tile_fc = nn.Sequential(nn.Linear(feat_dim, tile_dim), nn.ReLU(inplace=True))
        self.fuse = mlp(tiles * tile_dim, f"{hidden}-{classes}" if hidden else classes, norm="none")

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if feats.dim() != 3 or feats.shape[1] != self.tiles:
            raise ValueError(f"TileClassifier expects [B, {self.tiles}, D] features, got {tuple(feats.shape)}")
        return self.fuse(self.tile_fc(feats).flatten(1))
