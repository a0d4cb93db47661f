"""Typed recipes: YAML files map onto these pydantic models; dotted overrides are checked the same way.

A recipe is ``method`` (one of :data:`selfsup.methods.METHODS`, chosen by ``method.name``)
plus the ``data``, ``views``, ``model``, ``optim``, ``train`` and ``eval`` sections.
Every error names the offending key in one line (:class:`ConfigError`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from selfsup.data.imagefolder import DEFAULT_IMAGEFOLDER_SIZE
from selfsup.eval.evaluate import EVAL_PROTOCOLS
from selfsup.methods import METHODS
from selfsup.methods.base import accumulation_problem, regularizer_problem
from selfsup.nets.backbones import check_backbone_name, is_vit_name
from selfsup.nets.vit import VIT_FEATURES
from selfsup.schema import Section
from selfsup.train.loggers import LOGGER_NAMES, default_loggers
from selfsup.views import VIEW_KINDS

RECIPE_DIR = Path(__file__).parent / "recipes"
DEFAULT_RECIPE = "simclr_digits"


class ConfigError(ValueError):
    """A recipe or override is invalid; the message names the key and how to fix it."""


class DataConfig(Section):
    path: str | None = Field(None, description="dataset path: an ImageFolder tree or folder of images, a .csv/.tsv/"
                             ".txt file list, a `selfsup prepare` pack, .tar shards, .npz, IDX or CIFAR; null = the "
                             "built-in digits")
    format: Literal["auto", "digits", "digit_scenes", "colour_digits", "font_digits", "imagefolder", "filelist",
                    "packed", "shards", "npz", "idx", "cifar"] = Field(
        "auto", description="dataset format; auto: detected from the path; digit_scenes: the built-in digits on "
        "textured backgrounds with per-pixel masks (for the dense_miou protocol); colour_digits: the built-in digits "
        "coloured in Lab (for colorization); font_digits: digits rendered from matplotlib's fonts at full resolution, "
        "test fonts held out (for the spatial pretext tasks)")
    image_size: int | None = Field(None, gt=0, description=f"output side of the global views (null: the native size "
                                   f"of npz, IDX and CIFAR arrays; 32 for digits; {DEFAULT_IMAGEFOLDER_SIZE} for "
                                   f"image files, whose sizes vary)")
    batch_size: int = Field(256, gt=0, description="effective batch over all processes")
    on_corrupt: Literal["skip", "error"] = Field("skip", description="unreadable images: skip (or, met while "
                                                 "training, replace by the next readable one) and report, or stop")
    cache: Literal["auto", "ram", "none"] = Field(
        "auto", description="image files: none = stream full-resolution crops from disk, ram = decode once at "
        "image_size (crops then come from that square), auto = ram when the decoded set fits ram_budget_mb. "
        "Array formats are always in RAM or memory-mapped")
    ram_budget_mb: float = Field(2048, gt=0, description="data.cache=auto keeps decoded images in RAM up to this size")
    labels: Literal["auto", "folders", "none"] = Field(
        "auto", description="image folders: class sub-folders (folders), every image at any depth unlabeled (none), "
        "or auto (class folders unless the top level holds loose images only)")
    test_path: str | None = Field(None, description="a separate test/val split for image files (e.g. val.csv)")
    num_workers: int | Literal["auto"] = Field("auto", description="streaming loader processes (0: decode in the "
                                               "main process); auto: this process's share of the CPUs "
                                               "(SLURM_CPUS_PER_TASK or the affinity mask) less one, at most 8")
    prefetch: int = Field(2, gt=0, description="streaming batches in flight per worker (memory: workers x prefetch "
                          "x batch)")
    index_dir: str | None = Field(None, description="where image indexes are cached (null: $SELFSUP_CACHE_DIR/index "
                                  "or ~/.cache/selfsup/index)")

    @field_validator("num_workers")
    @classmethod
    def _workers(cls, n: int | str) -> int | str:
        if isinstance(n, int) and n < 0:
            raise ValueError(f"num_workers must be auto or an int >= 0, got {n}")
        return n


class ViewsConfig(Section):
    kind: Literal[VIEW_KINDS] | None = Field(None, description="simclr, byol, mocov2, msf, crop (MAE), multicrop "
                                             "(DINO's) or swav_multicrop; null: the method's default")
    params: dict[str, Any] = Field(default_factory=dict, description="overrides passed to selfsup.views.build_views")


class ViTConfig(Section):
    """The ViT tricks (cookbook, "Techniques for High Performance Masked Image Modeling"), for timm ViT backbones
    (``timm:vit_*``); null keeps the named timm model's value."""

    patch_size: int | None = Field(None, gt=0, description="patch side in pixels (e.g. 4 at 32 px: 64 tokens)")
    embed_dim: int | None = Field(None, gt=0, description="token width")
    depth: int | None = Field(None, gt=0, description="number of blocks")
    num_heads: int | None = Field(None, gt=0, description="attention heads")
    mlp_ratio: float | None = Field(None, gt=0, description="MLP hidden width / token width")
    drop_path_rate: float = Field(0.0, ge=0, lt=1, description="stochastic depth rate (MAE fine-tune 0.1, DINOv2 0.3)")
    drop_path: Literal["linear", "uniform"] = Field("linear", description="linear: 0 -> rate over depth (timm, MAE, "
                                                    "iBOT); uniform: the same rate in every block (DINOv2)")
    layer_scale: float | None = Field(None, gt=0, description="LayerScale init (DINOv2 1e-5, BEiT/SimMIM 0.1); null: off")
    qk_norm: bool = Field(False, description="LayerNorm on queries and keys (ViT-22B)")
    registers: int = Field(0, ge=0, description="register tokens (DINOv2 with registers: 4)")
    class_token: bool = Field(True, description="a cls token (I-JEPA has none: pool=avg)")
    pool: Literal["cls", "avg"] = Field("cls", description="features: the cls token, or the mean patch token")
    fc_norm: bool | None = Field(None, description="LayerNorm after average pooling (MAE fine-tune); null: on for avg")
    pos_embed: Literal["learn", "sincos"] = Field("learn", description="learned, or fixed 2-D sin-cos (MAE, MoCo v3, "
                                                  "I-JEPA)")
    freeze_patch_embed: bool = Field(False, description="MoCo v3's frozen random patch projection")
    grad_checkpointing: bool = Field(False, description="activation checkpointing: recompute each block in the "
                                     "backward pass instead of storing its activations (less memory, more compute)")

    def kwargs(self) -> dict[str, Any]:
        return self.model_dump()


class ModelConfig(Section):
    backbone: str = Field("small_cnn", description="small_cnn, resnet18/34/50 or timm:<name> (a model in timm's list; "
                          "timm:vit_* become a selfsup.nets.MaskedViT)")
    width: int = Field(32, gt=0, description="small_cnn base width")
    small_input: bool | None = Field(None, description="ResNet 3x3 stem without max-pool; null: image_size <= 64")
    sync_bn: bool = Field(True, description="SyncBatchNorm across processes (DDP on CUDA): batch statistics of the "
                          "global batch")
    vit: ViTConfig = Field(default_factory=ViTConfig, description="ViT options (timm:vit_* backbones only)")

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, name: str) -> str:  # before any data loads: one line with the choices
        return check_backbone_name(name)


class OptimConfig(Section):
    name: Literal["sgd", "adamw", "lars"] = Field("lars", description="optimizer: sgd, adamw or lars (LARS, "
                                                  "You et al. 2017; biases and norms excluded from adaptation)")
    lr: float = Field(0.3, gt=0, description="base learning rate, per 256 images (see lr_scaling)")
    lr_scaling: Literal["linear", "sqrt", "none"] = Field("linear", description="peak lr = lr x batch / "
                                                          "reference (linear), x sqrt(batch / reference), or lr (none)")
    lr_reference_batch: int | None = Field(None, gt=0, description="the batch at which lr is the base lr (null: 256 "
                                           "for linear, 1 for sqrt; SimMIM 512, DINOv2 sqrt w.r.t. 1024)")
    weight_decay: float = Field(1e-6, ge=0, description="weight decay (the start of the cosine schedule when "
                                "weight_decay_end is set)")
    weight_decay_end: float | None = Field(None, ge=0, description="cosine weight-decay schedule end (DINO)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD and LARS momentum")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    eta: float = Field(0.001, gt=0, description="LARS trust coefficient (1e-3 in SimCLR, BYOL, Barlow Twins, "
                       "SwAV, VICReg, MoCo v3)")
    warmup_epochs: float = Field(10, ge=0, description="linear lr warm-up from 0, in epochs; then a cosine decay")
    final_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine floor as a fraction of the peak lr")
    lr_schedule: Literal["cosine", "step"] = Field("cosine", description="after the warm-up: cosine decay to "
                                                   "final_lr_ratio, or step (x lr_gamma at each of lr_milestones)")
    lr_milestones: list[float] = Field(default_factory=list, description="epochs at which the step schedule "
                                       "multiplies the lr by lr_gamma (MoCo v1 and NPID: 120 and 160 of 200)")
    lr_gamma: float = Field(0.1, gt=0, lt=1, description="the step schedule's factor at each milestone")
    clip_grad: float | None = Field(None, gt=0, description="clip the gradients' total norm to this (null: off)")
    layer_decay: float | None = Field(None, gt=0, le=1, description="layer-wise lr decay in pretraining (DINOv2 0.9): "
                                      "block i of L trains at decay^(L + 1 - i) x lr; ViT and ResNet backbones")
    patch_embed_lr_mult: float = Field(1.0, gt=0, description="lr multiplier of the ViT patch embedding (DINOv2 0.2)")


class TrainConfig(Section):
    epochs: int = Field(100, gt=0, description="training epochs (passes over the training split)")
    seed: int = Field(0, ge=0, description="seed of every random draw: weights, batches, views, masks")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast dtype; auto: bf16 on CUDA GPUs that support it, else fp32 (printed at start)")
    float32_matmul_precision: Literal["auto", "highest", "high", "medium"] = Field(
        "auto", description="torch.set_float32_matmul_precision; auto: high (TF32) on CUDA Ampere or later, else "
        "highest")
    loggers: list[Literal[LOGGER_NAMES]] = Field(
        default_factory=default_loggers, description="jsonl (steps.jsonl), tensorboard (tb/), wandb (offline, "
        "wandb/), mlflow (file store, mlruns/), all in the run directory; default: jsonl, plus tensorboard when "
        "installed (selfsup[tb])")
    preview_images: int = Field(8, ge=0, description="a new run writes views.png: each view of this many training "
                                "images, drawn from its own generator (0: off)")
    device: str = Field("auto", description="auto (CUDA if visible), cpu, cuda (under torchrun: cuda:LOCAL_RANK) or "
                        "cuda:N")
    out_dir: str = Field("runs", description="where run directories are made (without --out)")
    run_name: str | None = Field(None, description="run directory name under out_dir (null: <method>-<date>-<time>)")
    online_probe: bool = Field(True, description="train a linear probe on detached features during pretraining "
                               "(labelled data; its accuracy is logged each epoch)")
    probe_lr: float = Field(1e-3, gt=0, description="Adam lr of the online probe")
    channels_last: bool = Field(False, description="channels-last memory layout for the model and the views")
    accumulate: int = Field(1, ge=1, description="micro-batches per optimizer step (data.batch_size stays the "
                            "effective batch): plain gradient accumulation, or exact gradient caching for "
                            "contrastive and covariance losses; methods that can do neither refuse it")
    compile: bool = Field(False, description="torch.compile the backbone and heads in place (state-dict keys "
                          "unchanged); on CPU it needs a C compiler; see benchmarks/throughput.py for its effect")
    strategy: Literal["ddp", "fsdp"] = Field("ddp", description="with several processes: ddp (replicated weights) or "
                                             "fsdp (FSDP2 fully_shard: weights, gradients and optimizer state sharded "
                                             "per ViT block; checkpoints through torch.distributed.checkpoint)")
    collapse_rankme_fraction: float = Field(0.02, ge=0, le=1, description="warn when the embeddings' RankMe falls "
                                            "below this fraction of min(N, D)")
    progress_bar: bool | None = Field(None, description="null: only when stderr is a terminal")

    @field_validator("device")
    @classmethod
    def _device_name(cls, device: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
            raise ValueError(f"'{device}' is not a device; use auto, cpu, cuda or cuda:N (N = a GPU index)")
        return device
    checkpoint_every_minutes: float | None = Field(15.0, gt=0, description="also checkpoint mid-epoch when this many "
                                                   "minutes passed since the last checkpoint (null: off)")
    checkpoint_every_steps: int | None = Field(None, gt=0, description="also checkpoint every this many steps "
                                               "(null: off)")
    export_every_epoch: Literal["state_dict", "torchvision", "timm", "safetensors"] | None = Field(
        None, description="after every epoch, also write the backbone as `selfsup export RUN --format F` would "
        "(RUN/backbone.pt or .safetensors, atomically), so training can stop whenever it is good enough; null: off")


class EvalConfig(Section):
    at_end: bool = Field(True, description="run `selfsup eval` when training ends")
    encoder: Literal["student", "teacher"] | None = Field(
        None, description="backbone to evaluate and export: student (online/query network) or teacher (EMA); "
        "null: the paper's choice (teacher for DINO, student otherwise)")
    protocols: list[Literal[EVAL_PROTOCOLS]] = Field(
        default_factory=lambda: ["knn", "linear", "rankme", "alpha_req", "spectrum_auc", "rank", "lidar"],
        description=f"what `selfsup eval` runs: {', '.join(EVAL_PROTOCOLS)}")
    lidar_views: int = Field(8, ge=2, description="augmented views per image for LiDAR")
    lidar_samples: int = Field(500, gt=0, description="images LiDAR is measured on")
    finetune_epochs: int = Field(20, gt=0, description="epochs of end-to-end fine-tuning (protocol finetune)")
    finetune_lr: float = Field(1e-2, gt=0, description="fine-tuning peak lr")
    finetune_layer_decay: float | None = Field(0.75, gt=0, le=1, description="fine-tuning layer-wise lr decay "
                                               "(null: off)")
    finetune_label_smoothing: float = Field(0.1, ge=0, lt=1, description="fine-tuning label smoothing")
    finetune_mixup_alpha: float = Field(0.0, ge=0, description="fine-tuning mixup alpha (0: off)")
    image_probe_epochs: int = Field(20, gt=0, description="epochs of the linear probe on augmented images "
                                    "(protocol image_linear)")
    knn_k: list[int] = Field(default_factory=lambda: [20, 200], description="neighbours of the weighted kNN "
                             "classifier (Wu et al. 2018), one result each")
    knn_temperature: float = Field(0.07, gt=0, description="kNN vote temperature")
    features: list[str] | None = Field(None, description="frozen ViT readouts: pool, cls, avg, cls_avg, last4_cls, "
                                       "last4_cls_avg; the first feeds every protocol, the rest a linear probe each. "
                                       "null: the method's (MAE cls, I-JEPA avg, DINOv2 its last-4 grid)")
    finetune_features: str | None = Field(None, description="readout fine-tuning trains from (null: the method's; "
                                          "MAE avg)")
    linear_optimizer: Literal["sgd", "lars", "adamw"] | None = Field(None, description="linear probe optimizer "
                                                                     "(null: the method's; MAE lars, else sgd)")
    linear_batchnorm: bool | None = Field(None, description="BatchNorm without affine before the linear probe "
                                          "(null: the method's; MAE true)")
    linear_epochs: int = Field(100, gt=0, description="epochs of the linear probe on frozen features")
    linear_lrs: list[float] | None = Field(None, description="linear probe lr grid (null: the method's, else "
                                           "0.01, 0.03, 0.1, 0.3, 1.0)")
    linear_wds: list[float] | None = Field(None, description="linear probe weight-decay grid (null: the method's, "
                                           "else 0, 1e-5, 1e-4)")
    batch_size: int = Field(256, gt=0, description="batch of the linear probes")
    dense_epochs: int = Field(20, gt=0, description="epochs of the linear segmentation probe (protocol dense_miou; "
                              "DINOv2's linear setting, AdamW lr 1e-3, wd 1e-4, batch 16)")
    dense_lr: float = Field(1e-3, gt=0, description="dense_miou probe AdamW lr (DINOv2 linear: 1e-3)")


MethodUnion = Annotated[Union[tuple(cls.Config for cls in METHODS.values())], Field(discriminator="name")]


class Recipe(Section):
    description: str = Field("", description="what the recipe is, where its values come from")
    method: MethodUnion
    data: DataConfig = Field(default_factory=DataConfig)
    views: ViewsConfig = Field(default_factory=ViewsConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _check(self) -> "Recipe":
        if self.optim.warmup_epochs > self.train.epochs:
            raise ValueError(f"optim.warmup_epochs={self.optim.warmup_epochs} exceeds train.epochs={self.train.epochs}; "
                             f"lower optim.warmup_epochs")
        o, epochs = self.optim, self.train.epochs
        if o.lr_schedule == "cosine" and o.lr_milestones:
            raise ValueError("optim.lr_milestones apply to the step schedule; set optim.lr_schedule=step or drop them")
        if o.lr_schedule == "step":
            if not o.lr_milestones:
                raise ValueError("optim.lr_schedule=step needs optim.lr_milestones (epochs), e.g. [120, 160]")
            if any(not o.warmup_epochs <= m < epochs for m in o.lr_milestones) or \
                    list(o.lr_milestones) != sorted(set(o.lr_milestones)):
                raise ValueError(f"optim.lr_milestones={o.lr_milestones} must increase and lie in "
                                 f"[warmup_epochs, train.epochs) = [{o.warmup_epochs:g}, {epochs})")
            if o.final_lr_ratio:
                raise ValueError("optim.final_lr_ratio is the cosine floor; the step schedule has none: drop it")
        if self.model.vit != ViTConfig() and not is_vit_name(self.model.backbone):
            raise ValueError(f"model.vit options apply to timm ViT backbones (timm:vit_*), not {self.model.backbone}; "
                             f"drop them or set model.backbone=timm:vit_tiny_patch16_224")
        bad = [f for f in [*(self.eval.features or []), self.eval.finetune_features] if f and f not in VIT_FEATURES]
        if bad:
            raise ValueError(f"eval.features: unknown readout {bad[0]!r}; choose from {', '.join(VIT_FEATURES)}")
        problem = accumulation_problem(METHODS[self.method.name], self.train.accumulate, self.data.batch_size) \
            or regularizer_problem(METHODS[self.method.name], self.method, self.train.accumulate) \
            or METHODS[self.method.name].image_size_problem(self.method, self.data.image_size)
        if problem:
            raise ValueError(problem)
        if self.eval.encoder == "teacher" and METHODS[self.method.name].teacher_attr is None:
            raise ValueError(f"eval.encoder=teacher: {self.method.name} has no EMA teacher; use eval.encoder=student "
                             f"(or null, the paper's choice)")
        return self


def _format_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"] if not (isinstance(x, str) and x in _METHOD_TAGS))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `selfsup train --help` shows the sections)"
        elif err["type"] == "union_tag_invalid":
            msg = f"unknown method; choose one of {', '.join(METHODS)}"
        got = err.get("input")
        tail = f" (got {got!r})" if got is not None and err["type"] not in ("extra_forbidden", "missing") \
            and not isinstance(got, dict) else ""
        if err["type"] == "value_error":  # our own cross-field checks already name their keys
            msg = msg.removeprefix("Value error, ")
            if not loc:
                parts.append(msg)
                continue
        parts.append(f"{loc or 'recipe'}: {msg}{tail}")
    return "invalid config: " + "; ".join(parts)


_METHOD_TAGS = set(METHODS)


def recipe_path(name_or_path: str) -> Path:
    """A recipe name (``selfsup recipes``) or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"recipe file '{p}' does not exist; give a YAML path or a name from `selfsup recipes`")
        return p
    p = RECIPE_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        names = ", ".join(sorted(x.stem for x in RECIPE_DIR.glob("*.yaml")))
        raise ConfigError(f"unknown recipe '{name_or_path}'; choose one of: {names}")
    return p


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe '{path}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe '{path}' must be a mapping of sections (method, data, optim, ...)")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings; values are parsed as YAML scalars/lists (never evaluated)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' must look like section.key=value, e.g. optim.lr=0.3")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}': '{p}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def validate(data: dict[str, Any]) -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e)) from None


def load_recipe(name_or_path: str | None = None, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe by name or path, apply dotted overrides, validate. Raises :class:`ConfigError`."""
    data = read_yaml(recipe_path(name_or_path or DEFAULT_RECIPE))
    return validate(apply_overrides(data, list(overrides or [])))


def list_recipes() -> list[tuple[str, str]]:
    """(name, one-line description) of every bundled recipe."""
    out = []
    for p in sorted(RECIPE_DIR.glob("*.yaml")):
        desc = str(yaml.safe_load(p.read_text()).get("description", "")).strip().splitlines()
        out.append((p.stem, desc[0] if desc else ""))
    return out


def to_dict(recipe: Recipe) -> dict[str, Any]:
    return recipe.model_dump(mode="json")
