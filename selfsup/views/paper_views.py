"""The papers' view recipes, by name (:func:`build_views`).

SimCLR (Chen et al. 2020) uses two symmetric views; BYOL (Grill et al. 2020) two asymmetric ones
(blur / solarization probabilities differ); MoCo v2 (Chen et al. 2020) two symmetric, milder ones;
MSF (Koohpayegani et al. 2021) a strong query and a weak target view; DINO and SwAV add small local
crops to two global ones ("multi-crop", Cookbook Sec. "Role of multi-crop"), each with its own
colour recipe. Built from :mod:`selfsup.views.pipelines`'s :class:`ViewSpec` and :class:`MultiView`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from selfsup.views.pipelines import IMAGENET_MEAN, IMAGENET_STD, MultiView, ViewSpec, default_mean_std, \
    local_crop_size, replace_all

__all__ = ["simclr_views", "byol_views", "multicrop_views", "mocov2_views", "mocov1_views", "msf_views",
           "swav_multicrop_views", "crop_views", "build_views", "VIEW_KINDS"]

# ---------------------------------------------------------------------------------------
# Paper recipes. Crop sizes follow ``image_size``; blur kernels are ~10% of each view's side.
# Blur sigma keeps the papers' (0.1, 2.0) px, truncated by the kernel on small images.
# ---------------------------------------------------------------------------------------

#: BYOL Table 6 (also DINO's DataAugmentationDINO): brightness, contrast, saturation, hue, p
_BYOL_JITTER = (0.4, 0.4, 0.2, 0.1, 0.8)
#: MoCo v2's ``aug_plus`` ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8 (= SimCLR's strength 0.5)
_MOCOV2_JITTER = (0.4, 0.4, 0.4, 0.1, 0.8)
#: MoCo v1's ColorJitter(0.4, 0.4, 0.4, 0.4), always applied (official main_moco.py without --aug-plus)
_MOCOV1_JITTER = (0.4, 0.4, 0.4, 0.4, 1.0)
#: SimCLR's colour distortion at strength 1 (App. A), used by SwAV's multi-crop
_SIMCLR_JITTER = (0.8, 0.8, 0.8, 0.2, 0.8)


def _check_image_size(image_size: int) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int (the dataset's H == W), got {image_size!r}")


def simclr_views(
    image_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, strength: float = 1.0
) -> MultiView:
    """SimCLR's two symmetric views (Chen et al. 2020, App. A).

    Crop scale (0.08, 1), flip 0.5, colour jitter of strength ``s``:
    (0.8s, 0.8s, 0.8s, 0.2s) with p 0.8, grayscale 0.2, blur p 0.5, no solarization.
    SimCLR drops blur on CIFAR-size images, so blur is off when ``image_size <= 32``.
    """
    _check_image_size(image_size)
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    s = float(strength)
    spec = ViewSpec(
        size=image_size,
        scale=(0.08, 1.0),
        jitter=(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, 0.8),
        gray_p=0.2,
        blur_p=0.0 if image_size <= 32 else 0.5,
    )
    return MultiView([spec, dataclasses.replace(spec)], [], mean, std)


def _byol_pair(size: int, scale: tuple[float, float]) -> tuple[ViewSpec, ViewSpec]:
    common = dict(size=size, scale=scale, jitter=_BYOL_JITTER, gray_p=0.2)
    return ViewSpec(**common, blur_p=1.0, solarize_p=0.0), ViewSpec(**common, blur_p=0.1, solarize_p=0.2)


def byol_views(image_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> MultiView:
    """BYOL's two asymmetric views (Grill et al. 2020, Table 6).

    Both: crop scale (0.08, 1), flip 0.5, jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2.
    View 1: blur p 1.0, solarize p 0. View 2: blur p 0.1, solarize p 0.2.
    """
    _check_image_size(image_size)
    return MultiView(list(_byol_pair(image_size, (0.08, 1.0))), [], mean, std)


def _check_counts(n_global: int, n_local: int) -> None:
    if isinstance(n_global, bool) or not isinstance(n_global, int) or n_global < 1:
        raise ValueError(f"n_global must be an int >= 1, got {n_global!r}")
    if isinstance(n_local, bool) or not isinstance(n_local, int) or n_local < 0:
        raise ValueError(f"n_local must be an int >= 0, got {n_local!r}")


def multicrop_views(
    image_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    n_global: int = 2,
    n_local: int = 8,
    global_scale: tuple[float, float] = (0.4, 1.0),
    local_scale: tuple[float, float] = (0.05, 0.4),
    local_size: int | None = None,
) -> MultiView:
    """DINO's multi-crop (Caron et al. 2021, Sec. 3.1 and the official
    ``DataAugmentationDINO``): 2 global crops (side ``image_size``, scale 0.4-1) and 8 local ones
    (side ``local_size``, default 3/7 of ``image_size`` like 96/224, >= 8 px; scale 0.05-0.4).

    Globals alternate DINO's two asymmetric transforms (blur 1.0 / blur 0.1 + solarize 0.2, BYOL's
    pair); locals use blur 0.5. All views: flip 0.5, jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2.
    SwAV's multi-crop uses a different colour recipe: :func:`swav_multicrop_views`.
    """
    _check_image_size(image_size)
    _check_counts(n_global, n_local)
    if local_size is None:
        local_size = local_crop_size(image_size)
    pair = _byol_pair(image_size, tuple(global_scale))  # type: ignore[arg-type]
    globals_ = [dataclasses.replace(pair[i % 2]) for i in range(n_global)]
    local = ViewSpec(size=local_size, scale=tuple(local_scale), jitter=_BYOL_JITTER, gray_p=0.2, blur_p=0.5)  # type: ignore[arg-type]
    return MultiView(globals_, [dataclasses.replace(local) for _ in range(n_local)], mean, std)


def swav_multicrop_views(
    image_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    n_global: int = 2,
    n_local: int = 6,
    global_scale: tuple[float, float] = (0.14, 1.0),
    local_scale: tuple[float, float] = (0.05, 0.14),
    local_size: int | None = None,
) -> MultiView:
    """SwAV's multi-crop (Caron et al. 2020, Sec. 3.2 and App. A.1; official ``MultiCropDataset``),
    also DeepCluster-v2's: 2 x 224 (scale 0.14-1) + 6 x 96 (scale 0.05-0.14); ``local_size`` defaults
    to 3/7 of ``image_size`` (96/224), >= 8 px.

    Every crop gets the same transform: flip 0.5, SimCLR's colour distortion at strength 1
    (jitter 0.8, 0.8, 0.8, 0.2 with p 0.8, grayscale 0.2), Gaussian blur p 0.5 (sigma 0.1-2), and
    no solarization (unlike DINO's :func:`multicrop_views`).
    """
    _check_image_size(image_size)
    _check_counts(n_global, n_local)
    if local_size is None:
        local_size = local_crop_size(image_size)
    common = dict(jitter=_SIMCLR_JITTER, gray_p=0.2, blur_p=0.5)
    globals_ = [ViewSpec(size=image_size, scale=tuple(global_scale), **common) for _ in range(n_global)]  # type: ignore[arg-type]
    locals_ = [ViewSpec(size=local_size, scale=tuple(local_scale), **common) for _ in range(n_local)]  # type: ignore[arg-type]
    return MultiView(globals_, locals_, mean, std)


def _mocov2_spec(size: int) -> ViewSpec:
    return ViewSpec(size=size, scale=(0.2, 1.0), jitter=_MOCOV2_JITTER, gray_p=0.2, blur_p=0.5, blur_sigma=(0.1, 2.0))


def mocov2_views(
    image_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, n_views: int = 2
) -> MultiView:
    """MoCo v2's symmetric views (Chen, Fan, Girshick & He 2020, Table 1 "aug+"; official
    ``aug_plus``): crop scale (0.2, 1), jitter (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2, Gaussian
    blur sigma (0.1, 2) p 0.5, flip 0.5. The same at every size (no CIFAR exception, unlike SimCLR's).

    SimSiam uses these views (Chen & He 2021, implementation details: "the same as MoCo v2"). ``n_views`` identical
    views (W-MSE trains on 4 positives per image).
    """
    _check_image_size(image_size)
    if isinstance(n_views, bool) or not isinstance(n_views, int) or n_views < 2:
        raise ValueError(f"n_views must be an int >= 2, got {n_views!r}")
    return MultiView([_mocov2_spec(image_size) for _ in range(n_views)], [], mean, std)


def mocov1_views(image_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> MultiView:
    """MoCo v1's two symmetric views (He et al. 2020, Sec. 3.3 "Augmentation"; official ``main_moco.py``
    without ``--aug-plus``): crop scale (0.2, 1), grayscale 0.2, ``ColorJitter(0.4, 0.4, 0.4, 0.4)`` on every
    image (p 1), flip 0.5, no blur. The official list applies grayscale before the jitter; here, as in every
    selfsup view, grayscale comes after it."""
    _check_image_size(image_size)
    spec = ViewSpec(size=image_size, scale=(0.2, 1.0), jitter=_MOCOV1_JITTER, gray_p=0.2)
    return MultiView([spec, dataclasses.replace(spec)], [], mean, std)


def msf_views(
    image_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
    weak_target: bool = True,
) -> MultiView:
    """MSF's weak/strong pair (Koohpayegani et al. 2021, Sec. 4, weak/strong augmentation;
    official ``train_msf.py --weak_strong``): view 1, the query, is MoCo v2's strong view (see
    :func:`mocov2_views`); view 2, the target, is weak: crop scale (0.2, 1) and flip 0.5 only.
    ``weak_target=False`` gives the paper's strong/strong variant.
    """
    _check_image_size(image_size)
    strong = _mocov2_spec(image_size)
    weak = ViewSpec(size=image_size, scale=(0.2, 1.0)) if weak_target else dataclasses.replace(strong)
    return MultiView([strong, weak], [], mean, std)


def crop_views(
    image_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, n_views: int = 1
) -> MultiView:
    """The masked-image-modeling views: ``n_views`` RandomResizedCrops with scale (0.2, 1) and a flip, no
    colour (MAE, He et al. 2022, Sec. A.1; official ``main_pretrain.py``). SimMIM (scale 0.67-1), I-JEPA
    (scale 0.3-1, no flip) and data2vec 2.0 override ``scale`` / ``flip_p`` in their recipes."""
    _check_image_size(image_size)
    if isinstance(n_views, bool) or not isinstance(n_views, int) or n_views < 1:
        raise ValueError(f"n_views must be an int >= 1, got {n_views!r}")
    return MultiView([ViewSpec(size=image_size, scale=(0.2, 1.0)) for _ in range(n_views)], [], mean, std)


_RECIPES = {"simclr": simclr_views, "byol": byol_views, "multicrop": multicrop_views, "mocov2": mocov2_views,
            "mocov1": mocov1_views, "msf": msf_views, "swav_multicrop": swav_multicrop_views, "crop": crop_views}
_MULTICROP_EXTRAS = {"n_global", "n_local", "global_scale", "local_scale", "local_size"}
_RECIPE_EXTRAS = {
    "simclr": {"strength"},
    "byol": set(),
    "multicrop": _MULTICROP_EXTRAS,
    "mocov2": {"n_views"},
    "mocov1": set(),
    "msf": {"weak_target"},
    "swav_multicrop": _MULTICROP_EXTRAS,
    "crop": {"n_views"},
}
VIEW_KINDS = tuple(_RECIPES)


def build_views(
    kind: str,
    image_size: int,
    channels: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **overrides: Any,
) -> MultiView:
    """Build a recipe's ``MultiView`` by name, ``kind`` in :data:`VIEW_KINDS`: "simclr" (SimCLR),
    "byol" (BYOL), "multicrop" (DINO's), "mocov2" (MoCo v2, SimSiam), "mocov1" (MoCo v1), "msf" (MSF's weak/strong),
    "swav_multicrop" (SwAV's, DeepCluster-v2's), "crop" (MAE's crop and flip, no colour).

    ``overrides`` are ViewSpec fields applied to every view (e.g. ``scale=(0.2, 1.0)``,
    ``blur_p=0.0``) plus the recipe's own arguments (simclr: ``strength``; mocov2: ``n_views``;
    msf: ``weak_target``; multicrop and swav_multicrop: ``n_global``, ``n_local``, ``global_scale``,
    ``local_scale``, ``local_size``).
    mean/std default to :func:`default_mean_std` of ``channels``.
    """
    if kind not in _RECIPES:
        raise ValueError(f"unknown view kind {kind!r}; choose one of {', '.join(VIEW_KINDS)}")
    default_mean, default_std = default_mean_std(channels)
    mean = default_mean if mean is None else tuple(mean)
    std = default_std if std is None else tuple(std)
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean/std need {channels} values for {channels}-channel images, got {len(mean)} and {len(std)}")
    spec_fields = {f.name for f in dataclasses.fields(ViewSpec)}
    extras = _RECIPE_EXTRAS[kind]
    unknown = sorted(set(overrides) - spec_fields - extras)
    if unknown:
        raise ValueError(
            f"unknown override(s) {unknown} for kind {kind!r}; valid: {sorted(spec_fields | extras)}"
        )
    recipe_args = {k: v for k, v in overrides.items() if k in extras}
    field_args = {k: v for k, v in overrides.items() if k in spec_fields}
    views = _RECIPES[kind](image_size, mean, std, **recipe_args)
    if field_args:
        views = MultiView(
            replace_all(views.global_views, **field_args), replace_all(views.local_views, **field_args), mean, std
        )
    return views
