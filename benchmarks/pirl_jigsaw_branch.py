"""PIRL's jigsaw branch g in the learning test's short run (tests/test_origins_instance.py): after the run, the mean
cosine of g over the 256 training images, g's and f's own-row retrieval against the memory bank (chance 1/256), the
kNN top-1 (eval mode), and g before normalisation (norm of its mean over images, mean distance from that mean;
training-mode BatchNorm).

    PYTHONPATH=tests OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pirl_jigsaw_branch.py \
        "" "method.objective=softmax views.params.scale=[0.6,1.0]" [--identity-order] [--no-g-bias] [--other-tiles]

    PYTHONPATH=tests OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pirl_jigsaw_branch.py --run RUN_DIR

Each positional argument is one run's overrides (space-separated; "" for none), on top of the test's with the
recipe's former NCE settings (``NCE_BEFORE``); the shipped pirl_digits is
``"method.objective=softmax views.params.scale=[0.5,1.0] method.crop_frac=0.9 method.temperature=0.1"``.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import tempfile
from pathlib import Path

import torch

from selfsup.config import load_recipe
from selfsup.data import DataSplits, ImageArray
from selfsup.train.loop import build_method, train
from selfsup.views import default_mean_std
from selfsup.views.pretext_spatial import jigsaw_tiles
from train_utils import LEARN, knn_top1, shifted_digits

# test_short_run_beats_random_init's pirl case with the recipe's NCE settings before it took the test's g settings
# (PIRL_G there), so "" is the run that collapses and every documented override is relative to it
NCE_BEFORE = ["method.objective=nce", "views.params.scale=[0.3,1.0]", f"method.crop_frac={64 / 85!r}",
              "method.temperature=0.07"]
TEST = ["data.batch_size=64", "method.memory_size=256", "method.grid=2", "method.tile_size=8",
        "train.epochs=6", *NCE_BEFORE]


def _mean_cos(v: torch.Tensor) -> float:
    n = len(v)
    return (v @ v.T)[~torch.eye(n, dtype=torch.bool)].mean().item()


def run(extra: list[str], seed: int, identity_order: bool, no_g_bias: bool, other_tiles: bool = False) -> str:
    data, n = shifted_digits(), 256
    sub = DataSplits(ImageArray(data.train.images[:n], data.train.labels[:n], data.train.classes), data.test,
                     data.name, data.num_classes)
    out = Path(tempfile.mkdtemp())
    r = load_recipe("pirl_digits", LEARN + TEST + extra + [f"train.seed={seed}", f"train.out_dir={out}"])
    torch.manual_seed(seed)
    m = build_method(r, data.train.channels, data.train.image_size)
    if identity_order:  # tiles in their own positions: no permutation to be invariant to
        draw = m.make_masks
        m.make_masks = lambda b, gen: (lambda o: (torch.arange(o[0].shape[1]).expand_as(o[0]).clone(), *o[1:]))(
            draw(b, gen))
    if no_g_bias:
        for layer in (m.g_tile, m.g_head):
            torch.nn.init.zeros_(layer.bias)
            layer.bias.requires_grad_(False)
    if other_tiles:  # broken: g is trained on the jigsaw of the batch's previous image
        fwd = m.forward
        m.forward = lambda views, *a, **k: fwd([views[0], views[-1].roll(1, 0)], *a, **k)
    train(r, run_dir=out / "run", data=sub, method=m, log=lambda *a: None)
    knn = knn_top1(m.backbone, data)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in default_mean_std(1))
    x = (sub.train.images.float() / 255 - mean) / std
    m.eval()
    with torch.no_grad():
        f = m.embed(x)
        order, offsets, _ = m.make_masks(n, torch.Generator().manual_seed(123))
        c = m.cfg
        tiles = jigsaw_tiles(x, order, offsets, c.grid, c.crop_frac, c.tile_size, c.tile_normalize)
        g = m.embed_tiles(x, order, offsets)
        t = copy.deepcopy(m).train()  # g before normalisation with the batch statistics it is trained with
        pre = t.g_head(t.g_tile(t.backbone(tiles.flatten(0, 1))).view(n, -1))
    shutil.rmtree(out, ignore_errors=True)
    rows, own = m.bank.bank, torch.arange(n)
    own_f = ((f @ rows.T).argmax(1) == own).float().mean().item()
    own_g = ((g @ rows.T).argmax(1) == own).float().mean().item()
    top10_g = ((g @ rows.T).topk(10, 1).indices == own[:, None]).any(1).float().mean().item()
    return (f"{' '.join(extra) or '(NCE_BEFORE)'} seed {seed}: kNN {knn:.3f}  g mean cosine {_mean_cos(g):.4f}  "
            f"g own-row {own_g:.3f} (top-10 {top10_g:.3f}, chance 0.039)  f own-row {own_f:.3f}  "
            f"f mean cosine {_mean_cos(f):.3f}  g before "
            f"normalisation: mean norm {pre.mean(0).norm():.1f}, spread {(pre - pre.mean(0)).norm(dim=1).mean():.1f}")


def trained_run(run_dir: str) -> str:
    """g's and f's health in a finished run (``selfsup train --recipe pirl_digits ...``) over the digits training
    split at the run's size: mean cosine, own bank row top-1 and top-10 (one fixed jigsaw per image, eval mode)."""
    from selfsup.data.formats import load_data
    from selfsup.rundir import load_method

    m, meta = load_method(run_dir)
    images = load_data(None, image_size=meta["image_size"]).train.images
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (meta["mean"], meta["std"]))
    x = (images.float() / 255 - mean) / std
    n = len(x)
    with torch.no_grad():
        order, offsets, _ = m.make_masks(n, torch.Generator().manual_seed(123))
        out = {"g": m.embed_tiles(x, order, offsets), "f": m.embed(x)}
    rows, own = m.bank.bank, torch.arange(n)
    parts = []
    for name, v in out.items():
        s = v @ rows.T
        top10 = (s.topk(10, 1).indices == own[:, None]).any(1).float().mean().item()
        parts.append(f"{name} mean cosine {_mean_cos(v):.4f}  own-row {(s.argmax(1) == own).float().mean().item():.4f} "
                     f"(top-10 {top10:.3f})")
    return f"{run_dir} (chance {1 / n:.4f}, top-10 {10 / n:.4f}): " + "  ".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", default=[""], help="one run's overrides each (space-separated)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--identity-order", action="store_true", help="tiles in their own order (no shuffle)")
    p.add_argument("--no-g-bias", action="store_true", help="g's two linear layers without bias")
    p.add_argument("--other-tiles", action="store_true", help="broken: g trained on the previous image's tiles")
    p.add_argument("--run", help="report g and f of this finished run directory instead of training")
    a = p.parse_args()
    if a.run:
        print(trained_run(a.run))
        return
    for extra in a.runs or [""]:
        print(run(extra.split(), a.seed, a.identity_order, a.no_g_bias, a.other_tiles), flush=True)


if __name__ == "__main__":
    main()
