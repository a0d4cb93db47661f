"""SimCLR training throughput: selfsup's trainer vs a loop built from lightly's components,
side by side in one run, same backbone, batch 256 at 28 px, same precision.

    python -m venv --system-site-packages /tmp/venv_lightly
    /tmp/venv_lightly/bin/pip install --no-deps lightly lightning_utilities   # benchmark env only
    /tmp/venv_lightly/bin/python benchmarks/lightly_baseline.py [--epochs 2 --n 4096 --precision bf16]

lightly is never a dependency of selfsup. The peer loop is lightly's documented SimCLR recipe:
``SimCLRTransform`` per image in 2 DataLoader workers, ``SimCLRProjectionHead``, ``NTXentLoss``,
lightly's ``LARS``. selfsup runs its real trainer (``selfsup.train.loop.train``: batched views,
online probe, metrics, checkpoints). Both use selfsup's ``SmallCNN`` backbone, 3-channel
synthetic images, SimCLR augmentations with blur p=0.5, and report images/s of the last epoch.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_images(n: int, size: int) -> np.ndarray:
    """Smooth random colour images (so crops and jitter do real work), uint8 NHWC."""
    g = torch.Generator().manual_seed(0)
    low = torch.rand(n, 3, size // 4, size // 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def run_lightly(images: np.ndarray, args: argparse.Namespace) -> float:
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform
    from lightly.utils.lars import LARS

    from selfsup.nets import SmallCNN

    class DS(torch.utils.data.Dataset):
        def __init__(self, x):
            self.x, self.t = x, SimCLRTransform(input_size=args.size, gaussian_blur=0.5)

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.t(Image.fromarray(self.x[i]))

    torch.manual_seed(0)
    backbone, head = SmallCNN(3, width=args.width), SimCLRProjectionHead(32 * 8, 256, 64)
    params = list(backbone.parameters()) + list(head.parameters())
    opt, crit = LARS(params, lr=0.3), NTXentLoss(temperature=0.2)
    loader = torch.utils.data.DataLoader(DS(images), batch_size=args.batch, shuffle=True, drop_last=True,
                                         num_workers=args.workers, persistent_workers=True)
    ips = 0.0
    for epoch in range(args.epochs):
        t0, n = time.perf_counter(), 0
        for v1, v2 in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                z = head(backbone(torch.cat([v1, v2])))
                z1, z2 = z.float().chunk(2)
                loss = crit(z1, z2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += v1.shape[0]
        ips = n / (time.perf_counter() - t0)
        print(f"lightly  epoch {epoch + 1}: {ips:.1f} img/s (loss {loss.item():.3f})", flush=True)
    return ips


def run_selfsup(images: np.ndarray, args: argparse.Namespace) -> float:
    from selfsup.config import load_recipe
    from selfsup.data import DataSplits, ImageArray
    from selfsup.train.loop import train

    labels = torch.randint(0, 10, (len(images),), generator=torch.Generator().manual_seed(0))  # keeps the online probe on
    data = DataSplits(ImageArray(torch.from_numpy(images).permute(0, 3, 1, 2), labels), None, "synthetic", 10)
    r = load_recipe("simclr_digits", [f"data.batch_size={args.batch}", f"train.epochs={args.epochs}",
                                      f"train.precision={args.precision}", f"model.width={args.width}",
                                      "views.params.blur_p=0.5", "train.progress_bar=false", "optim.warmup_epochs=0",
                                      f"data.image_size={args.size}"])
    with tempfile.TemporaryDirectory() as tmp:
        run = train(r, run_dir=Path(tmp) / "run", data=data, log=lambda *a: None)
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        print(f"selfsup  epoch {row['epoch']}: {row['img_per_s']:.1f} img/s (loss {row['loss']:.3f}; per step: "
              f"data {1e3 * row['data_time']:.1f} ms, aug {1e3 * row['aug_time']:.1f} ms, "
              f"model {1e3 * row['model_time']:.1f} ms)", flush=True)
    return rows[-1]["img_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    args = p.parse_args()
    print(f"# {' '.join(sys.argv)}")
    print(f"# torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads; small_cnn width "
          f"{args.width}, batch {args.batch}, {args.size} px, {args.precision}, {args.n} images")
    images = make_images(args.n, args.size)
    ours = run_selfsup(images, args)
    peer = run_lightly(images, args)
    print(f"\nselfsup {ours:.1f} img/s vs lightly components {peer:.1f} img/s: {ours / peer:.2f}x")


if __name__ == "__main__":
    main()
