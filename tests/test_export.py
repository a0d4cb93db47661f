"""Native export (selfsup.export): each format loads with strict=True into the plain library model, built by
the lines the export records and prints, and computes selfsup's features; train.export_every_epoch."""

import json

import pytest
import torch
import torch.nn.functional as F

from selfsup.cli import main
from selfsup.export import ExportError, export_module, how_to_load, read_export
from selfsup.nets import build_backbone
from train_utils import TINY, short_run

TINY_VIT = {"patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


def plain_model(meta, path):
    """Run the export's own load lines (what `selfsup export` prints) in a fresh namespace; return the model."""
    namespace: dict = {}
    exec("\n".join(how_to_load(meta, path)), namespace)  # noqa: S102 - the lines this library wrote
    return namespace["model"].eval()


@pytest.mark.parametrize("name, channels, size, fmt, vit", [
    ("resnet18", 3, 32, "torchvision", None),  # small-image stem (3x3 conv, no max-pool)
    ("resnet18", 3, 96, "torchvision", None),  # torchvision's own stem
    ("resnet18", 1, 32, "safetensors", None),  # grey small stem, safetensors
    ("timm:vit_tiny_patch16_224", 3, 16, "timm", TINY_VIT),  # cls pooling
    ("timm:vit_tiny_patch16_224", 3, 16, "timm", {**TINY_VIT, "registers": 2, "layer_scale": 0.1, "qk_norm": True}),
    ("timm:vit_tiny_patch16_224", 3, 16, "timm", {**TINY_VIT, "pool": "avg", "class_token": False}),  # + fc_norm
    ("timm:vit_tiny_patch16_224", 3, 16, "safetensors", {**TINY_VIT, "pool": "avg"}),
    ("timm:vit_tiny_patch16_224", 3, 16, "safetensors", TINY_VIT),
    ("small_cnn", 3, 16, "safetensors", None),
    ("small_cnn", 3, 16, "state_dict", None),
])
def test_export_loads_strictly_into_the_plain_model_and_matches(tmp_path, name, channels, size, fmt, vit):
    torch.manual_seed(0)
    kw = {"width": 8} if name == "small_cnn" else {}
    backbone = build_backbone(name, channels, size, vit=vit, **kw).eval()
    with torch.no_grad():  # trained-looking norms and LayerScale, so that a missed layer shows
        for n, p in backbone.named_parameters():
            if n.endswith((".weight", ".gamma", ".bias")) and p.dim() == 1 and not n.startswith("fc_norm"):
                p.add_(0.1 * torch.randn_like(p))
    out = tmp_path / ("b.safetensors" if fmt == "safetensors" else "b.pt")
    meta = export_module(backbone, out, fmt, name=name, channels=channels, image_size=size, mean=MEAN[:channels],
                         std=STD[:channels], vit=vit)
    state, read_meta = read_export(out)
    assert read_meta == json.loads(json.dumps(meta))  # header (safetensors) or sidecar (.pt)
    assert read_meta["image_size"] == size and read_meta["mean"] == MEAN[:channels] and read_meta["std"] == STD[:channels]
    if fmt != "safetensors":
        assert set(torch.load(out, weights_only=True)) == set(state)  # a plain state dict: torch.load is enough
    model = plain_model(read_meta, out)  # load_state_dict(strict=True) inside
    lib = {"resnet18": "torchvision", "small_cnn": "selfsup"}.get(name, "timm")
    if fmt == "safetensors" and vit and vit.get("pool") == "avg":
        lib = "selfsup"  # a trained-or-not fc_norm over the final norm: selfsup's own ViT holds both
    assert read_meta["library"] == lib and type(model).__module__.split(".")[0] == lib
    x = torch.randn(3, channels, size, size)
    with torch.no_grad():
        ours, theirs = backbone(x), model(x)
    if "features" in read_meta:  # timm layout without fc_norm: the recorded one-line readout
        theirs = F.layer_norm(theirs, theirs.shape[-1:], eps=1e-6)
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()


def test_small_stem_lines_are_the_two_documented_ones(tmp_path):
    meta = export_module(build_backbone("resnet18", 3, 32), tmp_path / "b.pt", "torchvision", name="resnet18",
                         channels=3, image_size=32, mean=MEAN, std=STD)
    assert meta["small_input"] is True
    assert meta["build"][1:] == ["model = torchvision.models.resnet18()",
                                 "model.conv1, model.maxpool, model.fc = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False), "
                                 "torch.nn.Identity(), torch.nn.Identity()"]
    import torchvision

    with pytest.raises(RuntimeError):  # why the lines exist: the plain resnet18 refuses the small stem's conv1
        torchvision.models.resnet18(num_classes=0).load_state_dict(torch.load(tmp_path / "b.pt", weights_only=True),
                                                                    strict=False)


def test_trained_fc_norm_refuses_timm(tmp_path):
    vit = build_backbone("timm:vit_tiny_patch16_224", 3, 16, vit={**TINY_VIT, "pool": "avg"})
    with torch.no_grad():
        vit.fc_norm.weight.mul_(2)
    with pytest.raises(ExportError, match="safetensors"):
        export_module(vit, tmp_path / "b.pt", "timm", name="timm:vit_tiny_patch16_224", channels=3, image_size=16,
                      mean=MEAN, std=STD, vit={**TINY_VIT, "pool": "avg"})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    run, _, method = short_run("simclr_digits", tmp, ["train.export_every_epoch=safetensors"], epochs=2)
    return run, method


def test_cli_export_formats_of_a_small_cnn_run(tiny_run, capsys):
    run, method = tiny_run
    for fmt in ("torchvision", "timm"):
        assert main(["export", str(run), "--format", fmt]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "small_cnn is selfsup's own net" in err[0] and "safetensors" in err[0]
    assert main(["export", str(run), "--format", "safetensors", "--out", str(run / "x.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "load it with:" in out and "model = SmallCNN(1, width=8, depth=4)" in out and "inputs: 16 px grey" in out
    state, meta = read_export(run / "x.safetensors")
    assert meta["method"] == "simclr" and meta["encoder"] == "student" and meta["epoch"] == 2
    assert main(["export", str(run)]) == 0  # the default: RUN/backbone.pt, plain state dict + backbone.json
    assert (run / "backbone.json").is_file()
    for k, v in method.backbone.state_dict().items():
        assert torch.equal(torch.load(run / "backbone.pt", weights_only=True)[k], v.cpu()) and torch.equal(state[k], v)
    capsys.readouterr()
    assert main(["eval", "--weights", str(run / "x.safetensors"), *TINY, "--protocols", "knn"]) == 0
    assert "kNN k=20" in capsys.readouterr().out


def test_export_every_epoch_writes_the_last_epochs_backbone(tiny_run):
    run, method = tiny_run
    state, meta = read_export(run / "backbone.safetensors")  # written by the training loop after each epoch
    assert meta["epoch"] == 2 and meta["format"] == "safetensors" and meta["run"] == str(run)
    assert state.keys() == method.backbone.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in method.backbone.state_dict().items())
    assert not list(run.glob(".*.tmp"))  # atomic: no temp file left behind


def test_export_epoch_of_sharded_weights_reads_the_checkpoint(tiny_run, monkeypatch):
    """FSDP2 holds DTensor shards: export_epoch then exports the gathered weights the checkpoint holds
    (simulated: every tensor counts as a DTensor here, so the in-memory weights are not used)."""
    import torch.distributed.tensor

    from selfsup.config import load_recipe
    from selfsup.export import export_epoch

    run, method = tiny_run
    recipe = load_recipe(str(run / "config.yaml"), ["train.export_every_epoch=state_dict"])
    monkeypatch.setattr(torch.distributed.tensor, "DTensor", torch.Tensor)
    poisoned = type(method)(method.backbone.__class__(1, width=8), method.feat_dim, recipe.method)  # fresh weights
    out = export_epoch(poisoned, recipe, {}, run, epoch=2)
    state, meta = read_export(out)
    assert out == run / "backbone.pt" and meta["epoch"] == 2 and meta["run"] == str(run)
    assert all(torch.equal(state[k], v) for k, v in method.backbone.state_dict().items())
