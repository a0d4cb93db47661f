"""``selfsup recipes show NAME [overrides]``: the full resolved recipe, every field with its description.

The text is YAML (descriptions are comments above their key), so it can be saved and trained as it is:
``selfsup recipes show simclr_digits optim.lr=0.5 > mine.yaml; selfsup train --recipe mine.yaml``.
Descriptions come from the ``Field(description=...)`` of :mod:`selfsup.config` and of each method's
config; a value the recipe file or an override sets (not the default) is marked ``# set``.
"""

from __future__ import annotations

import textwrap
from typing import Any

import yaml
from pydantic import BaseModel

from selfsup.config import Recipe

__all__ = ["describe_recipe"]

WIDTH = 100


def _scalar(value: Any) -> str:
    """A value as one line of YAML flow style."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _lines(section: BaseModel, indent: int) -> list[str]:
    pad = "  " * indent
    out: list[str] = []
    explicit = section.model_fields_set
    for name, info in type(section).model_fields.items():
        value = getattr(section, name)
        if info.description:
            out += textwrap.wrap(info.description, WIDTH - len(pad) - 2, initial_indent=f"{pad}# ",
                                 subsequent_indent=f"{pad}# ")
        if isinstance(value, BaseModel):
            out.append(f"{pad}{name}:")
            out += _lines(value, indent + 1)
            continue
        dumped = section.model_dump(mode="json", include={name})[name]
        mark = "  # set" if name in explicit and name != "name" else ""
        out.append(f"{pad}{name}: {_scalar(dumped)}{mark}")
    return out


def describe_recipe(recipe: Recipe, title: str = "") -> str:
    """The whole of ``recipe`` as commented YAML (see the module docstring)."""
    head = [f"# {title}, resolved (# set: given by the recipe or an override)"] if title else []
    body = [f"description: {_scalar(recipe.description)}"]
    for name in ("method", "data", "views", "model", "optim", "train", "eval"):
        body += ["", f"{name}:", *_lines(getattr(recipe, name), 1)]
    return "\n".join(head + body) + "\n"
