"""DeepCluster-v2 (Caron et al., 2020, the SwAV paper's improved DeepCluster): at the start of every
epoch, spherical k-means on a memory bank of last epoch's projections gives each image a pseudo-label
per clustering; during the epoch, prototypes fixed to the centroids classify every crop of the image
into its label (cross-entropy, temperature 0.1).

Recipe defaults (official script, ImageNet, 800 epochs): batch 4096, LARS (trust coefficient 0.001)
on every parameter, weight decay 1e-6, lr 4.8 (0.3 x batch/256) with 10 warmup epochs then cosine to
0.0048; projector 2048-128 with L2-normalised output; three k-means of 3000 clusters each, 10
iterations, on the projections of the two global crops (clustering h uses crop h mod 2); prototypes
set to the centroids and never trained (``freeze_prototypes_niters`` exceeds the run); multi-crop
2 x 224 (scale 0.14-1) + 6 x 96 (0.05-0.14) with SwAV's colour distortion, blur p 0.5 and no solarization
(``views.kind: swav_multicrop``). The bank holds the whole training set.

The official code fills the bank with a pass over the data before training; here the first epoch
fills it (its loss is zero, no pseudo-labels exist yet) and clustering starts at the second epoch.
Pseudo-labels are looked up by dataset row index: the trainer passes ``indices`` (``needs_indices``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, PositiveInt

from selfsup.losses.clustering import nearest_prototype, spherical_kmeans
from selfsup.losses.distributed import is_distributed, rank, world_size
from selfsup.methods.base import Method, MethodConfig, encode_views, n_global_views
from selfsup.nets import MemoryBank, mlp, out_dim
from selfsup.nets.prototypes import Prototypes


class DeepClusterV2Config(MethodConfig):
    name: Literal["deepcluster_v2"] = "deepcluster_v2"
    projector: str = Field("2048-128", description="projection head widths, hidden-...-output (selfsup.nets.mlp)")
    nmb_prototypes: list[PositiveInt] = Field(default_factory=lambda: [3000, 3000, 3000], min_length=1,
                                    description="number of clusters of each k-means")
    temperature: float = Field(0.1, gt=0, description="softmax temperature of the prototype scores")
    kmeans_iters: int = Field(10, ge=1, description="k-means iterations at the start of each epoch")
    n_assign: int = Field(2, ge=1, description="global crops whose projections are stored and clustered")
    memory_size: int = Field(1_281_167, gt=0, description="projections kept per crop; at least the training set "
                             "size so each epoch's k-means sees every image (ImageNet: 1,281,167)")
    seed: int = Field(0, description="seed of the k-means initialisations (offset by epoch and clustering)")


class DeepClusterV2(Method):
    Config = DeepClusterV2Config
    no_accumulation_reason = "its forward writes the batch into the memory bank"
    default_views = "swav_multicrop"
    needs_indices = True

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: DeepClusterV2Config, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        if max(cfg.nmb_prototypes) > cfg.memory_size:
            raise ValueError(f"deepcluster_v2: memory_size={cfg.memory_size} is smaller than the largest number of "
                             f"clusters {max(cfg.nmb_prototypes)}; raise method.memory_size")
        self.projector = mlp(feat_dim, cfg.projector)
        self.dim = out_dim(cfg.projector)
        self.prototypes = nn.ModuleList([Prototypes(self.dim, k).requires_grad_(False) for k in cfg.nmb_prototypes])
        self.bank = MemoryBank(cfg.memory_size, cfg.n_assign * self.dim, with_labels=True)  # labels = row indices
        # this epoch's pseudo-labels, as buffers so that a mid-epoch checkpoint keeps them: the first
        # ``n_labelled`` entries of ``label_keys`` are the sorted dataset rows that have one, and
        # ``label_targets[h, i]`` is row ``label_keys[i]``'s cluster in clustering ``h``
        self.register_buffer("label_keys", torch.zeros(cfg.memory_size, dtype=torch.long))
        self.register_buffer("label_targets", torch.zeros(len(cfg.nmb_prototypes), cfg.memory_size, dtype=torch.long))
        self.register_buffer("n_labelled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def before_epoch(self, epoch: int) -> dict[str, float]:
        """Cluster the bank (each image once, its newest projections) and set the prototypes."""
        self.n_labelled.zero_()
        m = int(self.bank.count)
        if m < max(self.cfg.nmb_prototypes):
            return {"kmeans_images": float(m)}
        x, idx = self.bank.get(), self.bank.get_labels()
        age = (int(self.bank.ptr) - 1 - torch.arange(m, device=idx.device)) % self.bank.size
        order = torch.argsort(idx * self.bank.size + age)  # by image, newest entry first
        first = torch.ones(m, dtype=torch.bool, device=idx.device)
        first[1:] = idx[order][1:] != idx[order][:-1]
        keep = order[first]
        keys, x = idx[keep], x[keep]
        if len(keys) < max(self.cfg.nmb_prototypes):
            return {"kmeans_images": float(len(keys))}
        r, ws = (rank(), world_size()) if is_distributed() else (0, 1)
        targets, used = [], []
        for h, (head, k) in enumerate(zip(self.prototypes, self.cfg.nmb_prototypes)):
            j = h % self.cfg.n_assign
            xj = x[:, j * self.dim:(j + 1) * self.dim]
            gen = torch.Generator().manual_seed(self.cfg.seed + 1000 * epoch + h)
            init = xj[torch.randperm(len(xj), generator=gen)[:k].to(xj.device)]
            # each rank runs the iterations on its share of rows; sums and counts are all-reduced
            centroids, _ = spherical_kmeans(xj[r::ws], init, self.cfg.kmeans_iters)
            head.set_(centroids)
            a = nearest_prototype(xj, centroids)
            targets.append(a)
            used.append(float(torch.unique(a).numel()))
        n = len(keys)
        self.label_keys[:n], self.label_targets[:, :n] = keys, torch.stack(targets)
        self.n_labelled.fill_(n)
        return {"kmeans_images": float(len(keys)), "kmeans_clusters_used": sum(used) / len(used)}

    def _lookup(self, indices: torch.Tensor) -> torch.Tensor | None:
        """Pseudo-labels ``[n_clusterings, B]`` of the batch (-100 where an image has none)."""
        n = int(self.n_labelled)
        if n == 0:
            return None
        keys = self.label_keys[:n]
        pos = torch.searchsorted(keys, indices.contiguous()).clamp_max(n - 1)
        t = self.label_targets[:, :n][:, pos]
        return t.masked_fill(keys[pos] != indices, -100)

    def forward(self, views, progress=0.0, labels=None, indices=None):
        """``indices``: the dataset row index of every sample (to look up its pseudo-labels)."""
        if indices is None:
            raise ValueError("deepcluster_v2 needs the dataset row index of each sample: call "
                             "method(views, progress, labels, indices=...) (the selfsup trainer does)")
        n_global = n_global_views(views)
        if self.cfg.n_assign > n_global:
            raise ValueError(f"deepcluster_v2: n_assign={self.cfg.n_assign} exceeds the {n_global} global views; "
                             f"lower method.n_assign or raise views.params.n_global")
        h = encode_views(self.backbone, views)
        z = F.normalize(self.projector(torch.cat(h)), dim=1)  # one head pass over all crops
        b, v = views[0].shape[0], len(views)
        targets = self._lookup(indices)
        if targets is None:  # first epoch: the bank is being filled, no pseudo-labels yet
            loss = z.sum() * 0.0
            labelled = z.new_zeros(())
        else:
            loss = 0.0
            zf = z.float()
            for head, t in zip(self.prototypes, targets):
                with torch.autocast(z.device.type, enabled=False):
                    logits = head(zf) / self.cfg.temperature
                ce = F.cross_entropy(logits, t.repeat(v), ignore_index=-100, reduction="sum")
                loss = loss + ce / (b * v)  # images without a label count as 0: exact mean under DDP
            loss = loss / len(self.prototypes)
            labelled = (targets[0] >= 0).float().mean()
        if self.training:
            zc = z.detach().chunk(v)
            self.bank.enqueue(torch.cat(zc[:self.cfg.n_assign], 1).float(), indices)
        return {"loss": loss, "feats": h[0].detach(), "emb": z[:b].detach(), "labelled": labelled}

    def param_groups(self) -> list[dict]:
        """One group: the official code applies weight decay and LARS adaptation to every parameter."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]
