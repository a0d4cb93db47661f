"""The command line: help, recipes, and a one-line error with a non-zero exit for each bad input."""


import numpy as np
import pytest
from PIL import Image

from selfsup.cli import main
from selfsup.config import list_recipes, load_recipe
from train_utils import TINY

FAST = [*TINY, "train.epochs=1", "eval.at_end=false"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected a one-line error, got: {err!r}"
    assert lines[0].startswith("selfsup: error: ")
    return lines[0]


@pytest.mark.parametrize("cmd", ["train", "eval", "export", "recipes"])
def test_every_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: selfsup" in capsys.readouterr().out


def test_recipes_lists_every_bundled_recipe(capsys):
    code, out, _ = run_cli(capsys, "recipes")
    assert code == 0
    names = [n for n, _ in list_recipes()]
    assert {"simclr", "simclr_digits", "byol", "byol_digits", "vicreg", "vicreg_digits"} <= set(names)
    for name in names:
        assert name in out
        load_recipe(name)  # every bundled recipe validates


@pytest.mark.parametrize("override, key", [
    ("optim.lrr=0.1", "optim.lrr"),
    ("optim.lr=-0.1", "optim.lr"),
    ("data.batch_size=0", "data.batch_size"),
    ("train.epochs=many", "train.epochs"),
    ("method.temperature=hot", "method.temperature"),
    ("method.name=nonexistent", "method"),
    ("views.params.size=64", "crop size 64"),
    ("views.params.sharpness=2", "views.params"),
    ("train.precision=fp16", "train.precision=fp16"),
    ("optim.warmup_epochs=5", "optim.warmup_epochs"),
])
def test_bad_config_gives_one_line_error_naming_the_key(override, key, capsys):
    code, _, err = run_cli(capsys, "train", *FAST, override)
    assert code != 0
    assert key in error_line(err)


def test_unknown_recipe_and_missing_recipe_file(capsys):
    code, _, err = run_cli(capsys, "train", "--recipe", "nosuchrecipe")
    assert code == 2 and "unknown recipe" in error_line(err) and "simclr" in err
    code, _, err = run_cli(capsys, "train", "--recipe", "missing/file.yaml")
    assert code == 2 and "does not exist" in error_line(err)


def test_missing_data_path(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--data", str(tmp_path / "nope"), *FAST)
    assert code == 2 and "nope" in error_line(err)


def test_unknown_format(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    code, _, err = run_cli(capsys, "train", "--data", str(tmp_path), *FAST)
    assert code == 2 and "format" in error_line(err)


def _image_folder(root, corrupt=False, empty_class=False, n=24):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n if split == "train" else 4):
                Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(d / f"{i}.png")
    if corrupt:
        (root / "train" / "a" / "broken.png").write_bytes(b"not a png at all")
    if empty_class:
        (root / "train" / "c").mkdir()


def test_corrupt_image_skipped_by_default_fatal_on_request(tmp_path, capsys):
    _image_folder(tmp_path, corrupt=True)
    with pytest.warns(UserWarning, match="skipped 1"):
        code, _, err = run_cli(capsys, "train", "--data", str(tmp_path), *FAST, "data.image_size=16")
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", "--data", str(tmp_path), *FAST, "data.image_size=16",
                           "data.on_corrupt=error")
    assert code == 2 and "broken.png" in error_line(err)


def test_empty_class_folder(tmp_path, capsys):
    _image_folder(tmp_path, empty_class=True)
    code, _, err = run_cli(capsys, "train", "--data", str(tmp_path), *FAST, "data.image_size=16")
    assert code == 2 and "empty" in error_line(err).lower()


def test_dataset_smaller_than_batch(tmp_path, capsys):
    _image_folder(tmp_path, n=5)
    code, _, err = run_cli(capsys, "train", "--data", str(tmp_path), *FAST, "data.image_size=16",
                           "data.batch_size=64")
    assert code == 2 and "batch" in error_line(err)


def test_unlabeled_data_pretrains_and_skips_label_metrics(tmp_path, capsys):
    x = np.random.default_rng(0).integers(0, 255, (40, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "unlabeled.npz", x_train=x)
    code, out, err = run_cli(capsys, "train", "--data", str(tmp_path / "unlabeled.npz"), *TINY, "train.epochs=1",
                             f"train.out_dir={tmp_path}")
    assert code == 0, err
    assert "no labels" in out and "RankMe" in out and "kNN k=" not in out


def test_nan_loss_stops_with_a_clear_error(capsys):
    code, _, err = run_cli(capsys, "train", *FAST, "optim.name=sgd", "optim.lr=1e30", "train.epochs=3")
    assert code == 1
    line = error_line(err)
    assert "loss is" in line and "optim.lr" in line


def test_eval_and_export_need_a_run_directory(tmp_path, capsys):
    for cmd in ("eval", "export"):
        code, _, err = run_cli(capsys, cmd, str(tmp_path / "no_run"))
        assert code == 2 and "does not exist" in error_line(err)
    (tmp_path / "half").mkdir()
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "half"))
    assert code == 2 and "config.yaml" in error_line(err)


def test_resume_of_corrupt_checkpoint(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", *FAST, f"train.out_dir={tmp_path}", "train.run_name=r")
    assert code == 0, err
    (tmp_path / "r" / "checkpoint.pt").write_bytes(b"truncated")
    code, _, err = run_cli(capsys, "train", "--resume", str(tmp_path / "r"))
    assert code == 2 and "unreadable" in error_line(err)


def test_train_eval_export_roundtrip(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", *TINY, "train.epochs=1", f"train.out_dir={tmp_path}",
                             "train.run_name=ok")
    assert code == 0, err
    assert "kNN k=20" in out and "linear probe test acc" in out and "RankMe" in out
    assert f"run directory: {tmp_path / 'ok'}" in out
    code, out, _ = run_cli(capsys, "export", str(tmp_path / "ok"))
    assert code == 0 and (tmp_path / "ok" / "backbone.pt").is_file()
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "ok"), "--protocols", "knn", "nonsense")
    assert code == 2 and "nonsense" in error_line(err)
    code, out, err = run_cli(capsys, "eval", "--weights", str(tmp_path / "ok" / "backbone.pt"), *TINY,
                             "eval.finetune_epochs=2", "eval.image_probe_epochs=2",
                             "--protocols", "knn", "finetune", "image_linear", "guillotine")
    assert code == 0, err
    for name in ("kNN k=20", "fine-tune test acc", "linear probe on augmented images test acc",
                 "guillotine backbone test acc"):
        assert name in out
    code, _, err = run_cli(capsys, "eval", "--weights", str(tmp_path / "ok" / "backbone.pt"), *TINY,
                           "model.backbone=resnet18")
    assert code == 2 and "do not fit" in error_line(err)


def test_eval_report_is_self_contained_and_lists_every_metric(tmp_path, capsys):
    import json
    import re

    code, _, err = run_cli(capsys, "train", *TINY, "train.epochs=2", f"train.out_dir={tmp_path}", "train.run_name=r",
                           "eval.at_end=false")
    assert code == 0, err
    code, out, err = run_cli(capsys, "eval", str(tmp_path / "r"), "--report", "--protocols", "knn", "linear", "mlp",
                             "lowshot", "retrieval", "rankme", "alpha_req", "spectrum_auc", "rank", "lidar")
    assert code == 0, err
    html = (tmp_path / "r" / "report.html").read_text()
    md = (tmp_path / "r" / "report.md").read_text()
    metrics = json.loads((tmp_path / "r" / "eval.json").read_text())["metrics"]
    assert {"LiDAR", "RankMe", "alpha-ReQ", "MLP probe test acc", "online probe test acc"} <= {m["name"] for m in metrics}
    for m in metrics:
        assert m["name"] in html and m["name"] in md
    assert "data:image/png;base64," in html and "spectrum" in html.lower() and "t-SNE" in html
    assert not re.search(r"""(src|href)=["']?https?:""", html)  # self-contained
