"""Layer-wise learning-rate decay for fine-tuning (cookbook, "Vision Transformers Considerations:
LayerDecay"; Clark et al., 2020; BEiT, Bao et al., 2022; MAE, He et al., 2022).

Every parameter gets a depth ``layer_id`` in ``0..L_top`` (stem = 0, one id per block, the head and
anything after the last block = ``L_top``) and its learning rate is scaled by

    lr_scale = layer_decay ** (L_top - layer_id),

so the head trains at the base lr and the stem at ``layer_decay ** L_top`` times it. Ids are known for
timm ``VisionTransformer``s, torchvision ResNets and :class:`selfsup.nets.SmallCNN`, also when wrapped
in a module whose ``.backbone`` is one of them (a fine-tuning classifier, a selfsup ``Method``).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

# ViT parameters that belong to the stem (BEiT/MAE give them layer 0); norm_pre runs before block 0.
_VIT_STEM = ("patch_embed", "cls_token", "pos_embed", "reg_token", "dist_token", "mask_token", "norm_pre")
_RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


def _vit_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """timm ViT: stem = 0, ``blocks.i`` = i + 1, everything else (final norm, head) = L + 1."""
    top = len(model.blocks) + 1
    ids = {}
    for name, _ in model.named_parameters():
        root = name.split(".")[0]
        if root in _VIT_STEM:
            ids[name] = 0
        elif root == "blocks":
            ids[name] = int(name.split(".")[1]) + 1
        else:
            ids[name] = top
    return ids, top


def _resnet_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """torchvision ResNet: ``conv1``/``bn1`` = 0, residual blocks numbered 1..B in forward order, head = B + 1."""
    block_id: dict[str, int] = {}
    for stage in _RESNET_STAGES:
        for i, _ in enumerate(getattr(model, stage)):
            block_id[f"{stage}.{i}"] = len(block_id) + 1
    top = len(block_id) + 1
    ids = {}
    for name, _ in model.named_parameters():
        parts = name.split(".")
        if parts[0] in ("conv1", "bn1"):
            ids[name] = 0
        elif parts[0] in _RESNET_STAGES:
            ids[name] = block_id[f"{parts[0]}.{parts[1]}"]
        else:
            ids[name] = top
    return ids, top


def _conv_stage_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """SmallCNN-like ``features`` Sequential: each Conv2d opens a stage (ids 0..S-1); the rest = S."""
    stage_of: dict[str, int] = {}
    stage = -1
    for idx, module in enumerate(model.features):
        if isinstance(module, nn.Conv2d):
            stage += 1
        stage_of[str(idx)] = max(stage, 0)
    top = stage + 1
    ids = {}
    for name, _ in model.named_parameters():
        parts = name.split(".")
        ids[name] = stage_of[parts[1]] if parts[0] == "features" else top
    return ids, top


def _is_vit(model: nn.Module) -> bool:
    return isinstance(getattr(model, "blocks", None), (nn.Sequential, nn.ModuleList)) and hasattr(model, "patch_embed")


def _is_resnet(model: nn.Module) -> bool:
    return all(isinstance(getattr(model, s, None), nn.Sequential) for s in _RESNET_STAGES) and hasattr(model, "conv1")


def _is_conv_stages(model: nn.Module) -> bool:
    feats = getattr(model, "features", None)
    return isinstance(feats, nn.Sequential) and any(isinstance(m, nn.Conv2d) for m in feats)


def _ids_and_top(model: nn.Module) -> tuple[dict[str, int], int]:
    for known, fn in ((_is_vit, _vit_ids), (_is_resnet, _resnet_ids), (_is_conv_stages, _conv_stage_ids)):
        if known(model):
            return fn(model)
    inner = getattr(model, "backbone", None)
    if isinstance(inner, nn.Module):
        inner_ids, top = _ids_and_top(inner)
        ids = {}
        for name, _ in model.named_parameters():
            ids[name] = inner_ids[name[9:]] if name.startswith("backbone.") else top
        return ids, top
    raise ValueError(
        f"layer-wise lr decay does not know the depth of a {type(model).__name__} (supported: timm ViTs, torchvision "
        "ResNets, SmallCNN, or a module with such a .backbone); pass layer_decay=None or your own ids= mapping"
    )


def layer_ids(model: nn.Module) -> dict[str, int]:
    """``{parameter name: layer id}`` for ``model`` (see the module docstring for the numbering).

    ViT: patch_embed / cls_token / pos_embed (and other stem tokens, norm_pre) = 0, ``blocks.i`` = i + 1,
    the rest = L + 1. ResNet: conv1 / bn1 = 0, the blocks of layer1..layer4 numbered 1..B in order, the
    rest (fc) = B + 1. SmallCNN: conv-BN-ReLU stage s = s, the rest = S. A wrapper with ``.backbone``:
    the backbone's ids, and every other parameter (heads, projectors) at the top id.
    """
    return _ids_and_top(model)[0]


def _no_weight_decay_names(model: nn.Module) -> set[str]:
    """Names listed by any submodule's ``no_weight_decay()`` (timm ViTs: cls_token, pos_embed, ...)."""
    out: set[str] = set()
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if callable(fn):
            out.update(f"{prefix}.{n}" if prefix else n for n in fn())
    return out


def param_groups_lrd(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    layer_decay: float | None = 0.75,
    ids: Mapping[str, int] | None = None,
    num_layers: int | None = None,
) -> list[dict]:
    """Optimizer parameter groups with per-layer lr scales, as in BEiT / MAE fine-tuning.

    Group ``(layer_id, decay?)`` gets ``lr = base_lr * layer_decay ** (L_top - layer_id)`` where
    ``L_top = num_layers``, by default the architecture's head id (a ResNet-18 without ``fc``: 9) or, for
    custom ``ids``, their maximum; ``layer_decay=None`` (or 1) gives every layer the base lr. Biases, norm
    parameters (``ndim <= 1``) and names in a submodule's ``no_weight_decay()`` get weight decay 0.
    Groups carry ``lr_scale`` and ``no_decay`` (read by :func:`selfsup.train.optim.set_lr_wd`) plus
    ``layer_id`` and ``names``. ``ids`` overrides :func:`layer_ids` (e.g. for other architectures).
    Frozen parameters (``requires_grad=False``) are left out.
    """
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1] or None, got {layer_decay}")
    if base_lr < 0 or weight_decay < 0:
        raise ValueError(f"base_lr and weight_decay must be >= 0, got {base_lr} and {weight_decay}")
    if ids is None and layer_decay in (None, 1.0):
        ids = {n: 0 for n, _ in model.named_parameters()}
    elif ids is None:
        ids, top = _ids_and_top(model)
        num_layers = top if num_layers is None else num_layers
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in ids]
    if missing:
        raise ValueError(
            f"ids has no layer id for {len(missing)} parameter(s), e.g. {missing[:3]}; give every parameter an id"
        )
    top = max(ids.values(), default=0) if num_layers is None else int(num_layers)
    if any(v < 0 or v > top for v in ids.values()):
        raise ValueError(f"layer ids must lie in 0..num_layers={top}, got {min(ids.values())}..{max(ids.values())}")
    skip_wd = _no_weight_decay_names(model)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid = int(ids[name])
        no_decay = p.ndim <= 1 or name in skip_wd
        scale = 1.0 if layer_decay is None else float(layer_decay) ** (top - lid)
        group = groups.setdefault((lid, no_decay), {
            "params": [], "names": [], "layer_id": lid, "lr_scale": scale, "lr": base_lr * scale,
            "no_decay": no_decay, "weight_decay": 0.0 if no_decay else weight_decay,
        })
        group["params"].append(p)
        group["names"].append(name)
    return [groups[k] for k in sorted(groups)]



def apply_layer_decay(groups: list[dict], model: nn.Module, layer_decay: float | None = None,
                      patch_embed_lr_mult: float = 1.0) -> list[dict]:
    """Split a method's parameter groups so each parameter's ``lr_scale`` also carries its depth.

    For pretraining (DINOv2: ``layerwise_decay 0.9``, ``patch_embed_lr_mult 0.2``): every group of
    ``groups`` (as from ``Method.param_groups()``, flags kept) is split by :func:`layer_ids` of ``model``, and
    the parameters at depth ``i`` get ``lr_scale *= layer_decay ** (L_top - i)``; parameters under a
    ``patch_embed`` module also get ``*= patch_embed_lr_mult``. Heads and projectors sit at ``L_top``
    (scale 1). ``layer_decay=None`` and ``patch_embed_lr_mult=1`` return ``groups`` unchanged.
    """
    if layer_decay in (None, 1.0) and patch_embed_lr_mult == 1.0:
        return groups
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1] or None, got {layer_decay}")
    if patch_embed_lr_mult <= 0:
        raise ValueError(f"patch_embed_lr_mult must be > 0, got {patch_embed_lr_mult}")
    ids, top = _ids_and_top(model) if layer_decay not in (None, 1.0) else ({}, 0)
    info = {id(p): (ids.get(n, top), ".patch_embed." in f".{n}") for n, p in model.named_parameters()}
    out: list[dict] = []
    for g in groups:
        parts: dict[tuple[int, bool], list] = {}
        for p in g["params"]:
            parts.setdefault(info.get(id(p), (top, False)), []).append(p)
        for (lid, is_patch), params in sorted(parts.items(), key=lambda kv: kv[0]):
            scale = g.get("lr_scale", 1.0) * (1.0 if layer_decay is None else layer_decay ** (top - lid))
            out.append({**g, "params": params, "lr_scale": scale * (patch_embed_lr_mult if is_patch else 1.0)})
    return out
