"""What every method shares: its config base and the small ``Method`` interface.

A method owns its modules and turns one batch of views into a loss. The trainer
calls, in plain sight, ``out = method(views, progress, labels)``, then
``loss.backward()``, ``method.on_backward(progress)``, the optimizer step, and
``method.after_step(progress)`` (teacher and queue updates). ``progress`` is the
fraction of training done, in [0, 1]; schedules are functions of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
import torch.nn as nn
from pydantic import Field

from selfsup.methods.regularizers import RegularizersConfig, add_regularizers
from selfsup.schema import Section

if TYPE_CHECKING:
    from selfsup.nets.vit import MaskedViT


class MethodConfig(Section):
    """Hyperparameters of one method; subclasses fix ``name`` to a literal."""

    name: str
    regularizers: RegularizersConfig = Field(default_factory=RegularizersConfig,
                                             description="KoLeo / CO2 added to this method's loss on its live view "
                                                         "embeddings (selfsup.methods.regularizers); 0: off")


def encode_views(encoder: nn.Module, views: list[torch.Tensor]) -> list[torch.Tensor]:
    """Run ``encoder`` once per run of consecutive same-resolution views (one big batch each).

    Multi-crop's global and local crops thus cost two forward passes, as in DINO.
    """
    out: list[torch.Tensor] = []
    i = 0
    while i < len(views):
        j = i + 1
        while j < len(views) and views[j].shape[-2:] == views[i].shape[-2:]:
            j += 1
        feats = encoder(torch.cat(views[i:j], 0))
        out.extend(feats.chunk(j - i, 0))
        i = j
    return out


def n_global_views(views: list[torch.Tensor]) -> int:
    """Number of leading views at the first view's resolution (multi-crop's global crops)."""
    n = 1
    while n < len(views) and views[n].shape[-2:] == views[0].shape[-2:]:
        n += 1
    return n


def require_vit(backbone: nn.Module, method: str) -> "MaskedViT":
    """``backbone`` if it is a :class:`MaskedViT`, else a one-line ValueError naming the fix."""
    from selfsup.nets.vit import MaskedViT

    if not isinstance(backbone, MaskedViT):
        raise ValueError(f"{method} needs a ViT backbone (selfsup.nets.MaskedViT), got {type(backbone).__name__}; set "
                         f"model.backbone=timm:vit_tiny_patch16_224 (or another timm:vit_* name)")
    return backbone


def fresh_generator() -> torch.Generator:
    """A CPU generator seeded from torch's global RNG, for masks drawn outside the trainer."""
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))


def accumulation_problem(method: "type[Method] | Method", k: int, batch_size: int, world_size: int = 1) -> str | None:
    """The one-line problem with ``train.accumulate=k`` for this method and effective batch, or None."""
    if k == 1:
        return None
    name = method.Config.model_fields["name"].default
    if method.accumulation is None:
        from selfsup.methods import METHODS  # the mapping imports this module

        modes = {mode: ", ".join(n for n, m in METHODS.items() if m.accumulation == mode) for mode in ("exact", "plain")}
        return (f"train.accumulate={k}: {name} cannot accumulate, {method.no_accumulation_reason}; set "
                f"train.accumulate=1 (exact: {modes['exact']}; plain: {modes['plain']})")
    if batch_size % (k * world_size):
        return (f"data.batch_size={batch_size} must divide by train.accumulate={k} x {world_size} process(es); "
                f"choose a multiple of {k * world_size}")
    return None


def regularizer_problem(method: "type[Method]", cfg: MethodConfig, k: int = 1) -> str | None:
    """The one-line problem with ``cfg.regularizers`` for this method class and ``train.accumulate=k``, or None."""
    regs = getattr(cfg, "regularizers", None)
    if regs is None or not regs.active():
        return None
    if not method.supports_regularizers():
        return (f"method.regularizers: {cfg.name} does not expose its live view embeddings (Method.regularize), so "
                f"KoLeo/CO2 cannot be added to it; set method.regularizers.koleo=0 and co2=0")
    if k > 1 and method.accumulation != "exact":
        return (f"method.regularizers with train.accumulate={k}: {cfg.name} accumulates micro-batches separately, "
                f"which would regularise each micro-batch alone; set train.accumulate=1")
    return None


class Method(nn.Module):
    """Base class: subclasses define ``Config``, ``__init__`` and ``forward``."""

    Config: ClassVar[type[MethodConfig]]
    #: the views this method needs by default (a ``views.kind``)
    default_views: ClassVar[str] = "simclr"
    #: whether ``forward`` needs labels (SupCon)
    needs_labels: ClassVar[bool] = False
    #: whether ``forward`` needs each sample's dataset row index, passed as ``indices=`` (DeepCluster-v2)
    needs_indices: ClassVar[bool] = False
    #: the encoder the paper evaluates (``eval.encoder: null``): the online/query network or the EMA teacher
    eval_encoder: ClassVar[Literal["student", "teacher"]] = "student"
    #: the attribute holding the EMA teacher (an ``EMA`` of ``Sequential(backbone, head)``); None: no teacher
    teacher_attr: ClassVar[str | None] = None
    #: the frozen-feature readouts the paper probes (``eval.features: null``; see selfsup.nets.vit.VIT_FEATURES):
    #: the first is used by every protocol, the others get a linear probe each (DINOv2's grid)
    eval_features: ClassVar[tuple[str, ...]] = ("pool",)
    #: the paper's linear probe (``eval.linear_*: null``): keyword arguments of selfsup.eval.linear_probe
    linear_probe: ClassVar[dict] = {}
    #: the readout fine-tuning starts from (``eval.finetune_features: null``); MAE fine-tunes the mean patch token
    finetune_features: ClassVar[str] = "pool"
    #: how many training images :meth:`prepare` wants before the first epoch of a new run (0: no call);
    #: an instance may set it from its config (BEiT's k-means tokenizer sample)
    prepare_images: int = 0
    #: how ``train.accumulate: K > 1`` splits a step into K micro-batches (:mod:`selfsup.train.accumulate`):
    #: ``"plain"`` (loss / K per micro-batch; the loss is a mean of per-image terms and updates run once, in
    #: :meth:`after_step`), ``"exact"`` (gradient caching over :meth:`embed` and :meth:`loss`), None: refused
    accumulation: ClassVar[Literal["plain", "exact"] | None] = None
    #: why ``accumulate > 1`` is refused (``accumulation = None``), for the one-line error
    no_accumulation_reason: ClassVar[str] = ("it declares no accumulation mode (Method.accumulation): its loss and "
                                             "updates are not known to split into micro-batches exactly")
    #: set by a class whose own ``forward`` passes its live view embeddings through :meth:`regularize`
    #: (the embed/objective methods always do, in :meth:`regularized_objective`)
    regularizable: ClassVar[bool] = False

    @classmethod
    def supports_regularizers(cls) -> bool:
        """Whether ``method.regularizers`` (KoLeo, CO2) can be added to this method's loss: the class that
        defines the ``forward`` in use is :class:`Method` or declares ``regularizable = True`` itself (a
        subclass overriding ``forward`` must opt in again)."""
        owner = next(k for k in cls.__mro__ if "forward" in vars(k))
        return owner is Method or bool(vars(owner).get("regularizable", False))

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: MethodConfig, epochs: int = 100) -> None:
        super().__init__()
        self.backbone = backbone
        self.feat_dim = feat_dim
        self.cfg = cfg
        self.epochs = epochs
        problem = regularizer_problem(type(self), cfg)
        if problem:
            raise ValueError(problem)

    def forward(self, views: list[torch.Tensor], progress: float = 0.0,
                labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Return at least ``loss``, ``feats`` (backbone features of view 0, detached) and ``emb``
        (the embeddings the loss sees for view 0, detached) for logging and the online probe.
        The default is ``objective(embed(views))``, for methods split that way (``accumulation = "exact"``)."""
        feats, z = self.embed(views)
        return {**self.regularized_objective(z, labels), "feats": feats.detach(), "emb": z[0].detach()}

    def regularized_objective(self, z: list[torch.Tensor], labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """:meth:`objective` plus ``method.regularizers`` on the same embeddings (what the trainer and
        gradient caching call)."""
        return self.regularize(self.objective(z, labels), z)

    def regularize(self, out: dict[str, torch.Tensor], z: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """``out`` with ``method.regularizers`` (KoLeo, CO2) added to its ``loss``, on the live (not detached)
        per-view embeddings ``z`` the loss saw (:mod:`selfsup.methods.regularizers`); ``out`` unchanged when
        they are off. A ``forward`` of its own calls this and sets ``regularizable = True``."""
        return add_regularizers(self.cfg.regularizers, out, z)

    def embed(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The network half of an exactly accumulated method: ``(backbone features of view 0, the embeddings
        [b, D] of each view that :meth:`objective` sees)``. Each row may depend on its own image only (no batch
        statistics), so micro-batches embed one at a time and concatenate to the batch's embeddings."""
        raise NotImplementedError(f"{type(self).__name__} has no embed/objective split; it defines forward")

    def objective(self, z: list[torch.Tensor], labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The loss half: ``loss`` (and scalars to log) from the whole (local) batch's embeddings ``z``; under
        DDP it gathers over processes, as the losses do."""
        raise NotImplementedError(f"{type(self).__name__} has no embed/objective split; it defines forward")

    def make_masks(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...] | None:
        """Patch masks for one step of ``batch`` images (the global batch), drawn on CPU from ``generator``
        (seeded by the trainer from seed, epoch and step, in the main process, for streamed and in-RAM data
        alike): a tuple of bool ``[batch, N]`` tensors whose rows the trainer splits between processes and
        passes to ``forward`` as ``masks=``. None (the default): the method uses no masks."""
        return None

    @classmethod
    def image_size_problem(cls, cfg: MethodConfig, image_size: int | None) -> str | None:
        """The one-line problem (naming the fix) when ``cfg`` cannot work on ``image_size``-px views (e.g. jigsaw
        tiles too small to crop), checked when the recipe loads (``image_size`` None: the data's native size, not
        known yet); None (the default): any size."""
        return None

    @torch.no_grad()
    def prepare(self, images: Iterable[torch.Tensor], run_dir: Path | None = None) -> dict[str, float]:
        """One-time work before the first epoch of a new run (e.g. fitting BEiT's tokenizer), on batches
        ``[b, C, H, W]`` of normalised training images (:attr:`prepare_images` of them, a seeded sample at
        the recipe's image size). The trainer calls it in the main process only, then broadcasts the
        method's buffers, and never on resume: keep what it makes in buffers (checkpointed).
        ``run_dir``: where the run may cache files. Returns values to log."""
        return {}

    @torch.no_grad()
    def before_epoch(self, epoch: int) -> dict[str, float]:
        """Work at the start of each epoch (e.g. DeepCluster-v2's k-means). Returns values to log."""
        return {}

    def on_backward(self, progress: float) -> None:
        """Gradient surgery between backward and the optimizer step (e.g. DINO's frozen last layer)."""

    @torch.no_grad()
    def after_step(self, progress: float) -> dict[str, float]:
        """Updates after the optimizer step (EMA teachers, queues). Returns values to log."""
        return {}

    def encoder_parts(self, which: str | None = None) -> tuple[nn.Module, nn.Module | None]:
        """The backbone to evaluate or export and its head: ``"student"`` (``backbone`` and ``projector``,
        the online/query network), ``"teacher"`` (the EMA teacher's copies of both) or None (the paper's
        choice, :attr:`eval_encoder`). The head is None for methods without a ``projector``.
        Raises ``ValueError`` (one line) when ``"teacher"`` is asked of a method without one."""
        from selfsup.nets.ema import EMA

        which = which or self.eval_encoder
        projector = getattr(self, "projector", None)
        projector = projector if isinstance(projector, nn.Module) else None
        if which == "student":
            return self.backbone, projector
        if which != "teacher":
            raise ValueError(f"encoder must be 'student' or 'teacher', got {which!r}")
        teacher = getattr(self, self.teacher_attr, None) if self.teacher_attr else None
        if teacher is None:
            raise ValueError(f"{self.cfg.name} has no EMA teacher; evaluate the student (eval.encoder=student)")
        seq = teacher.module if isinstance(teacher, EMA) else None
        if not isinstance(seq, nn.Sequential) or len(seq) != 2 or type(seq[0]) is not type(self.backbone):
            raise ValueError(f"{self.cfg.name}.{self.teacher_attr} is not an EMA of Sequential(backbone, head)")
        return seq[0], seq[1] if projector is not None else None

    def encoder(self, which: str | None = None) -> nn.Module:
        """The backbone of :meth:`encoder_parts` (``"student"``, ``"teacher"`` or None: the paper's)."""
        return self.encoder_parts(which)[0]

    def param_groups(self) -> list[dict]:
        """Parameter groups for the optimizer. Keys beyond torch's: ``lr_scale`` (multiplies the
        scheduled lr), ``fixed_lr`` (keep the peak lr, no schedule), ``no_decay`` (no weight decay and no
        LARS adaptation). The default puts biases, norm parameters and the names a submodule lists in
        ``no_weight_decay()`` (a ViT's cls/register/mask tokens and positions, as MAE and BEiT) in a ``no_decay``
        group."""
        skip = {f"{prefix}.{n}" if prefix else n for prefix, m in self.named_modules()
                if callable(getattr(m, "no_weight_decay", None)) for n in m.no_weight_decay()}
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
        return [{"params": decay}, {"params": no_decay, "no_decay": True}]


class ProjectedViewsMethod(Method):
    """A method whose loss sees ``self.projector`` of its views (SimCLR, VICReg, Barlow Twins, DCL, FroSSL,
    EMP-SSL, ...): :meth:`embed` is shared, each subclass builds its projector and writes :meth:`objective`."""

    projector: nn.Module
    #: how many views are embedded: the first two (None: all of them, e.g. FroSSL's and EMP-SSL's)
    embedded_views: ClassVar[int | None] = 2

    def embed(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = encode_views(self.backbone, views[:self.embedded_views])
        return h[0], [self.projector(x) for x in h]
