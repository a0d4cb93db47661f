"""The command line: help, recipes, the documented examples, and a one-line error with a non-zero exit for
each bad input."""

import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.cli import main
from selfsup.config import list_recipes, load_recipe
from selfsup.rundir import read_metrics
from selfsup.train.loop import train as REAL_TRAIN
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
    data = tmp_path / "data"
    _image_folder(data, corrupt=True)
    # eval.at_end loads the data a second time: the warning must still appear once, in the CLI's form
    code, out, err = run_cli(capsys, "train", "--data", str(data), "--out", str(tmp_path / "r"), *TINY,
                             "train.epochs=1", "eval.protocols=[knn]")
    assert code == 0, err
    warning = [line for line in err.splitlines() if "broken.png" in line]
    assert len(warning) == 1 and (out + err).count("unreadable images (first: ") == 1, out + err
    assert warning[0].startswith("selfsup: warning: skipped 1 unreadable") and "data.on_corrupt=error" in warning[0]
    assert "Traceback" not in err and "warnings.warn" not in err and "UserWarning" not in err
    assert "skipped 1 unreadable" in out  # the data summary keeps the count
    code, _, err = run_cli(capsys, "train", "--data", str(data), "--out", str(tmp_path / "r2"), *FAST,
                           "data.on_corrupt=error")
    line = error_line(err)
    assert code == 2 and "broken.png" in line and "data.on_corrupt=skip" in line


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


def test_nan_loss_stops_with_a_clear_error(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "r"), *FAST, "optim.name=sgd", "optim.lr=1e30",
                           "train.epochs=3")
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


# ---- every example that `--help` and the README show, run ------------------------------------------------------

README = Path(__file__).resolve().parent.parent / "README.md"
EXAMPLE_RUN = "runs/simclr-20261125-120000"  # the run directory the examples name
FAST_EVAL = ["eval.protocols=[knn]"]


def _help_examples(capsys, cmd: str) -> list[str]:
    with pytest.raises(SystemExit):
        main([cmd, "--help"])
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    return [line for line in lines if line.startswith("selfsup ")]


def _readme_examples() -> list[str]:
    """The commands of the README's "Using it" block, comments dropped, ``[--x]`` expanded to without/with."""
    block = README.read_text().split("## Using it", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    out = []
    for line in block.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if not line:
            continue
        optional = re.search(r"\s*\[(--[\w-]+)\]", line)
        if optional:
            out += [line.replace(optional.group(0), ""), line.replace(optional.group(0), " " + optional.group(1))]
        else:
            out.append(line)
    return out


def _tiny(argv: list[str]) -> list[str]:
    """The overrides that make an example run in seconds, appended after the example's own (they win)."""
    cmd = argv[0]
    if cmd == "train" and "--resume" in argv:
        return ["train.progress_bar=false", *FAST_EVAL]  # resume-safe keys only
    if cmd == "train":
        return [*TINY, "train.epochs=1", *FAST_EVAL]
    if cmd == "eval" and "--weights" in argv:  # keep the example's model.backbone (a ResNet: 8 px is enough)
        return [o for o in TINY if not o.startswith("model.backbone=")] + ["data.image_size=8", *FAST_EVAL]
    return []  # recipes, export, eval RUN_DIR (no overrides: the run's own config)


def test_every_help_and_readme_example_runs(tmp_path, capsys, monkeypatch):
    """Each `selfsup ...` line of `train --help`, `eval --help` and the README's "Using it" block, run as
    written (in tmp_path, ~/data/... and PATH replaced by a generated ImageFolder) with tiny overrides."""
    from selfsup.nets import build_backbone
    from selfsup.train.loop import train

    examples = _help_examples(capsys, "train") + _help_examples(capsys, "eval") + _readme_examples()
    torchrun = [e for e in examples if e.startswith("torchrun ")]
    examples = list(dict.fromkeys(e for e in examples if e not in torchrun))  # --help and README share some
    assert len(examples) >= 9 and any("--weights" in e for e in examples), examples
    assert all(e.startswith("selfsup ") for e in examples), examples  # anything else would go unrun
    # what the examples refer to: an interrupted run (1 of 2 epochs), ResNet-18 weights, a dataset
    train(load_recipe("simclr_digits", [*TINY, "train.epochs=2", *FAST_EVAL]), run_dir=EXAMPLE_RUN,
          stop_after_epoch=1, log=lambda *a: None)
    torch.save(build_backbone("resnet18", 1, 16).state_dict(), tmp_path / "backbone.pt")  # digits: 1 channel
    _image_folder(tmp_path / "images")
    order = {"train": 0, "eval": 1, "export": 2}  # resume before eval and export, as a user would
    examples.sort(key=lambda e: (order.get(e.split()[1], -1), "--resume" not in e))
    for example in examples:
        example = example.replace("~/data/imagenette", str(tmp_path / "images")).replace(" PATH", " images")
        argv = shlex.split(example)[1:]
        code, out, err = run_cli(capsys, *argv, *_tiny(argv))
        assert code == 0, f"`{example}` exited {code}: {err[-2000:]}"
        assert "Traceback" not in err, example
    assert (tmp_path / EXAMPLE_RUN / "report.html").is_file() and (tmp_path / EXAMPLE_RUN / "backbone.pt").is_file()
    assert [r["epoch"] for r in read_metrics(tmp_path / EXAMPLE_RUN)] == [1, 2]  # --resume finished it


def test_torchrun_example_is_documented():
    lines = [e for e in _readme_examples() if e.startswith("torchrun ")]
    assert lines and all("-m selfsup.cli train" in e for e in lines)
    pytest.skip("the torchrun example starts 4 processes on the full simclr recipe (GPUs); 2-process training is "
                "tested in test_train_e2e.py and test_train_ddp.py")


def test_eval_weights_takes_positionals_as_overrides(tmp_path, capsys):
    code, _, err = run_cli(capsys, "eval", "--weights", str(tmp_path / "w.pt"), "runs/some_run")
    line = error_line(err)
    assert code == 2 and "runs/some_run" in line and "without --weights" in line


# ---- backbone names, devices, image_size ------------------------------------------------------------------------

@pytest.mark.parametrize("backbone, expect", [
    ("resnet19", "did you mean resnet18"),
    ("timm:vit_nonexistent_patch99", "timm"),
])
def test_unknown_backbone_is_one_line_before_data_loads(backbone, expect, tmp_path, capsys):
    # a missing --data path would fail the load; the backbone error must come first
    code, _, err = run_cli(capsys, "train", "--data", str(tmp_path / "not_loaded"), *FAST,
                           f"model.backbone={backbone}")
    line = error_line(err)
    assert code == 2 and "model.backbone" in line and expect in line and "Traceback" not in err
    assert "not_loaded" not in line


def test_timm_backbone_without_timm_says_pip_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    code, _, err = run_cli(capsys, "train", *FAST, "model.backbone=timm:vit_tiny_patch16_224")
    assert code == 2 and "pip install timm" in error_line(err)


def test_timm_backbone_known_to_timm_validates():
    assert load_recipe(None, ["model.backbone=timm:vit_tiny_patch16_224"]).model.backbone == "timm:vit_tiny_patch16_224"


def test_device_names(capsys):
    from selfsup.train.setup import TrainingError, setup_env

    for ok in ("auto", "cpu", "cuda", "cuda:0", "cuda:1"):
        assert load_recipe(None, [f"train.device={ok}"]).train.device == ok
    for bad in ("gpu", "cuda:x", "cpu:0", "mps"):
        code, _, err = run_cli(capsys, "train", *FAST, f"train.device={bad}")
        assert code == 2 and "train.device" in error_line(err) and "cuda:N" in err
    missing = f"cuda:{torch.cuda.device_count()}"  # cuda:0 on a machine without CUDA
    with pytest.raises(TrainingError, match=rf"train.device={missing} .*(no CUDA device|only)"):
        setup_env(missing)


def test_image_size_null_is_documented_for_every_format(tmp_path):
    from selfsup.config import DataConfig
    from selfsup.data import DEFAULT_IMAGEFOLDER_SIZE, load_data

    _image_folder(tmp_path / "images", n=2)  # 20 px images
    assert load_data(tmp_path / "images", image_size=None).train.image_size == DEFAULT_IMAGEFOLDER_SIZE
    assert load_data(None, image_size=None).train.image_size == 32
    x = np.zeros((4, 12, 12), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", x_train=x)
    assert load_data(tmp_path / "a.npz", image_size=None).train.image_size == 12  # native
    doc = DataConfig.model_fields["image_size"].description
    assert f"{DEFAULT_IMAGEFOLDER_SIZE} for image files" in doc and "32 for digits" in doc and "native" in doc


# ---- run directories: interruption, existing runs, the checkout ---------------------------------------------------

def _interrupt_after(monkeypatch, **stop):
    """Make the CLI's train() stop as given (or before any step) and raise KeyboardInterrupt, as Ctrl-C would."""
    import selfsup.train.loop as loop

    def interrupted(recipe, run_dir=None, **kw):
        if stop:
            REAL_TRAIN(recipe, run_dir=run_dir, **kw, **stop)
        else:  # Ctrl-C in epoch 1: the run directory holds its config, no checkpoint yet
            Path(run_dir).mkdir(parents=True)
            (Path(run_dir) / "config.yaml").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train", interrupted)


def test_ctrl_c_hint_says_what_is_in_the_run_directory(tmp_path, capsys, monkeypatch):
    _interrupt_after(monkeypatch)
    code, _, err = run_cli(capsys, "train", *FAST)  # default out_dir: the run directory is named by the CLI
    (run,) = (tmp_path / "runs").iterdir()
    assert code == 130
    assert "no checkpoint yet" in err and f"runs/{run.name}" in err and "--resume" not in err and "last finished" not in err

    _interrupt_after(monkeypatch, stop_after_step=3)
    code, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "mid"), *FAST, "train.epochs=2",
                           "data.batch_size=128")  # 1437 images: 11 steps per epoch
    assert code == 130
    assert "step 3 of 22 (epoch 1, 3 of its 11 steps)" in err and f"--resume {tmp_path / 'mid'}" in err, err

    _interrupt_after(monkeypatch, stop_after_epoch=1)
    code, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "end"), *FAST, "train.epochs=2",
                           "data.batch_size=128")
    assert code == 130 and "step 11 of 22 (1 finished epoch)" in err and "--resume" in err, err


def test_ctrl_c_hint_reads_epoch_only_checkpoints(tmp_path, capsys, monkeypatch):
    run = tmp_path / "old"
    run.mkdir()
    torch.save({"epoch": 2, "config": {"train": {"epochs": 5}}}, run / "checkpoint.pt")

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    import selfsup.train.loop as loop

    monkeypatch.setattr(loop, "train", interrupted)
    code, _, err = run_cli(capsys, "train", "--out", str(run), *FAST)
    assert code == 130 and "2 finished epochs of 5" in err and f"--resume {run}" in err, err


def test_existing_run_directory_needs_resume_or_overwrite(tmp_path, capsys):
    run = tmp_path / "r"
    code, _, err = run_cli(capsys, "train", "--out", str(run), *FAST)
    assert code == 0, err
    before = (run / "metrics.jsonl").read_text()
    code, _, err = run_cli(capsys, "train", "--out", str(run), *FAST)
    line = error_line(err)
    assert code == 2 and "already holds a run" in line and "--resume" in line and "--overwrite" in line
    assert (run / "metrics.jsonl").read_text() == before  # untouched
    code, _, err = run_cli(capsys, "train", "--out", str(run), "--overwrite", *FAST)
    assert code == 0, err
    assert [r["epoch"] for r in read_metrics(run)] == [1]
    code, _, err = run_cli(capsys, "train", "--resume", str(run), "--overwrite")
    assert code == 2 and "--overwrite" in error_line(err)


def test_default_run_directory_lands_in_the_working_directory_not_the_checkout(tmp_path, capsys):
    from conftest import CHECKOUT

    before = sorted((CHECKOUT / "runs").iterdir()) if (CHECKOUT / "runs").is_dir() else []
    code, out, err = run_cli(capsys, "train", *FAST)
    assert code == 0, err
    (run,) = (tmp_path / "runs").iterdir()  # the autouse fixture runs each test in its tmp_path
    assert f"run directory: {Path('runs') / run.name}" in out
    after = sorted((CHECKOUT / "runs").iterdir()) if (CHECKOUT / "runs").is_dir() else []
    assert after == before


def _jpeg_tree(root: Path, n: int = 24) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("val", 8)):
        for i in range(count):
            d = root / split / f"c{i % 2}"
            d.mkdir(parents=True, exist_ok=True)
            small = rng.integers(0, 255, (5, 6, 3), dtype=np.uint8)
            Image.fromarray(small).resize((30 + i % 4 * 7, 24 + i % 3 * 5), Image.BICUBIC).save(d / f"{i}.jpg")


def test_prepare_then_train_streams_the_pack_and_shards(tmp_path, capsys):
    """`selfsup prepare` then training on the pack, and training on webdataset shards, end to end,
    streamed at full resolution with loader worker processes, evaluated at the end."""
    import tarfile

    _jpeg_tree(tmp_path / "src")
    code, out, err = run_cli(capsys, "prepare", str(tmp_path / "src"), str(tmp_path / "pack"), "--max-side", "32")
    assert code == 0, err
    stream = ["data.cache=none", "data.num_workers=2", "data.batch_size=8", "eval.protocols=[knn]"]
    code, out, err = run_cli(capsys, "train", "--data", str(tmp_path / "pack"), "--out", str(tmp_path / "r1"), *TINY,
                             "train.epochs=1", *stream)
    assert code == 0, err
    assert "streamed at full resolution" in out and "24 train / 8 test" in out and "kNN" in out
    assert read_metrics(tmp_path / "r1")[0]["replaced_images"] == 0
    shards = tmp_path / "shards" / "train"
    shards.mkdir(parents=True)
    files = sorted((tmp_path / "src" / "train").rglob("*.jpg"))
    for s in range(2):
        with tarfile.open(shards / f"{s:06d}.tar", "w") as tar:
            for i, f in enumerate(files[s::2]):
                tar.add(f, arcname=f"{s}_{i:04d}.jpg")
                cls = f.parent.name[1:].encode()
                info = tarfile.TarInfo(f"{s}_{i:04d}.cls")
                info.size = len(cls)
                tar.addfile(info, __import__("io").BytesIO(cls))
    code, out, err = run_cli(capsys, "train", "--data", str(tmp_path / "shards"), "--out", str(tmp_path / "r2"),
                             *TINY, "train.epochs=1", *stream, "eval.at_end=false")
    assert code == 0, err
    assert "24 train / no test split" in out and "2 classes" in out
    code, _, err = run_cli(capsys, "train", "--data", "pipe:curl -s http://x/{000..009}.tar", *FAST)
    assert code == 2 and "remote or piped shards" in error_line(err)


def test_tokenizer_fit_writes_a_tokenizer_beit_can_load(tmp_path, capsys):
    from selfsup.nets.tokenizers import load_tokenizer

    out = tmp_path / "tok.pt"
    code, stdout, _ = run_cli(capsys, "tokenizer", "fit", "--out", str(out), "method.vocab_size=32",
                              "method.tokenizer_images=200")
    assert code == 0 and "32 tokens" in stdout
    tok = load_tokenizer(out)
    assert tok.vocab_size == 32 and tok.patch_size == 4
    ids = tok(torch.randn(2, 1, 32, 32))
    assert ids.shape == (2, 64) and int(ids.max()) < 32
    code, _, err = run_cli(capsys, "tokenizer", "fit", "--recipe", "simclr_digits", "--out", str(out))
    assert code == 2 and "beit recipe" in error_line(err)
