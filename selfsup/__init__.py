"""selfsup: the self-supervised learning cookbook, runnable (Balestriero et al., 2023)."""

__version__ = "0.1.0"
