"""SMoG's loss and group update against lightly 1.6's ``SMoGPrototypes`` (the reference selfsup's SMoG follows), on
random float64 inputs: value, the updated groups, and the gradients with respect to the predictions and the
online projections (lightly's update keeps the members' gradient, as ours).

lightly is never a selfsup dependency; install it for this script only:

    pip install --no-deps --target /tmp/lightly_pkgs lightly lightning_utilities      # benchmark only
    PYTHONPATH=/tmp/lightly_pkgs .venv/bin/python benchmarks/smog_lightly_parity.py

lightly's step (examples/pytorch/smog.py): ``y = assign_groups(target)``, ``g' = get_updated_group_features(z)``,
``logits = smog(p, g', temperature)``, ``CrossEntropyLoss(logits, y)``.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from selfsup.losses import smog_loss

TOL = 1e-9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="batch size")
    ap.add_argument("--d", type=int, default=8, help="embedding dimension")
    ap.add_argument("--groups", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    try:
        import lightly
        from lightly.models.modules.heads import SMoGPrototypes
    except ImportError:
        print("lightly is not importable; see the module docstring for the benchmark-only install")
        return 2
    print(f"selfsup smog_loss vs lightly {lightly.__version__} SMoGPrototypes, float64, N={args.n}, D={args.d}, "
          f"K={args.groups}, seed {args.seed}")
    print(f"command: PYTHONPATH=/tmp/lightly_pkgs {' '.join([sys.executable.split('/')[-1], *sys.argv])}")
    g = torch.Generator().manual_seed(args.seed)
    p, z, t = (torch.randn(args.n, args.d, generator=g, dtype=torch.float64) for _ in range(3))
    groups = F.normalize(torch.rand(args.groups, args.d, generator=g, dtype=torch.float64), dim=1)
    bad = 0
    for beta, tau in ((0.99, 0.1), (0.5, 0.2)):
        p1, z1 = p.clone().requires_grad_(), z.clone().requires_grad_()
        ours, new = smog_loss(p1, z1, t, groups, beta, tau, distributed=False)
        g_ours = torch.autograd.grad(ours, [p1, z1])
        p2, z2 = p.clone().requires_grad_(), z.clone().requires_grad_()
        smog = SMoGPrototypes(group_features=groups.clone(), beta=beta)
        y = smog.assign_groups(t)
        new_l = smog.get_updated_group_features(z2)
        theirs = F.cross_entropy(smog(p2, new_l, temperature=tau), y)
        g_theirs = torch.autograd.grad(theirs, [p2, z2])
        dv = (ours - theirs).abs().item()
        dgrp = (new - new_l).abs().max().item()
        dg = max((a - b).abs().max().item() for a, b in zip(g_ours, g_theirs))
        ok = dv <= TOL and dgrp <= TOL and dg <= TOL
        bad += not ok
        print(f"beta {beta} tau {tau}: |dvalue| {dv:.2e}  |dgroups| {dgrp:.2e}  |dgrad| {dg:.2e}  "
              f"{'PASS' if ok else 'FAIL'} (tol {TOL:.0e})")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
