"""Label-free diagnostics of embeddings that both the trainer (:mod:`selfsup.train`) and the evaluators
(:mod:`selfsup.eval`) use: the singular-value spectrum, RankMe and the collapse monitor (cookbook,
"Dimensional Collapse of Representations"). Depends on nothing else in selfsup."""

from selfsup.diagnostics.collapse import CollapseMonitor, normalized_std
from selfsup.diagnostics.spectra import entropy_effective_rank, rankme, singular_values
from selfsup.diagnostics.validation import check_features

__all__ = ["CollapseMonitor", "check_features", "entropy_effective_rank", "normalized_std", "rankme",
           "singular_values"]
