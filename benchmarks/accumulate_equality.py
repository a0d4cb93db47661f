"""How close train.accumulate=K comes to one full batch: loss and parameter gradients, float64 and float32.

    python benchmarks/accumulate_equality.py [--batch 64] [--ks 2 4 8]

For each method (exact: gradient caching; plain: loss / K) on a BN-free network (small_cnn with every
BatchNorm replaced by GroupNorm(1, C), projector likewise; ``simclr+bn`` keeps BatchNorm, whose micro-batch
statistics make the result differ), it prints the largest absolute difference of
the loss and of any gradient entry between K micro-batches and the single batch, the largest gradient
entry for scale, and the step time relative to K=1 (gradient caching runs one extra forward).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn

from selfsup.methods import METHODS
from selfsup.nets import SmallCNN
from selfsup.train.accumulate import accumulated_backward

CASES = [("simclr", {"projector": "64-32", "temperature": 0.1}), ("vicreg", {"projector": "64-32"}),
         ("barlow_twins", {"projector": "64-32", "lambda_": 5e-3}), ("dcl", {"projector": "64-32"}),
         ("byol", {"projector": "64-32", "predictor": "64-32"}), ("simsiam", {"projector": "64-32",
                                                                             "predictor": "16-32"}),
         ("simclr+bn", {"projector": "64-32", "temperature": 0.1})]  # BatchNorm kept: micro-batch statistics


def no_bn(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            gn = nn.GroupNorm(1, child.num_features, affine=child.affine)
            if child.affine:
                gn.requires_grad_(child.weight.requires_grad)
            setattr(module, name, gn)
        else:
            no_bn(child)
    return module


def grads(method: nn.Module, views: list[torch.Tensor], k: int) -> tuple[float, dict[str, torch.Tensor], float]:
    method.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    if k == 1:
        loss = method(views, 0.0)["loss"]
        loss.backward()
    else:
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        loss = accumulated_backward(method, method, views, 0.0, None, k, "fp32", torch.device("cpu"), scaler)["loss"]
    dt = time.perf_counter() - t0
    return loss.item(), {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}, dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--size", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"batch {args.batch}, {args.size} px, small_cnn width 8 with GroupNorm; |d| = max abs difference vs K=1")
    print(f"{'method':13} {'mode':6} {'dtype':8} {'K':>2} {'|d loss|':>9} {'|d grad|':>9} {'max |grad|':>10} "
          f"{'time/K=1':>8}")
    for name, cfg in CASES:
        cls = METHODS[name.removesuffix("+bn")]
        for dtype in (torch.float64, torch.float32):
            torch.manual_seed(0)
            m = cls(SmallCNN(3, 8), 64, cls.Config(**cfg))
            m = (m if name.endswith("+bn") else no_bn(m)).to(dtype)
            g = torch.Generator().manual_seed(1)
            views = [torch.randn(args.batch, 3, args.size, args.size, generator=g, dtype=dtype) for _ in range(2)]
            grads(m, views, 1)  # warm-up
            loss1, g1, t1 = grads(m, views, 1)
            scale = max(v.abs().max().item() for v in g1.values())
            for k in args.ks:
                loss, gk, tk = grads(m, views, k)
                d = max((gk[n] - g1[n]).abs().max().item() for n in g1)
                print(f"{name:13} {cls.accumulation:6} {str(dtype)[6:]:8} {k:>2} {abs(loss - loss1):9.1e} {d:9.1e} "
                      f"{scale:10.3g} {tk / t1:8.2f}")
    print("command: python benchmarks/accumulate_equality.py " + " ".join(
        [f"--batch {args.batch}", "--ks " + " ".join(map(str, args.ks)), f"--size {args.size}"]))


if __name__ == "__main__":
    main()
