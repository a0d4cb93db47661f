"""A run directory and what can be done with it: reload, evaluate, export.

Layout: ``config.yaml`` (the validated recipe), ``metrics.jsonl`` (one row per epoch),
``checkpoint.pt`` (method, optimizer, probe, RNG, epoch), ``eval.json`` (results),
``backbone.pt`` + ``backbone.json`` or ``backbone.safetensors`` (``selfsup export``, ``train.export_every_epoch``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from selfsup.config import ConfigError, Recipe, validate
from selfsup.train import checkpoint as ckpt


def check_run_dir(run_dir: str | Path) -> Path:
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory '{run}' does not exist; pass the directory `selfsup train` printed")
    for name in ("config.yaml", "checkpoint.pt"):
        if not (run / name).is_file():
            raise FileNotFoundError(f"'{run}' has no {name}; it is not a finished selfsup run directory")
    return run


def load_recipe_of(run_dir: str | Path) -> Recipe:
    import yaml

    run = check_run_dir(run_dir)
    return validate(yaml.safe_load((run / "config.yaml").read_text()))


def load_method(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The trained method of a run (eval mode; ``.backbone``, heads, teacher) and the run's metadata
    (channels, image_size, mean, std, feat_dim, num_classes, epoch, probe weights)."""
    from selfsup.train.session import build_method

    run = check_run_dir(run_dir)
    recipe = load_recipe_of(run)
    state = ckpt.load(run / "checkpoint.pt", map_location=device)
    meta = state["meta"]
    method = build_method(recipe, meta["channels"], meta["image_size"])
    method.load_state_dict(state["method"])
    return method.to(device).eval(), dict(meta, epoch=state["epoch"], probe=state.get("probe"))


def chosen_encoder(method: nn.Module, recipe: Recipe, encoder: str | None = None) -> str:
    """Which encoder to evaluate and export: ``encoder`` if given, else the recipe's ``eval.encoder``,
    else the paper's choice for the method (``Method.eval_encoder``: the teacher for DINO, the
    online/query network otherwise)."""
    return encoder or recipe.eval.encoder or getattr(method, "eval_encoder", "student")


def encoder_parts(method: nn.Module, which: str) -> tuple[nn.Module, nn.Module | None]:
    """``(backbone, projector or None)`` of the ``which`` ("student" or "teacher") encoder of a trained
    method; a :class:`ConfigError` naming ``eval.encoder`` when the method has no such encoder."""
    try:
        return method.encoder_parts(which)
    except ValueError as e:
        raise ConfigError(f"eval.encoder={which}: {e}") from None


def load_backbone(run_dir: str | Path, device: str | torch.device = "cpu",
                  encoder: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The pretrained backbone of a run (eval mode) and the run's metadata (see :func:`load_method`),
    with ``meta["encoder"]``: the encoder chosen by :func:`chosen_encoder` ("student" or "teacher")."""
    method, meta = load_method(run_dir, device)
    which = chosen_encoder(method, load_recipe_of(run_dir), encoder)
    return encoder_parts(method, which)[0], dict(meta, encoder=which)


def export_backbone(run_dir: str | Path, out: str | Path | None = None, encoder: str | None = None,
                    fmt: str = "state_dict") -> tuple[Path, dict[str, Any]]:
    """Write the backbone's weights alone in format ``fmt`` (:mod:`selfsup.export`: a plain state dict by
    default; ``torchvision``, ``timm``, ``safetensors``) to ``out`` (default :func:`selfsup.export.export_path`)
    and return the path and the metadata written. For ResNets the keys are torchvision's, so it loads
    into ``torchvision.models.resnetXX()`` built with the same stem (``meta["build"]``). The backbone is
    the one evaluation uses (:func:`chosen_encoder`; DINO's teacher by default)."""
    from selfsup.export import export_method, export_path

    method, meta = load_method(run_dir)
    out = Path(out) if out else export_path(run_dir, fmt)
    return out, export_method(method, load_recipe_of(run_dir), meta, out, fmt, encoder,
                              extra={"run": str(run_dir), "epoch": meta["epoch"]})


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    p = Path(run_dir) / "metrics.jsonl"
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
