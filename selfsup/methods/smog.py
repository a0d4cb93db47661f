"""SMoG, synchronous momentum grouping (Pang et al., 2022, "Unsupervised Visual Representation Learning by
Synchronous Momentum Grouping", ECCV, arXiv 2207.06167): the online network's prediction of one view must
pick, among K group features, the group of the momentum encoder's projection of the other view
(:func:`selfsup.losses.smog_loss`); the groups move with momentum beta inside each step, towards the mean
online projection of their members (:func:`selfsup.losses.smog_group_update`).

The defaults are lightly's ``examples/pytorch/smog.py`` and CIFAR-10 benchmark: projector 2048-128 ending in
BatchNorm, predictor 2048-128, K = 300 groups initialised to normalised uniform noise, beta 0.99, tau 0.1, a
momentum encoder at 0.99; one direction per step, the views swapped on every other step; every ``reset_every`` =
300 steps the groups are re-initialised by k-means of a memory bank of recent online projections and the
momentum encoder is reset to the online network. The k-means is spherical (lightly runs scikit-learn's Euclidean
k-means and normalises the centres), from K bank rows drawn by a generator seeded by ``kmeans_seed`` (a buffer
drawn from the run's seed) and the step, so every process and a resumed run get the same groups. Groups, bank,
seed and step are buffers: checkpoints resume exactly; under DDP the group update, the bank and the k-means use
the global batch.

The official code (``main_SMoG.py`` in ``files/SMoG_code.zip`` of github.com/BoPang1996/BoPang1996.github.io, the
paper's project page; the paper's text could not be opened here) differs from lightly's; two of its choices are
options:

- ``group_init: kmeans``: before step 1 it fills a memory bank with the online projections of the training set
  (``init_memory``) and sets the groups to their spherical k-means, 10 rounds from random bank rows
  (``cluster_memory``). Here :meth:`prepare` does so on ``bank_size`` training images (the trainer's seeded sample,
  un-augmented; BatchNorm with batch statistics, its running statistics restored), through :meth:`reset_groups`.
- ``symmetric: true``: every online crop's prediction is scored against the group of every momentum crop (the
  loss sums over the momentum crops, no crop pairs with itself). With two views: view a against view b's target
  and view b against view a's, averaged, in one online pass over both views (BatchNorm over 2n rows, as the
  official code's same-size crops); the groups move once, by both views' online projections.

Three more of its choices are options (defaults lightly's, which smog.yaml keeps; smog_digits sets all three):

- ``group_update: normalized``: the group update averages the L2-normalised online projections and renormalises
  the groups (:func:`selfsup.losses.smog_group_update` with ``normalize=True``).
- ``beta_schedule: linear``: the group momentum falls linearly from 1.0 at the start of training to ``beta`` at
  the end, 1 - (1 - beta) * progress (:meth:`group_beta`; lightly's is a constant beta).
- ``detach_groups: true``: predictions are scored against the updated groups detached
  (``MultiPrototypes.forward``), although the official README says gradients pass through the group features
  (lightly's, the default, lets them).

Not an option: the official code re-clusters the whole-dataset memory and resets the momentum encoder at every
epoch (``reset_every`` = steps per epoch comes closest).

**Digits** (kNN top-1 of tests/test_catalogue_learning.py's short run: 2 epochs of 44 steps at batch 64, seeds
0 / 1 / 2, random init 0.497 / 0.506 / 0.516; 1 thread; benchmarks/smog_groups.py, and broken_pairs_knn.py
``--brk permviews`` for the break: view 1 of each pair from another image). The kNN reads ``self.backbone``, the
online encoder (the one lightly and the paper keep). Lightly's step: the recipe's lightly settings +0.012 / -0.012
/ +0.021, and over ~40 settings (beta, temperature, 10-256 groups, momentum, lr, resets every 5-50 steps, 4-8
epochs) none clears MARGIN 0.04 on more than one seed. The groups do not collapse (26-27 distinct target groups
per batch at step 0, 15-18 at step 44; of 128 or 256 uniform-noise groups only 20-25 are ever picked), but at
random init the two views of an image share a group for only 0.02-0.11 of the batch (chance 1/30 = 0.03), so the
targets hardly depend on the image. The two official options alone do not change that (29 of 30 groups used at
step 0, views sharing one for 0.06-0.11): +0.019 / +0.002 / -0.057, the break +0.008 / +0.037 / +0.009; with
momentum 0.99 and resets every epoch (22 steps) +0.040 / +0.013 / +0.013; longer is worse (4 epochs: seed 2
-0.075; 6 epochs: seed 1 -0.062). What the random-init groups lose is the crop: at crops 0.8-1 without colour jitter
the views share a group for 0.12-0.27 of the batch at step 0 (seeds 2-4), and the two options gain +0.097 / +0.062 / +0.047 (seeds 3 / 4: +0.038
/ +0.117) against the break's -0.015 / +0.040 / -0.037 (-0.066 / +0.019); with those views lightly's step gains
+0.064 / +0.051 / -0.008, k-means init alone +0.065 / +0.053 / -0.019, both directions alone +0.056 / +0.050 /
+0.025. smog_digits therefore sets both options, and its learning test (tests/test_joint_b.py) takes the mean of
seeds 0-2 at those views, since a single seed's gain moves by ~0.04. The full smog_digits run (``selfsup train
--recipe smog_digits``, 30 epochs x 5 steps at 32 px, seed 0, 1 thread, loaded machine, 8.5 min): kNN k=20 0.900,
linear probe 0.964, against 0.900 / 0.950 at random init; with the milder views at full length kNN 0.858, linear
0.964 (7.2 min), so the recipe keeps its views; with lightly's step (``group_init: uniform``, ``symmetric: false``)
0.886 / 0.947 (4.4 min). With the three options above as well (the recipe since session 10; 1 thread, ~5.3
min each): seed 0 kNN 0.936 / linear 0.969, seed 1 0.897 / 0.950, seed 2 0.886 / 0.956, against the two options
alone 0.900 / 0.964, 0.886 / 0.939, 0.867 / 0.969 and random init 0.900 / 0.950, 0.858 / 0.947, 0.892 / 0.947
(kNN below random init at seed 2; random init: ``torch.manual_seed(seed)``,
``build_method``, the recipe's probes, as benchmarks/mim_table.py). In the short run they give +0.033 / +0.089 /
+0.031 (seeds 3 / 4: +0.026 / +0.078), the break +0.019 / +0.010 / -0.014 (-0.038 / +0.026). One left out at
a time (seed 0): ``detach_groups=false`` 0.917 / 0.936, ``group_update=raw`` 0.936 / 0.953.
Those full runs had 30 groups; at seeds 3 / 4 30 groups fell below random init (kNN -0.017 / -0.122), and
``smog_digits`` now keeps the paper recipe's 300 (kNN minus random init -0.003 / +0.056 / -0.008 / +0.014 / +0.033
at seeds 0-4; README, the SMoG paragraph).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from selfsup.losses import smog_assign, smog_loss, spherical_kmeans
from selfsup.methods.base import Method, MethodConfig
from selfsup.nets import EMA, MemoryBank, initial_features, mlp, out_dim


class SMoGConfig(MethodConfig):
    name: Literal["smog"] = "smog"
    projector: str = Field("2048-128", description="projection head widths (hidden BN-ReLU, output BatchNorm)")
    predictor: str = Field("2048-128", description="prediction head widths, hidden-...-output")
    n_groups: int = Field(300, ge=2, description="number of group features K")
    beta: float = Field(0.99, ge=0, lt=1, description="momentum of the synchronous group-feature update")
    temperature: float = Field(0.1, gt=0, description="temperature tau of the group logits")
    momentum: float = Field(0.99, ge=0, le=1, description="momentum of the momentum encoder (constant)")
    reset_every: int = Field(300, ge=0, description="steps between k-means resets of the groups and of the "
                                                    "momentum encoder (0: never)")
    bank_size: int = Field(10000, gt=0, description="recent online projections kept for the k-means reset")
    kmeans_iters: int = Field(10, ge=1, description="spherical k-means iterations at each reset (and at the "
                                                    "k-means initialisation)")
    group_init: Literal["uniform", "kmeans"] = Field(
        "uniform", description="initial groups: uniform (normalised uniform noise, lightly's) or kmeans (the "
                               "official code's: spherical k-means of the online projections of bank_size training "
                               "images before step 1, from rows drawn by a generator seeded by kmeans_seed)")
    symmetric: bool = Field(False, description="false: one direction per step, the views swapped every other step "
                                               "(lightly's); true: each view's prediction against the other view's "
                                               "target group every step, the two averaged (the official code's)")
    group_update: Literal["raw", "normalized"] = Field(
        "raw", description="raw: groups move towards the mean raw online projection of their members (lightly's); "
                           "normalized: towards the mean L2-normalised projection, the groups renormalised after "
                           "each update (the official code's main_SMoG.py)")
    beta_schedule: Literal["constant", "linear"] = Field(
        "constant", description="constant: the group momentum is beta throughout (lightly's); linear: it falls "
                                "linearly from 1.0 at the start of training to beta at the end, "
                                "1 - (1 - beta) * progress (the official code's main_SMoG.py)")
    detach_groups: bool = Field(False, description="false: the loss reaches the online projections through the "
                                                   "updated groups too (lightly's); true: predictions are scored "
                                                   "against the updated groups detached (the official code's "
                                                   "MultiPrototypes.forward)")


class SMoG(Method):
    Config = SMoGConfig
    default_views = "byol"
    teacher_attr = "teacher"  # evaluated: the online encoder
    regularizable = True  # method.regularizers act on the online z (and the momentum t, CO2's second view)
    no_accumulation_reason = ("its group features move synchronously inside each step, with the whole batch; "
                              "there is no embed/objective split")

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: SMoGConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        if out_dim(cfg.predictor) != out_dim(cfg.projector):
            raise ValueError(f"smog: predictor '{cfg.predictor}' must end with the projector's width "
                             f"{out_dim(cfg.projector)}")
        if cfg.group_init == "kmeans" and cfg.bank_size < cfg.n_groups:
            raise ValueError(f"smog: group_init kmeans clusters bank_size={cfg.bank_size} images into "
                             f"n_groups={cfg.n_groups}; raise method.bank_size or lower method.n_groups")
        d = out_dim(cfg.projector)
        self.projector = mlp(feat_dim, cfg.projector, last_norm=True)
        self.predictor = mlp(d, cfg.predictor)
        self.teacher = EMA(nn.Sequential(self.backbone, self.projector))
        self.register_buffer("groups", F.normalize(torch.rand(cfg.n_groups, d), dim=1))
        self.register_buffer("kmeans_seed", torch.randint(0, 2**62, (), dtype=torch.int64))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.bank = MemoryBank(cfg.bank_size, d)
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self.prepare_images = cfg.bank_size if cfg.group_init == "kmeans" else 0

    @torch.no_grad()
    def prepare(self, images, run_dir=None) -> dict[str, float]:
        """``group_init: kmeans``: the bank := the online projections of ``images`` (training images, BatchNorm
        with batch statistics, its running statistics left as they were), the groups := their spherical k-means
        (:meth:`reset_groups`), as the official code's ``init_memory`` and first ``cluster_memory``."""
        online = nn.Sequential(self.backbone, self.projector)
        self.bank.enqueue(initial_features(online, online, images), distributed=False)
        if int(self.bank.count) < self.cfg.n_groups:
            raise ValueError(f"smog: group_init kmeans got {int(self.bank.count)} training images for "
                             f"n_groups={self.cfg.n_groups} groups; lower method.n_groups or use group_init uniform")
        self.reset_groups()
        x = F.normalize(self.bank.get(), dim=1)
        return {"groups_used": float(smog_assign(x, self.groups).unique().numel())}

    def group_beta(self, progress: float) -> float:
        """The group momentum at ``progress`` (the fraction of training done): ``beta``, or with ``beta_schedule:
        linear`` 1 - (1 - beta) * progress, from 1.0 at the start to ``beta`` at the end."""
        if self.cfg.beta_schedule == "linear":
            return 1.0 - (1.0 - self.cfg.beta) * float(progress)
        return self.cfg.beta

    def _loss(self, p, z, t, progress):
        return smog_loss(p, z, t, self.groups, self.group_beta(progress), self.cfg.temperature,
                         normalize=self.cfg.group_update == "normalized", detach_groups=self.cfg.detach_groups)

    def forward(self, views, progress=0.0, labels=None):
        if self.cfg.symmetric:  # both directions: row i of the online half is paired with the other view's target
            n = views[0].shape[0]
            h = self.backbone(torch.cat(views[:2]))
            z = self.projector(h)
            with torch.no_grad():
                t = self.teacher(torch.cat([views[1], views[0]]))
            loss, groups = self._loss(self.predictor(z), z, t, progress)
            self._pending = (groups.detach(), z[:n].detach())
            return self.regularize({"loss": loss, "feats": h[:n].detach(), "emb": z[:n].detach()}, [z[:n], t[:n]])
        a, b = (views[1], views[0]) if int(self.step) % 2 else (views[0], views[1])  # lightly swaps every other step
        h = self.backbone(a)
        z = self.projector(h)
        p = self.predictor(z)
        with torch.no_grad():
            t = self.teacher(b)
        loss, groups = self._loss(p, z, t, progress)
        self._pending = (groups.detach(), z.detach())
        return self.regularize({"loss": loss, "feats": h.detach(), "emb": z.detach()}, [z, t])

    @torch.no_grad()
    def after_step(self, progress: float) -> dict[str, float]:
        if self._pending is not None:
            groups, z = self._pending
            self.groups.copy_(groups)
            self.bank.enqueue(z)
            self._pending = None
        self.step += 1
        online = nn.Sequential(self.backbone, self.projector)
        if self.cfg.reset_every and int(self.step) % self.cfg.reset_every == 0:
            self.reset_groups()
            self.teacher.update(online, 0.0)  # the momentum encoder restarts from the online network
            return {"momentum": 0.0, "group_reset": 1.0}
        self.teacher.update(online, self.cfg.momentum)
        return {"momentum": self.cfg.momentum}

    @torch.no_grad()
    def reset_groups(self) -> None:
        """Groups := spherical k-means centroids of the memory bank, initialised from K bank rows drawn with a
        generator seeded by ``kmeans_seed`` and the step (the same on every process and on resume)."""
        x = F.normalize(self.bank.get(), dim=1)
        if x.shape[0] < self.cfg.n_groups:
            return
        g = torch.Generator().manual_seed(int(self.kmeans_seed) ^ int(self.step))
        init = x[torch.randperm(x.shape[0], generator=g)[: self.cfg.n_groups].to(x.device)]
        centroids, _ = spherical_kmeans(x, init, self.cfg.kmeans_iters, distributed=False)
        self.groups.copy_(centroids)
