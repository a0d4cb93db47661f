"""Label-free collapse monitor for a training loop (cookbook, "Dimensional Collapse of Representations").

Two signals, both cheap enough for every logging step:
* RankMe (Garrido et al., 2023) below ``rankme_fraction * min(N, D)``: dimensional collapse.
* Mean per-dimension std of the L2-normalised embeddings (Chen & He, 2021, SimSiam; used for BYOL
  too): about ``1 / sqrt(D)`` for healthy embeddings spread over the sphere, about 0 when all
  embeddings collapse to one point.
"""

from __future__ import annotations

import math
import warnings

import torch.nn.functional as F
from torch import Tensor

from ._checks import check_features
from .spectrum import rankme


def normalized_std(z: Tensor) -> float:
    """Mean over dimensions of the std (over samples) of ``z / ||z||_2`` (SimSiam collapse metric)."""
    z = check_features(z, "z").detach().float()
    if z.shape[0] < 2:
        raise ValueError("normalized_std needs at least 2 embeddings to compute a std")
    return float(F.normalize(z, dim=1).std(dim=0).mean())


class CollapseMonitor:
    """Tracks RankMe and the normalised-embedding std of ``[N, dim]`` batches and flags collapse.

    ``update(z)`` returns this step's warning messages (empty when healthy), records the values in
    ``history`` and issues ``warnings.warn`` once per kind (``"rankme"``, ``"std"``) per monitor.
    Default ``std_threshold`` is ``0.2 / sqrt(dim)``, i.e. a fifth of the healthy value.
    """

    def __init__(self, dim: int, rankme_fraction: float = 0.1, std_threshold: float | None = None) -> None:
        if int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim}")
        if not 0.0 < rankme_fraction <= 1.0:
            raise ValueError(f"rankme_fraction must be in (0, 1], got {rankme_fraction}")
        self.dim = int(dim)
        self.rankme_fraction = float(rankme_fraction)
        self.std_threshold = 0.2 / math.sqrt(dim) if std_threshold is None else float(std_threshold)
        if self.std_threshold < 0:
            raise ValueError(f"std_threshold must be >= 0, got {std_threshold}")
        self.history: list[dict[str, float]] = []
        self._warned: set[str] = set()

    def state_dict(self) -> dict:
        """Settings and history as plain values (for the trainer's checkpoints)."""
        return {"dim": self.dim, "rankme_fraction": self.rankme_fraction, "std_threshold": self.std_threshold,
                "history": [dict(r) for r in self.history], "warned": sorted(self._warned)}

    @classmethod
    def from_state(cls, state: dict) -> "CollapseMonitor":
        """The monitor that :meth:`state_dict` described, history included."""
        m = cls(state["dim"], state["rankme_fraction"], state["std_threshold"])
        m.history, m._warned = [dict(r) for r in state["history"]], set(state["warned"])
        return m

    def update(self, z: Tensor, step: int | None = None) -> list[str]:
        """Measure one batch of embeddings ``[N, dim]`` (N >= 2); return the collapse warnings."""
        z = check_features(z, "z")
        if z.shape[1] != self.dim:
            raise ValueError(f"CollapseMonitor was built for dim={self.dim} but got embeddings of dim {z.shape[1]}")
        rank = rankme(z)
        std = normalized_std(z)
        bound = min(z.shape)
        row = {"rankme": rank, "normalized_std": std, "rankme_bound": float(bound)}
        if step is not None:
            row["step"] = float(step)
        self.history.append(row)
        where = f" at step {step}" if step is not None else ""
        messages: list[tuple[str, str]] = []
        if rank < self.rankme_fraction * bound:
            messages.append(
                ("rankme", f"dimensional collapse{where}: RankMe {rank:.1f} < {self.rankme_fraction:g} x min(N, D) = "
                 f"{self.rankme_fraction * bound:.1f}")
            )
        if std < self.std_threshold:
            messages.append(
                ("std", f"collapse{where}: std of L2-normalised embeddings {std:.2e} < {self.std_threshold:.2e} "
                 f"(healthy ~ 1/sqrt(D) = {1 / math.sqrt(self.dim):.2e})")
            )
        for kind, text in messages:
            if kind not in self._warned:
                self._warned.add(kind)
                warnings.warn(text, RuntimeWarning, stacklevel=2)
        return [text for _, text in messages]
