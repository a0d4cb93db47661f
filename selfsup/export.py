"""Native export: a trained backbone as a file the plain library model loads with ``strict=True``.

Formats (``selfsup export RUN --format F``, ``train.export_every_epoch: F``):

- ``state_dict`` (the default): the backbone's ``state_dict`` in a ``.pt`` file, any backbone; what
  ``selfsup eval --weights`` and ``selfsup embed --weights`` read.
- ``torchvision``: the same file for ResNets, whose keys are torchvision's. It loads into
  ``torchvision.models.<name>()`` once ``fc`` is ``Identity`` (a self-supervised backbone has no
  classifier), and, for the small-image stem (3x3 conv, no max-pool), ``conv1``/``maxpool`` swapped.
- ``timm``: for ``timm:`` backbones. A selfsup ViT (:class:`~selfsup.nets.vit.MaskedViT`) keeps timm's
  own module names, so its weights load into ``timm.create_model(<name>, **kwargs)`` with the kwargs
  recorded here (patch size, width, depth, tokens, pooling, ...); ``model(x)`` is selfsup's features.
- ``safetensors``: the same tensors and key names in a ``.safetensors`` file, any backbone, with the
  metadata in the file's header (``safetensors.safe_open(f, "pt").metadata()["selfsup"]``, JSON).

Every export carries its metadata: input ``channels``, ``image_size``, normalisation ``mean``/``std``,
the library, model name and kwargs, and ``build``: the Python lines that make the matching plain model
(``selfsup export`` prints them). ``.pt`` files stay plain state dicts, so
``model.load_state_dict(torch.load(f, weights_only=True))`` works as it is; their metadata is the
sidecar ``<file>.json``. MIM pretraining's ``mask_token`` is not part of the feature extractor and
is left out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from selfsup.nets.backbones import RESNETS, SmallCNN
from selfsup.nets.vit import MaskedViT
from selfsup.train.checkpoint import save_atomic, write_atomic, write_text_atomic

__all__ = ["EXPORT_FORMATS", "ExportError", "export_module", "export_method", "export_epoch", "export_path",
           "read_export", "export_meta", "load_weights", "how_to_load", "export_summary"]

EXPORT_FORMATS = ("state_dict", "torchvision", "timm", "safetensors")
_DROP = ("mask_token",)  # pretraining-only parameters


class ExportError(ValueError):
    """A backbone cannot be written in the asked format; the message names the format to use."""


def export_path(run_dir: str | Path, fmt: str = "state_dict") -> Path:
    """Where ``selfsup export RUN --format fmt`` (and ``train.export_every_epoch``) writes by default:
    ``RUN/backbone.pt``, or ``RUN/backbone.safetensors``."""
    return Path(run_dir) / ("backbone.safetensors" if fmt == "safetensors" else "backbone.pt")


def sidecar(path: str | Path) -> Path:
    """The metadata file of a ``.pt`` export: ``backbone.pt`` -> ``backbone.json``."""
    return Path(path).with_suffix(".json")


def _state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items() if k not in _DROP}


def _resnet_name(backbone: nn.Module) -> str | None:
    """The torchvision ResNet ``backbone`` is (resnet18/34/50), from its block layout, or None."""
    import torchvision

    if not isinstance(backbone, torchvision.models.ResNet):
        return None
    blocks = tuple(len(getattr(backbone, f"layer{i}")) for i in range(1, 5))
    bottleneck = isinstance(backbone.layer1[0], torchvision.models.resnet.Bottleneck)
    table = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34", ((3, 4, 6, 3), True): "resnet50"}
    name = table.get((blocks, bottleneck))
    return name if name in RESNETS else None


def _resnet_build(name: str, backbone: nn.Module) -> tuple[list[str], bool]:
    """The two lines that build the torchvision model matching ``backbone``'s stem, and whether the
    stem is the small-image one (3x3/1 conv, no max-pool)."""
    conv = backbone.conv1
    small = conv.kernel_size == (3, 3) and isinstance(backbone.maxpool, nn.Identity)
    first = f"model = torchvision.models.{name}()"
    if small:
        return [first, f"model.conv1, model.maxpool, model.fc = torch.nn.Conv2d({conv.in_channels}, 64, 3, 1, 1, "
                       f"bias=False), torch.nn.Identity(), torch.nn.Identity()"], True
    if conv.in_channels != 3:
        return [first, f"model.conv1, model.fc = torch.nn.Conv2d({conv.in_channels}, 64, 7, 2, 3, bias=False), "
                       f"torch.nn.Identity()"], False
    return [first, "model.fc = torch.nn.Identity()"], False


def _vit_kwargs(vit: MaskedViT, layer_scale: float | None = None) -> dict[str, Any]:
    """The ``timm.create_model`` kwargs whose VisionTransformer has ``vit``'s parameters and computes its
    features: what :func:`selfsup.nets.vit.build_vit` sets, read back from the module."""
    from timm.layers import LayerScale

    b = vit.blocks[0]
    kw: dict[str, Any] = dict(
        num_classes=0, in_chans=int(vit.patch_embed.proj.in_channels),
        img_size=int(vit.base_grid[0] * vit.patch_size), patch_size=int(vit.patch_size),
        embed_dim=int(vit.embed_dim), depth=len(vit.blocks), num_heads=int(b.attn.num_heads),
        mlp_ratio=b.mlp.fc1.out_features / vit.embed_dim, qk_norm=not isinstance(b.attn.q_norm, nn.Identity),
        class_token=vit.cls_token is not None, reg_tokens=0 if vit.reg_token is None else int(vit.reg_token.shape[1]),
        no_embed_class=True, global_pool="token" if vit.pool_kind == "cls" else "avg", fc_norm=False,
        dynamic_img_size=True)
    if isinstance(b.ls1, LayerScale):
        kw["init_values"] = float(layer_scale) if layer_scale else 1e-5  # any value: the weights replace it
    return kw


def _fc_norm_at_init(vit: MaskedViT) -> bool:
    ln = vit.fc_norm
    return bool((ln.weight == 1).all() and (ln.bias == 0).all())


def export_meta(backbone: nn.Module, name: str, channels: int, image_size: int, mean, std, fmt: str = "state_dict",
                vit: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metadata of a ``fmt`` export of ``backbone`` (recipe name ``name``: ``small_cnn``, ``resnet18``,
    ``timm:<model>``; ``vit``: the recipe's ``model.vit`` options): inputs, the library model and the
    ``build`` lines that make it."""
    meta: dict[str, Any] = {"backbone": name, "channels": int(channels), "image_size": int(image_size),
                            "mean": [float(v) for v in mean], "std": [float(v) for v in std],
                            "normalize": "x = (x / 255 - mean) / std per channel, images resized to the shorter side "
                                         "image_size / 0.875 then centre-cropped to image_size"}
    resnet = _resnet_name(backbone)
    if resnet is not None:
        build, small = _resnet_build(resnet, backbone)
        meta.update(library="torchvision", model=resnet, small_input=small, build=["import torch, torchvision", *build])
    elif isinstance(backbone, MaskedViT):
        model = name.removeprefix("timm:")
        kwargs = _vit_kwargs(backbone, (vit or {}).get("layer_scale"))
        meta.update(library="timm", model=model, kwargs=kwargs,
                    build=["import timm", f"model = timm.create_model({model!r}, pretrained=False, **{kwargs!r})"])
        if not isinstance(backbone.fc_norm, nn.Identity):
            if fmt == "timm":
                meta["features"] = ("selfsup's features are F.layer_norm(model(x), (D,), eps=1e-6): timm has no "
                                    "layout with both the final norm and fc_norm (model.vit.pool=avg keeps both; "
                                    "this fc_norm was untrained)")
            else:  # the file keeps fc_norm: selfsup's own model holds it
                meta.update(library="selfsup", build=["from selfsup.nets import build_backbone",
                                                      f"model = build_backbone({name!r}, {channels}, {image_size}, "
                                                      f"vit={dict(vit or {})!r})"])
    elif name.startswith("timm:"):
        kwargs = dict(num_classes=0, in_chans=int(channels), img_size=int(image_size), dynamic_img_size=True)
        meta.update(library="timm", model=name[5:], kwargs=kwargs,
                    build=["import timm", f"model = timm.create_model({name[5:]!r}, pretrained=False, **{kwargs!r})"])
    elif isinstance(backbone, SmallCNN):
        width, depth = backbone.features[0].out_channels, len(backbone.features) // 3
        meta.update(library="selfsup", model="small_cnn",
                    build=["from selfsup.nets import SmallCNN", f"model = SmallCNN({channels}, width={width}, "
                                                                f"depth={depth})"])
    else:
        meta.update(library="selfsup", model=type(backbone).__name__, build=[])
    return meta


def _check_format(backbone: nn.Module, meta: dict[str, Any], fmt: str) -> None:
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    lib = meta["library"]
    own = f"{meta['backbone']} is selfsup's own net: export it with --format safetensors or the default state dict"
    if fmt == "torchvision" and lib != "torchvision":
        raise ExportError(f"--format torchvision is for ResNet backbones (resnet18/34/50); "
                          + (own if lib == "selfsup" else f"{meta['backbone']}: use --format timm or safetensors"))
    if fmt == "timm" and lib != "timm":
        raise ExportError(f"--format timm is for timm: backbones; "
                          + (own if lib == "selfsup" else f"{meta['backbone']}: use --format torchvision or safetensors"))
    if fmt == "timm" and isinstance(backbone, MaskedViT) and not isinstance(backbone.fc_norm, nn.Identity) \
            and not _fc_norm_at_init(backbone):
        raise ExportError("--format timm: this ViT has a trained fc_norm on top of its final norm, which timm's "
                          "VisionTransformer cannot hold; use --format safetensors (loads into selfsup.nets.build_vit)")


def export_module(backbone: nn.Module, out: str | Path, fmt: str = "state_dict", *, name: str, channels: int,
                  image_size: int, mean, std, vit: dict[str, Any] | None = None,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``backbone`` to ``out`` in format ``fmt`` (one of :data:`EXPORT_FORMATS`), atomically; return
    the metadata written (with ``extra``, e.g. the run and method). ``.pt`` exports get the sidecar
    ``<out>.json``; a ViT's untrained ``fc_norm`` (see ``meta["features"]``) is left out of timm exports."""
    meta = export_meta(backbone, name, channels, image_size, mean, std, fmt, vit)
    _check_format(backbone, meta, fmt)
    meta = {"format": fmt, **meta, **(extra or {})}
    state = _state(backbone)
    if "features" in meta:  # timm format, untrained fc_norm (see export_meta)
        state = {k: v for k, v in state.items() if not k.startswith("fc_norm.")}
    out = Path(out)
    if fmt == "safetensors":
        from safetensors.torch import save

        blob = save(state, metadata={"selfsup": json.dumps(meta)})
        write_atomic(out, lambda f: f.write(blob))
    else:
        save_atomic(state, out)
        write_text_atomic(sidecar(out), json.dumps(meta, indent=2) + "\n")
    return meta


def export_method(method: nn.Module, recipe, meta: dict[str, Any], out: str | Path, fmt: str = "state_dict",
                  encoder: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export the backbone that evaluation uses (:func:`selfsup.rundir.chosen_encoder`: DINO's teacher by
    default) of a trained ``method``; ``meta`` is the run's (channels, image_size, mean, std)."""
    from selfsup.rundir import chosen_encoder, encoder_parts

    which = chosen_encoder(method, recipe, encoder)
    backbone = encoder_parts(method, which)[0]
    info = {"method": recipe.method.name, "encoder": which, **(extra or {})}
    return export_module(backbone, out, fmt, name=recipe.model.backbone, channels=meta["channels"],
                         image_size=meta["image_size"], mean=meta["mean"], std=meta["std"],
                         vit=recipe.model.vit.kwargs(), extra=info)


def export_epoch(method: nn.Module, recipe, meta: dict[str, Any], run_dir: str | Path, epoch: int) -> Path:
    """``train.export_every_epoch``: write the export of a run's method at the end of ``epoch`` to
    :func:`export_path` (rank 0, after the checkpoint). With sharded weights (FSDP2 ``DTensor``s) the
    export is made from the whole weights the checkpoint just written holds."""
    from torch.distributed.tensor import DTensor

    fmt, out = recipe.train.export_every_epoch, export_path(run_dir, recipe.train.export_every_epoch)
    if any(isinstance(v, DTensor) for v in method.state_dict().values()):
        from selfsup.rundir import export_backbone

        return export_backbone(run_dir, out, fmt=fmt)[0]
    export_method(method, recipe, meta, out, fmt, extra={"run": str(run_dir), "epoch": epoch})
    return out


def read_export(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """``(state_dict, metadata or None)`` of an export: a ``.safetensors`` file (metadata in its header)
    or a ``.pt`` state dict (metadata in the sidecar ``.json``, if any), loaded with ``weights_only``."""
    from selfsup.train import checkpoint as ckpt

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file '{path}' does not exist; pass a file `selfsup export` wrote")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise ckpt.CheckpointError(f"weights '{path}' are not a readable safetensors file ({e})") from None
        return state, json.loads(header["selfsup"]) if "selfsup" in header else None
    state = ckpt.load(path)
    side = sidecar(path)
    return state, json.loads(side.read_text()) if side.is_file() else None


def how_to_load(meta: dict[str, Any], path: str | Path) -> list[str]:
    """The lines that build the plain model and load the export at ``path`` (what ``selfsup export`` prints)."""
    if meta["format"] == "safetensors":
        load = [f"import safetensors.torch", f"model.load_state_dict(safetensors.torch.load_file({str(path)!r}))"]
    else:
        imported = any(line.startswith("import torch") for line in meta["build"])
        load = [*([] if imported else ["import torch"]),
                f"model.load_state_dict(torch.load({str(path)!r}, weights_only=True))"]
    lines = [*meta["build"], *load]
    if "features" in meta:
        lines.append(f"# {meta['features']}")
    return lines


def load_weights(backbone: nn.Module, path: str | Path) -> dict[str, Any] | None:
    """Load an export (any format) into ``backbone`` built as its recipe describes, strictly (a timm export
    of a ViT may lack its untrained ``fc_norm``, which then keeps its init, as trained); return the
    export's metadata or None. A ``ValueError`` says what does not fit."""
    state, meta = read_export(path)
    result = backbone.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys
               if not (k in _DROP or (meta and "features" in meta and k.startswith("fc_norm.")))]
    if missing or result.unexpected_keys:
        what = (f"missing {', '.join(missing[:3])}" if missing else "") + \
               ("; " if missing and result.unexpected_keys else "") + \
               (f"unexpected {', '.join(result.unexpected_keys[:3])}" if result.unexpected_keys else "")
        raise ValueError(f"keys do not match ({what})")
    return meta


def export_summary(path: str | Path, meta: dict[str, Any]) -> str:
    """What ``selfsup export`` prints: the file, its inputs, and the lines that load it into the plain model."""
    side = "" if meta["format"] == "safetensors" else f" (metadata: {sidecar(path)})"
    chans = {1: "grey", 3: "RGB"}.get(meta["channels"], f"{meta['channels']} channels")
    inputs = (f"inputs: {meta['image_size']} px {chans}, x = (x / 255 - mean) / std with mean {meta['mean']} "
              f"std {meta['std']}")
    return "\n".join([f"backbone weights ({meta['format']}): {path}{side}", inputs, "load it with:",
                      *(f"  {line}" for line in how_to_load(meta, path))])
