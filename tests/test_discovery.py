"""Config discovery: `selfsup recipes show NAME [overrides]` (the resolved recipe, each field described) and
`selfsup train --dry-run` (everything built, one small batch through views and backbone, nothing written)."""

import numpy as np
import pytest
import yaml
from PIL import Image
from pydantic import BaseModel

from selfsup.cli import main
from selfsup.config import Recipe, load_recipe, to_dict, validate
from train_utils import TINY


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def fields(model: BaseModel, prefix=""):
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from fields(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", info


@pytest.mark.parametrize("name", ["simclr_digits", "dino", "mae_digits"])
def test_recipes_show_is_the_resolved_recipe_with_descriptions(name, capsys):
    overrides = ["optim.lr=0.123", "train.epochs=77"]
    code, out, err = run_cli(capsys, "recipes", "show", name, *overrides)
    assert code == 0, err
    recipe = load_recipe(name, overrides)
    assert validate(yaml.safe_load(out)) == recipe  # the printout is the recipe, as YAML one can train
    assert to_dict(validate(yaml.safe_load(out))) == to_dict(recipe)
    lines = out.splitlines()
    assert "  lr: 0.123  # set" in lines and "  epochs: 77  # set" in lines
    described = comments_by_key(lines)
    for section in ("method", "data", "views", "model", "optim", "train", "eval"):
        for key, info in fields(getattr(recipe, section), f"{section}."):
            assert key in described, key  # every field is printed
            assert described[key] == (info.description or ""), key  # with its whole description above it
    assert all(len(line) <= 100 for line in lines if line.lstrip().startswith("#"))


def comments_by_key(lines):
    """``{dotted key: the comment lines above it, joined}`` of a `recipes show` printout."""
    out, path, pending = {}, [], []
    for line in lines:
        text = line.strip()
        if not text:
            continue
        if text.startswith("#"):
            pending.append(text[2:])
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        key = text.split(":", 1)[0]
        path = path[:depth] + [key]
        out[".".join(path)] = " ".join(pending)
        pending = []
    return out


def test_every_config_field_has_a_description():
    recipe = load_recipe("simclr_digits")
    missing = [k for section in ("data", "views", "model", "optim", "train", "eval")
               for k, info in fields(getattr(recipe, section), f"{section}.") if not info.description]
    assert not missing, f"fields without a description (selfsup recipes show prints them bare): {missing}"
    assert Recipe.model_fields["description"].description
    from selfsup.methods import METHODS

    missing = [f"{name}.{k}" for name, cls in METHODS.items() for k, info in cls.Config.model_fields.items()
               if k != "name" and not info.description]
    assert not missing, f"method config fields without a description (give them Field(description=...)): {missing}"


def test_recipes_show_errors(capsys):
    code, _, err = run_cli(capsys, "recipes", "show")
    assert code == 2 and "give a recipe name" in err
    code, _, err = run_cli(capsys, "recipes", "show", "simclr_digits", "optim.lrr=1")
    assert code == 2 and "optim.lrr" in err and len(err.strip().splitlines()) == 1


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "train", "--dry-run", *TINY, "train.epochs=3", "optim.lr=0.5",
                             "data.batch_size=64", "train.out_dir=runs")
    assert code == 0, err
    assert "data: digits: 1437 train / 360 test, 1x16x16, 10 classes" in out
    assert "views: simclr, 2 per image (16px, 16px); 8 images -> backbone -> [8, 64] per view" in out
    assert "plan: 3 epochs x 22 steps = 66 steps, effective batch 64" in out
    assert "peak lr 0.125 (lars" in out and "fp32 on cpu" in out  # 0.5 x 64 / 256
    assert not list(tmp_path.iterdir())  # no run directory, no index, nothing


def test_dry_run_streams_an_image_folder(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.jpg")
    code, out, err = run_cli(capsys, "train", "--dry-run", "--data", str(tmp_path / "imgs"), *TINY,
                             "data.cache=none", "data.batch_size=4", "data.num_workers=0",
                             f"data.index_dir={tmp_path / 'index'}", f"train.out_dir={tmp_path / 'runs'}")
    assert code == 0, err
    assert "streamed at full resolution" in out and "3x16x16" in out and "[8, 64] per view" in out
    assert "plan: 30 epochs x 3 steps" in out
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("overrides, words", [
    (["model.backbone=timm:vit_tiny_patch16_224", "model.vit.patch_size=5", "model.vit.depth=1"],
     "the backbone fails on the (1, 16, 16) views"),
    (["views.params.size=64"], "crop size 64 is larger than the 16px images"),
])
def test_dry_run_catches_what_training_would_hit(overrides, words, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--dry-run", *TINY, *overrides, f"train.out_dir={tmp_path}")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and words in lines[0], err
