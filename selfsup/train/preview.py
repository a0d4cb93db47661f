"""The augmentation preview: ``views.png``, every view of a few training images, written at step 0 of
a new run so a user sees what the recipe's augmentations do before spending a day on them.

The images and view parameters come from a generator of their own (``mix_seed(seed,
PREVIEW_SEED_SALT)``), never from the epoch generator or torch's global one, so the preview changes
nothing in training. In-RAM data is augmented as in training (views cropped from the stored images);
streamed files get their crops cut from the full-resolution images, as the loader's workers do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image

from selfsup.data import StreamSplit
from selfsup.seeds import mix_seed
from selfsup.views import Crops, MultiView

#: the last part of the preview's seed ``mix_seed(seed, PREVIEW_SEED_SALT)``
PREVIEW_SEED_SALT = 0x71E3
#: grid cells are enlarged (nearest neighbour, by a whole factor) to at least this many pixels
MIN_CELL = 64
#: pixels between cells
PADDING = 2


@torch.no_grad()
def preview_views(split, views: MultiView, n: int, seed: int, device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Each view (normalised float ``[n, C, s_v, s_v]``) of ``n`` training images drawn without
    replacement; everything random comes from one generator seeded by ``(seed, PREVIEW_SEED_SALT)``."""
    gen = torch.Generator().manual_seed(mix_seed(seed, PREVIEW_SEED_SALT))
    rows = torch.randperm(len(split), generator=gen)[:min(n, len(split))].sort().values
    if isinstance(split, StreamSplit):  # full-resolution crops, as StreamLoader's workers cut them
        heights = torch.from_numpy(split.index.height.astype("int64"))[rows]
        widths = torch.from_numpy(split.index.width.astype("int64"))[rows]
        params = views.sample_params(heights, widths, gen)
        sizes = [spec.size for spec in views.specs]
        per_image = [split.cut_views(int(i), torch.stack([p.boxes[r] for p in params]), sizes)[0]
                     for r, i in enumerate(rows.tolist())]
        crops = [torch.stack([img[v] for img in per_image]).to(device) for v in range(len(sizes))]
        out = views(Crops(crops, params), gen)  # parameters stay on the CPU, as the loader's do
    else:
        out = views(split.batch(rows)[0].to(device), gen)
    return [v.float().cpu() for v in out]


def view_grid(views: list[torch.Tensor], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A float ``[3, H, W]`` image in [0, 1]: one row per image, one column per view (globals first),
    de-normalised; smaller (local) views are padded to the largest view's cell, not enlarged, so
    their relative scale shows. Cells are enlarged by a whole factor to at least :data:`MIN_CELL` px."""
    side = max(v.shape[-1] for v in views)
    scale = max(1, MIN_CELL // side)
    mu = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    sd = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    cells = []
    for v in views:
        img = (v * sd + mu).clamp(0, 1)
        if scale > 1:
            img = F.interpolate(img, scale_factor=scale, mode="nearest")
        gap = side * scale - img.shape[-1]
        cells.append(F.pad(img, (gap // 2, gap - gap // 2, gap // 2, gap - gap // 2), value=1.0))
    tiles = torch.stack(cells, 1).flatten(0, 1)  # [n * V, C, T, T], image-major
    return make_grid(tiles, nrow=len(views), padding=PADDING, pad_value=1.0)


def write_view_preview(split, views: MultiView, path: Path, n: int = 8, seed: int = 0,
                       device: torch.device | str = "cpu") -> torch.Tensor:
    """Write :func:`view_grid` of :func:`preview_views` to ``path`` (PNG); return the grid."""
    grid = view_grid(preview_views(split, views, n, seed, device), views.mean, views.std)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    return grid
