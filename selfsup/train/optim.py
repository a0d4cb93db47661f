"""Optimizers: SGD, AdamW and LARS, with bias/norm parameters excluded from decay and adaptation."""

from __future__ import annotations

import torch


class LARS(torch.optim.Optimizer):
    r"""Layer-wise Adaptive Rate Scaling (You et al., 2017), as used by SimCLR/BYOL/VICReg.

    For each parameter tensor :math:`w` with gradient :math:`g`:
    :math:`g \leftarrow g + \lambda w`, then the trust ratio
    :math:`\eta \|w\| / \|g\|` (1 if either norm is 0) scales the update, then SGD momentum.
    Groups flagged ``no_decay`` (biases, norms) skip both decay and adaptation.
    """

    def __init__(self, params, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 1e-3) -> None:
        if lr < 0 or eta <= 0:
            raise ValueError(f"LARS needs lr >= 0 and eta > 0, got lr={lr}, eta={eta}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, no_decay=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not group["no_decay"]:
                    if group["weight_decay"]:
                        g = g.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    g = g.mul(trust)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.clone(g).detach()
                else:
                    state["mu"].mul_(group["momentum"]).add_(g)
                p.add_(state["mu"], alpha=-group["lr"])
        return loss


def build_optimizer(groups: list[dict], name: str, lr: float, weight_decay: float, momentum: float = 0.9,
                    betas: tuple[float, float] = (0.9, 0.999), eta: float = 1e-3) -> torch.optim.Optimizer:
    """Optimizer over ``Method.param_groups()``. Groups with ``no_decay`` get weight decay 0.

    Extra group keys (``lr_scale``, ``fixed_lr``, ``no_decay``) are kept in the groups so the
    training loop can apply schedules to each group in plain sight.
    """
    groups = [dict(g) for g in groups if len(g["params"])]
    for g in groups:
        g.setdefault("lr_scale", 1.0)
        g.setdefault("fixed_lr", False)
        g.setdefault("no_decay", False)
        g["weight_decay"] = 0.0 if g["no_decay"] else weight_decay
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta)
    raise ValueError(f"unknown optimizer '{name}'; choose sgd, adamw or lars")


def set_lr_wd(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float, peak_lr: float) -> None:
    """Apply this step's scheduled lr and weight decay to every group, honouring group flags:
    ``lr_scale`` multiplies the lr; ``fixed_lr`` groups keep ``peak_lr * lr_scale`` throughout
    (SimSiam's predictor); ``no_decay`` groups get no weight decay."""
    for g in optimizer.param_groups:
        g["lr"] = (peak_lr if g.get("fixed_lr") else lr) * g.get("lr_scale", 1.0)
        g["weight_decay"] = 0.0 if g.get("no_decay") else weight_decay
