"""Masked-image-modeling step cost on the CPU (or a GPU): what dropping tokens buys, and the peer's MAE.

One optimisation step (forward, backward, AdamW) of the same ViT, timed best-of-N:

- selfsup MAE at mask 0.75 (the encoder sees 25% of the patches) and at mask 0 (all of them);
- an encoder that sees mask tokens at every position (SimMIM-style, selfsup's SimMIM) at the same size;
- lightly 1.6's MAE (``MaskedVisionTransformerTIMM`` + ``MAEDecoderTIMM``, its documented example loop) on the
  same timm ViT, when lightly is importable (never a selfsup dependency):

    pip install --no-deps --target /tmp/lightly_pkgs lightly lightning_utilities      # benchmark only
    PYTHONPATH=/tmp/lightly_pkgs python benchmarks/mim_step.py --size 32 --patch 4 --width 192 --depth 12

- DINOv2 / iBOT ViT-tiny images/s (2 global + local crops, masks, the whole method step) in fp32 and bf16.

Prints images/s and ms per step, split into mask drawing and model, plus peak memory (CUDA) or RSS.
"""

from __future__ import annotations

import argparse
import resource
import shlex
import sys
import time
import warnings

import torch

from selfsup.config import load_recipe
from selfsup.train.loop import build_method
from selfsup.train.setup import autocast


def _vit(size: int, patch: int, width: int, depth: int, heads: int) -> list[str]:
    return ["model.backbone=timm:vit_tiny_patch16_224", f"model.vit.patch_size={patch}", f"model.vit.embed_dim={width}",
            f"model.vit.depth={depth}", f"model.vit.num_heads={heads}", f"data.image_size={size}"]


def _time(step, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t0)
    return best


def selfsup_step(recipe: str, overrides: list[str], batch: int, size: int, precision: str, device: torch.device):
    """One step of a selfsup method through its own forward (masks drawn as the trainer does)."""
    r = load_recipe(recipe, overrides + [f"data.batch_size={batch}", f"train.precision={precision}"])
    torch.manual_seed(0)
    m = build_method(r, 3, size).to(device)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    from selfsup.views import build_views

    views = build_views(r.views.kind or m.default_views, size, 3, **r.views.params)
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    gen = torch.Generator().manual_seed(0)
    v = views(x, gen)
    split = {"masks": 0.0}

    def step():
        t0 = time.perf_counter()
        masks = m.make_masks(batch, gen)
        masks = None if masks is None else tuple(t.to(device) for t in masks)
        split["masks"] = time.perf_counter() - t0
        with autocast(precision, device):
            loss = m(v, 0.5, masks=masks)["loss"] if masks is not None else m(v, 0.5)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        m.after_step(0.5)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step, split


def lightly_mae_step(width: int, depth: int, heads: int, patch: int, size: int, batch: int, dec_dim: int,
                     dec_depth: int, ratio: float, device: torch.device):
    """lightly's MAE example loop (examples/pytorch/mae.py) on the same timm ViT."""
    import timm
    from lightly.models import utils
    from lightly.models.modules import MaskedVisionTransformerTIMM
    from lightly.models.modules.masked_autoencoder_timm import MAEDecoderTIMM

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=size, patch_size=patch,
                            embed_dim=width, depth=depth, num_heads=heads)
    backbone = MaskedVisionTransformerTIMM(vit=vit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        decoder = MAEDecoderTIMM(num_patches=vit.patch_embed.num_patches, patch_size=patch, embed_dim=width,
                                 decoder_embed_dim=dec_dim, decoder_depth=dec_depth, decoder_num_heads=2)  # as selfsup's row
    model = torch.nn.ModuleList([backbone, decoder]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size, device=device)
    seq = vit.patch_embed.num_patches + vit.num_prefix_tokens

    def step():
        idx_keep, idx_mask = utils.random_token_mask(size=(batch, seq), mask_ratio=ratio, device=device)
        enc = backbone.encode(images=x, idx_keep=idx_keep)
        dec_in = utils.repeat_token(decoder.mask_token, (batch, seq))
        dec_in = utils.set_at_index(dec_in, idx_keep, decoder.embed(enc).type_as(dec_in))
        pred = decoder.predict(utils.get_at_index(decoder.decode(dec_in), idx_mask))
        target = utils.get_at_index(utils.patchify(x, patch), idx_mask - 1)
        loss = torch.nn.functional.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--decoder", default="128x2", help="MAE decoder width x depth")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip", nargs="*", default=[], help="rows to skip: mae simmim lightly dinov2 ibot bf16")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dec_dim, dec_depth = (int(v) for v in args.decoder.split("x"))
    vit = _vit(args.size, args.patch, args.width, args.depth, args.heads)
    mae = vit + [f"method.decoder_dim={dec_dim}", f"method.decoder_depth={dec_depth}", "method.decoder_heads=2",
                 "views.kind=crop"]
    n = (args.size // args.patch) ** 2
    print(f"command: python {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(f"ViT {args.width} x {args.depth} blocks, patch {args.patch} at {args.size} px ({n} patches), batch "
          f"{args.batch}, decoder {args.decoder}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{device}")
    rows: list[tuple[str, float, float]] = []

    def report(name: str, seconds: float, mask_s: float = 0.0) -> None:
        rows.append((name, seconds, mask_s))
        print(f"{name:<44} {args.batch / seconds:8.1f} img/s  {1000 * seconds:8.1f} ms/step  (masks "
              f"{1000 * mask_s:.1f} ms, model {1000 * (seconds - mask_s):.1f} ms)", flush=True)

    if "mae" not in args.skip:
        for ratio in (0.75, 0.0):
            step, split = selfsup_step("mae_digits", mae + [f"method.mask_ratio={ratio}"], args.batch, args.size,
                                       "fp32", device)
            report(f"selfsup MAE, mask {ratio} ({round(n * (1 - ratio))} tokens)", _time(step, args.repeats),
                   split["masks"])
    if "simmim" not in args.skip:
        step, split = selfsup_step("simmim_digits", vit + [f"method.mask_patch_size={2 * args.patch}",
                                                           "model.vit.drop_path_rate=0"], args.batch, args.size,
                                   "fp32", device)
        report(f"selfsup SimMIM (mask tokens, {n} tokens)", _time(step, args.repeats), split["masks"])
    if "lightly" not in args.skip:
        try:
            step = lightly_mae_step(args.width, args.depth, args.heads, args.patch, args.size, args.batch, dec_dim,
                                    dec_depth, 0.75, device)
            report("lightly 1.6 MAE, mask 0.75", _time(step, args.repeats))
        except ImportError as e:
            print(f"lightly MAE: skipped ({e}); see the docstring for the benchmark-only install")
    for name in ("dinov2", "ibot"):
        if name in args.skip:
            continue
        small = [f"method.head={args.width}-{args.width}-64", "method.out_dim=1024"]  # the digits crops: 2 x 32 + 4 x 16 px
        for precision in ("fp32", "bf16"):
            if precision == "bf16" and "bf16" in args.skip:
                continue
            step, split = selfsup_step(f"{name}_digits", vit + small, args.batch, args.size, precision, device)
            report(f"selfsup {name} (2 x 32 + 4 x 16 px crops), {precision}", _time(step, max(2, args.repeats // 2)),
                   split["masks"])
    if device.type == "cuda":
        print(f"peak CUDA memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    by = {r[0]: r[1] for r in rows}
    full = [k for k in by if k.startswith("selfsup MAE, mask 0.0")]
    drop = [k for k in by if k.startswith("selfsup MAE, mask 0.75")]
    sim = [k for k in by if k.startswith("selfsup SimMIM")]
    if full and drop:
        print(f"MAE speed-up from dropping 75% of the tokens: {by[full[0]] / by[drop[0]]:.2f}x")
    if sim and drop:
        print(f"MAE (mask 0.75) vs an encoder that sees mask tokens (SimMIM): {by[sim[0]] / by[drop[0]]:.2f}x")
    if drop and "lightly 1.6 MAE, mask 0.75" in by:
        print(f"selfsup MAE vs lightly MAE step: {by['lightly 1.6 MAE, mask 0.75'] / by[drop[0]]:.2f}x")


if __name__ == "__main__":
    main()
