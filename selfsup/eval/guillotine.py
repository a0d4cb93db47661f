"""Guillotine probes: linear probes at several depths of one network (Bordes et al., 2022,
"Guillotine Regularization"; cookbook, "Role of the projector").

Cutting a trained network at some layer and probing there is "guillotine regularisation": the best
layer for a downstream task need not be the backbone output (it can be a projector layer, Chen et
al., 2020b, or an intermediate stage when the pretext task is far from the downstream one). This
module extracts, in ONE forward pass per batch, the features at chosen backbone stages (forward
hooks; spatial maps are global-average-pooled), at the backbone output and after each block of an
``nn.Sequential`` projector, then runs :func:`selfsup.eval.linear_probe` on every layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from selfsup.data import ImageArray

from .features import _module_device
from .image_probe import check_labeled, check_mean_std
from .probe import linear_probe
from .probe_common import ProbeResult

BACKBONE = "backbone"
PROJECTOR = "projector"
_ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Hardswish, nn.Mish)


def pool_features(out: Tensor) -> Tensor:
    """``[B, C, H, W]`` maps -> global average over H, W; ``[B, N, D]`` token sequences (ViT blocks)
    -> mean over the N tokens; ``[B, D]`` unchanged; anything else is flattened. Returns fp32."""
    if out.dim() == 4:
        return out.float().mean(dim=(2, 3))
    if out.dim() == 3:
        return out.float().mean(dim=1)
    return out.float().flatten(1).clone()


def default_stages(backbone: nn.Module) -> list[str]:
    """Intermediate stages to probe by default: ResNet ``layer1..layer3``, each block ``blocks.i`` of a
    ViT but the last, the ReLU closing each conv stage of a SmallCNN but the last; [] otherwise.
    (The last stage is left out: pooled, it is the backbone output, which is always probed.)"""
    if all(isinstance(getattr(backbone, s, None), nn.Sequential) for s in ("layer1", "layer2", "layer3", "layer4")):
        return ["layer1", "layer2", "layer3"]
    blocks = getattr(backbone, "blocks", None)
    if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and hasattr(backbone, "patch_embed"):
        return [f"blocks.{i}" for i in range(len(blocks) - 1)]
    feats = getattr(backbone, "features", None)
    if isinstance(feats, nn.Sequential):
        ends = [f"features.{i}" for i, m in enumerate(feats) if isinstance(m, _ACTIVATIONS)]
        return ends[:-1]
    return []


def projector_points(projector: nn.Module) -> list[int]:
    """Indices of an ``nn.Sequential`` after which to probe: each activation (the end of a
    Linear/BN/ReLU block) and the last module. A non-Sequential projector is probed at its output only."""
    if not isinstance(projector, nn.Sequential) or len(projector) == 0:
        return []
    last = len(projector) - 1
    return [i for i, m in enumerate(projector) if isinstance(m, _ACTIVATIONS) and i != last] + [last]


def _check_stages(backbone: nn.Module, stages: Sequence[str]) -> dict[str, nn.Module]:
    modules = dict(backbone.named_modules())
    missing = [s for s in stages if s not in modules or s == ""]
    if missing:
        names = [n for n in modules if n]
        shown = ", ".join(names[:60]) + (f", ... ({len(names) - 60} more)" if len(names) > 60 else "")
        raise ValueError(f"backbone has no module(s) {missing}; available module names: {shown}")
    if len(set(stages)) != len(stages) or BACKBONE in stages or any(s.startswith(PROJECTOR) for s in stages):
        raise ValueError(
            f"stages must be distinct module names other than {BACKBONE!r}/{PROJECTOR!r}*, got {list(stages)}"
        )
    return {s: modules[s] for s in stages}


def layer_names(backbone: nn.Module, projector: nn.Module | None, stages: Sequence[str] | None = None) -> list[str]:
    """Keys of :func:`layer_features` in forward order: stages, ``"backbone"``, ``"projector.<i>"`` (or
    ``"projector"`` for a non-Sequential projector)."""
    stages = default_stages(backbone) if stages is None else list(stages)
    names = list(_check_stages(backbone, stages)) + [BACKBONE]
    if projector is not None:
        points = projector_points(projector)
        names += [f"{PROJECTOR}.{i}" for i in points] if points else [PROJECTOR]
    return names


@torch.no_grad()
def layer_features(
    backbone: nn.Module,
    projector: nn.Module | None,
    images: ImageArray | Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    stages: Sequence[str] | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """Features of every probed layer, ``{name: fp32 [N, D_layer] on CPU}``, in one pass per batch.

    ``images``: uint8 ``[N, C, H, W]`` (tensor or :class:`ImageArray`), normalised ``(x / 255 - mean) / std``.
    ``stages``: backbone module names (``dict(backbone.named_modules())`` keys, e.g. ResNet ``"layer2"``,
    SmallCNN ``"features.5"``); None = :func:`default_stages`, [] = none. Their outputs are captured with
    forward hooks and pooled by :func:`pool_features` inside the hook (before any in-place op can alter
    them). ``"backbone"`` is the backbone output; the projector is run module by module on it and probed
    after each block (:func:`projector_points`). Everything runs in fp32, eval mode, under ``no_grad``;
    the train/eval flags of both modules are restored afterwards.
    """
    if not isinstance(images, ImageArray) and (
        not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4
    ):
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a uint8 tensor [N, C, H, W] or an ImageArray, got {got}")
    n = len(images) if isinstance(images, ImageArray) else images.shape[0]
    if n == 0:
        raise ValueError("images is empty (N = 0); pass at least one image")
    check_mean_std(mean, std, images.shape[1] if isinstance(images, Tensor) else images.channels)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stages = default_stages(backbone) if stages is None else list(stages)
    hooked = _check_stages(backbone, stages)
    dev = _module_device(backbone) if device is None else torch.device(device)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    points = projector_points(projector) if projector is not None else []
    proj_dev = _module_device(projector) if projector is not None else dev
    captured: dict[str, Tensor] = {}

    def hook_for(name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if not isinstance(output, Tensor):
                what = type(output).__name__
                raise TypeError(f"stage {name!r} returned {what}; probe a module that returns a Tensor")
            captured[name] = pool_features(output)
        return hook

    modules = list(backbone.modules()) + (list(projector.modules()) if projector is not None else [])
    modes = {m: m.training for m in modules}
    handles = [m.register_forward_hook(hook_for(n)) for n, m in hooked.items()]
    out: dict[str, list[Tensor]] = {}
    try:
        for m in modules:
            m.eval()
        for start in range(0, n, batch_size):
            if isinstance(images, ImageArray):  # gathers memory-mapped rows batch by batch
                xb = images.batch(torch.arange(start, min(n, start + batch_size)))[0]
            else:
                xb = images[start : start + batch_size]
            x = (xb.to(dev).float().div_(255.0) - mean_t) / std_t
            captured.clear()
            with torch.autocast(dev.type, enabled=False):
                h = backbone(x)
                if not isinstance(h, Tensor):
                    raise TypeError(f"backbone returned {type(h).__name__}; it must return a Tensor of features")
                silent = [name for name in stages if name not in captured]
                if silent:
                    raise ValueError(f"stage(s) {silent} did not run in the backbone's forward; probe modules it calls")
                feats = {name: captured[name] for name in stages}
                feats[BACKBONE] = pool_features(h)
                if projector is not None:
                    feats.update(_run_projector(projector, points, feats[BACKBONE].to(proj_dev)))
            for name, f in feats.items():
                out.setdefault(name, []).append(f.cpu())
    finally:
        for handle in handles:
            handle.remove()
        for m, mode in modes.items():
            m.training = mode
    return {name: torch.cat(parts) for name, parts in out.items()}


def _run_projector(projector: nn.Module, points: list[int], h: Tensor) -> dict[str, Tensor]:
    """Run ``projector`` on ``h``; return the (cloned) outputs after each index in ``points``."""
    if not points:
        return {PROJECTOR: pool_features(projector(h))}
    feats, z = {}, h.clone()  # clone: an in-place first module must not alter the backbone features
    for i, module in enumerate(projector):
        z = module(z)
        if i in points:
            feats[f"{PROJECTOR}.{i}"] = pool_features(z)
    return feats


def guillotine_probe(
    backbone: nn.Module,
    projector: nn.Module | None,
    train: ImageArray,
    test: ImageArray | None,
    mean: Sequence[float],
    std: Sequence[float],
    stages: Sequence[str] | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    **probe_kwargs: Any,
) -> dict[str, ProbeResult]:
    """Linear probe at every layer of :func:`layer_features`: ``{layer name: ProbeResult}`` in forward order.

    Each layer gets the same :func:`selfsup.eval.linear_probe` protocol (``probe_kwargs``: lrs, wds,
    epochs, seed, ...; the same seeded validation split), so accuracies are comparable across layers;
    compare ``val_acc`` to choose a layer and report that layer's ``test_acc`` (Bordes et al., 2022).
    """
    train = check_labeled(train, "train")
    if test is not None:
        test = check_labeled(test, "test")
    bad = {"train_f", "train_y", "test_f", "test_y", "val_f", "val_y"} & set(probe_kwargs)
    if bad:
        raise ValueError(f"guillotine_probe computes the features itself; drop {sorted(bad)} from the probe options")
    tr = layer_features(backbone, projector, train, mean, std, stages, batch_size, device)
    te = layer_features(backbone, projector, test, mean, std, stages, batch_size, device) if test is not None else {}
    probe_kwargs.setdefault("device", device)
    results = {}
    for name, f in tr.items():
        res = linear_probe(f, train.labels, te.get(name), None if test is None else test.labels, **probe_kwargs)
        res.protocol = res.protocol.replace("linear probe (", f"linear probe at {name} (", 1)
        results[name] = res
    return results
