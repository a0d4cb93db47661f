"""Per-op cost of the photometric view ops on the CPU: selfsup's batched ops vs torchvision's per-image ones.

On a CPU-only machine the streaming loader's workers run the photometric part of each view (jitter, grayscale,
blur, solarize, normalise) themselves, one thread each, so these ops set its images/s (benchmarks/data_stream.py).
For each op this prints milliseconds per image, single-threaded, for:

  selfsup      - the batched op of ``selfsup.views`` on a [B, 3, S, S] float batch, per-sample factors;
  tv-tensor    - ``torchvision.transforms.v2.functional`` on each image's float tensor, one at a time;
  tv-pil       - the same function on each PIL image (what a torchvision ImageFolder pipeline on PIL runs).

    python benchmarks/view_ops.py --size 224 --batch 32 --repeats 5
    python benchmarks/view_ops.py --size 32 --batch 256 --repeats 5

Times are CPU seconds of this thread (``time.thread_time``), less disturbed than wall time on a shared machine.
selfsup's blur cuts each sample's kernel at ceil(4 sigma) (see ``selfsup.views.ops.gaussian_blur``); torchvision's
uses all 23 taps. Figures measured on this repo's 2-core dev box are in the README ("Real image data"). The last
ones, ``--size 224 --batch 32 --repeats 5`` on the loaded machine (load 4-8 from other jobs), medians of 3 runs
interleaved with the code at 827ec73 (before the blur rewrite), ms per image, selfsup before -> after (torchvision
tensor / PIL, about the same in every run): brightness 0.13 -> 0.13 (0.13 / 0.17), contrast 0.25 -> 0.30 (one
run after its last change; an interleaved A/B of 11 calls gave 0.24 -> 0.25 at batch 8: no change), saturation
0.29 -> 0.28, hue 2.48 -> 2.17 (unchanged code: noise), blur k=23 2.92 -> 1.21 (10.5 / 11.9).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from selfsup.views import adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, gaussian_blur
from selfsup.views.ops import blur_kernel_size


def per_image_ms(fn: Callable[[], object], n_images: int, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t0)
    return 1e3 * best / n_images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    b, s = args.batch, args.size
    x = torch.rand(b, 3, s, s, generator=g)
    f = 0.6 + 0.8 * torch.rand(b, generator=g)  # brightness / contrast / saturation factors in [0.6, 1.4]
    h = 0.2 * torch.rand(b, generator=g) - 0.1  # hue in [-0.1, 0.1]
    sigma = 0.1 + 1.9 * torch.rand(b, generator=g)
    k = blur_kernel_size(s)
    singles = list(x.unbind(0))
    pils = [Image.fromarray((im.permute(1, 2, 0).numpy() * 255).astype(np.uint8)) for im in singles]

    ops = [
        ("brightness", lambda: adjust_brightness(x, f), lambda i, im: TF.adjust_brightness(im, float(f[i]))),
        ("contrast", lambda: adjust_contrast(x, f), lambda i, im: TF.adjust_contrast(im, float(f[i]))),
        ("saturation", lambda: adjust_saturation(x, f), lambda i, im: TF.adjust_saturation(im, float(f[i]))),
        ("hue", lambda: adjust_hue(x, h), lambda i, im: TF.adjust_hue(im, float(h[i]))),
        (f"blur k={k}", lambda: gaussian_blur(x, sigma, k),
         lambda i, im: TF.gaussian_blur(im, [k, k], [float(sigma[i])] * 2)),
    ]
    print(f"# {' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}")
    print(f"# torch {torch.__version__}, batch {b} x 3 x {s} x {s}, 1 thread, ms per image (best of {args.repeats})")
    print(f"{'op':>12} {'selfsup':>9} {'tv-tensor':>10} {'tv-pil':>9}")
    for name, ours, theirs in ops:
        a = per_image_ms(ours, b, args.repeats)
        t = per_image_ms(lambda: [theirs(i, im) for i, im in enumerate(singles)], b, args.repeats)
        p = per_image_ms(lambda: [theirs(i, im) for i, im in enumerate(pils)], b, args.repeats)
        print(f"{name:>12} {a:9.3f} {t:10.3f} {p:9.3f}")


if __name__ == "__main__":
    main()
