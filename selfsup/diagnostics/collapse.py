"""Label-free collapse monitor for a training loop (cookbook, "Dimensional Collapse of Representations").

Two signals, measured once per epoch on the embeddings the loss sees:

* complete collapse, after SimSiam's analysis (Chen & He, 2021, Sec. 4.1 and Fig. 2): the mean
  per-dimension std of the L2-normalised embeddings is about ``1 / sqrt(D)`` when they spread over
  the sphere and goes to 0 when every input maps to one point;
* dimensional collapse (Jing et al., 2022): RankMe (Garrido et al., 2023) falls to a small
  fraction of ``min(N, D)``.

Calibration (normalised std x sqrt(D), 64-d embeddings, seed 0, measured on the digits recipes):
healthy runs contract right after warmup and spread out again -- the shipped ``byol_digits`` falls
from 0.80 to 0.123 at epoch 3 and 0.173 at epoch 4 (where the old threshold of 0.2 fired: a false
alarm, the run ends at kNN 0.92) and climbs back to 0.78; with LARS eta 1e-3 it bottoms out at 0.097
(epoch 5); ``simclr_digits`` (eta 1e-3) at 0.23 -- while BYOL without its predictor and with the target equal
to the online network (BYOL, Table 5a; SimSiam, Table 1; cookbook, "Self-Distillation") reaches
0.028 at epoch 3 and 0.009 by epoch 5 (eta 1e-3; its backbone: kNN 0.65 at epoch 11). Hence the
default threshold ``0.04 / sqrt(D)`` (2.4x below the deepest healthy dip measured, 3x below the
shipped recipe's), a signal must stay below it for ``patience`` consecutive updates, and the first
``grace_updates`` (the warmup epochs) do not count. Each kind is reported once; the monitor returns
its messages and the caller decides how to show them.
"""

from __future__ import annotations

import math
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from selfsup.diagnostics.spectra import rankme
from selfsup.diagnostics.validation import check_features


def normalized_std(z: Tensor) -> float:
    """Mean over dimensions of the std (over samples) of ``z / ||z||_2`` (SimSiam's collapse metric)."""
    z = check_features(z, "z").detach().float()
    if z.shape[0] < 2:
        raise ValueError("normalized_std needs at least 2 embeddings to compute a std")
    return float(F.normalize(z, dim=1).std(dim=0).mean())


class CollapseMonitor:
    """Tracks RankMe and the normalised-embedding std of ``[N, dim]`` embeddings and reports collapse.

    A kind of collapse is reported when its signal has been below threshold for ``patience``
    consecutive updates, none of them among the first ``grace_updates``:

    * ``"std"``: normalised std below ``std_fraction / sqrt(dim)`` (healthy: ~``1 / sqrt(dim)``);
    * ``"rankme"``: RankMe below ``rankme_fraction * min(N, dim)``.

    ``update`` returns the messages of kinds confirmed by this update (each kind once per monitor)
    and appends the measured values to ``history``. ``state_dict`` / ``from_state`` carry everything
    across a resume.
    """

    def __init__(self, dim: int, rankme_fraction: float = 0.02, std_fraction: float = 0.04, patience: int = 3,
                 grace_updates: int = 2) -> None:
        if int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim}")
        if not 0.0 <= rankme_fraction <= 1.0:
            raise ValueError(f"rankme_fraction must be in [0, 1], got {rankme_fraction}")
        if not 0.0 <= std_fraction <= 1.0:
            raise ValueError(f"std_fraction must be in [0, 1] (a fraction of the healthy 1/sqrt(dim)), got "
                             f"{std_fraction}")
        if int(patience) != patience or patience < 1 or int(grace_updates) != grace_updates or grace_updates < 0:
            raise ValueError(f"patience must be an integer >= 1 and grace_updates >= 0, got {patience} and "
                             f"{grace_updates}")
        self.dim = int(dim)
        self.rankme_fraction = float(rankme_fraction)
        self.std_fraction = float(std_fraction)
        self.patience = int(patience)
        self.grace_updates = int(grace_updates)
        self.history: list[dict[str, float]] = []
        self._streak = {"std": 0, "rankme": 0}
        self._reported: set[str] = set()

    @property
    def std_threshold(self) -> float:
        return self.std_fraction / math.sqrt(self.dim)

    def update(self, z: Tensor, step: int | None = None) -> list[str]:
        """Measure one batch of embeddings ``[N, dim]`` (N >= 2); return the newly confirmed collapse messages."""
        z = check_features(z, "z")
        if z.shape[1] != self.dim:
            raise ValueError(f"CollapseMonitor was built for dim={self.dim} but got embeddings of dim {z.shape[1]}")
        rank, std, bound = rankme(z), normalized_std(z), min(z.shape)
        row = {"rankme": rank, "normalized_std": std, "rankme_bound": float(bound)}
        if step is not None:
            row["step"] = float(step)
        self.history.append(row)
        in_grace = len(self.history) <= self.grace_updates
        below = {"std": std < self.std_threshold, "rankme": rank < self.rankme_fraction * bound}
        for kind, low in below.items():
            self._streak[kind] = self._streak[kind] + 1 if low and not in_grace else 0
        where = f" at step {step}" if step is not None else ""
        span = f"for {self.patience} consecutive checks"
        messages = {
            "std": f"collapse{where}: std of the L2-normalised embeddings {std:.2e} < {self.std_threshold:.2e} {span} "
                   f"(healthy ~ 1/sqrt(D) = {1 / math.sqrt(self.dim):.2e}); every input maps to nearly one point",
            "rankme": f"dimensional collapse{where}: RankMe {rank:.1f} < {self.rankme_fraction:g} x min(N, D) = "
                      f"{self.rankme_fraction * bound:.1f} {span}",
        }
        confirmed = [k for k in ("std", "rankme") if self._streak[k] >= self.patience and k not in self._reported]
        if "std" in confirmed:  # one point has rank one: the complete collapse says it all
            confirmed = ["std"]
            self._reported.add("rankme")
        self._reported.update(confirmed)
        return [messages[k] for k in confirmed]

    def state_dict(self) -> dict[str, Any]:
        """Settings, history and streaks (plain Python values) for a checkpoint."""
        return {"dim": self.dim, "rankme_fraction": self.rankme_fraction, "std_fraction": self.std_fraction,
                "patience": self.patience, "grace_updates": self.grace_updates,
                "history": [dict(r) for r in self.history], "streak": dict(self._streak),
                "reported": sorted(self._reported)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> CollapseMonitor:
        """The monitor that :meth:`state_dict` saved, ready to continue."""
        monitor = cls(state["dim"], state["rankme_fraction"], state["std_fraction"], state["patience"],
                      state["grace_updates"])
        monitor.history = [dict(r) for r in state["history"]]
        monitor._streak = dict(state["streak"])
        monitor._reported = set(state["reported"])
        return monitor
