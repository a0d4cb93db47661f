"""Seed mixing: independent generator seeds from (seed, epoch, rank, ...) tuples.

``seed + epoch`` makes seed s at epoch e + 1 replay seed s + 1 at epoch e; NumPy's
``SeedSequence`` hashes the whole tuple instead, so distinct tuples give unrelated streams.
"""

from __future__ import annotations

import numpy as np


def mix_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part of ``parts`` (non-negative ints), for ``torch.Generator``."""
    if any(isinstance(p, bool) or int(p) != p or p < 0 for p in parts):
        raise ValueError(f"seed parts must be non-negative ints, got {parts}")
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)
