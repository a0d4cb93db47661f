"""Short training runs of the contrastive-family methods on a slice of digits (tiny CNN, 16 px)."""

import json
import math

import pytest
import torch

from train_utils import changed, short_run

# recipe, overrides, (EMA teacher prefix, student prefix) or None, queue buffer or None
RUNS = {
    "supcon": ([], None, None),
    "mocov2": (["method.queue_size=96"], ("key_encoder.module.0.", "backbone."), "queue.bank"),
    "mocov3": ([], ("momentum_encoder.module.0.", "backbone."), None),
    "nnclr": (["method.queue_size=96"], None, "support.bank"),
    "dcl": ([], None, None),
    "dclw": ([], None, None),
    "unified": (["method.preset=lifted"], None, None),
    "msf": (["method.queue_size=96", "method.k=3"], ("target.module.0.", "backbone."), "bank.bank"),
    "relic": ([], ("target.module.0.", "backbone."), None),
    "dml": (["method.loss=contrastive", "method.margin=1.0"], None, None),
}
SMALL = ["method.projector=32-16"]


@pytest.mark.parametrize("name", list(RUNS))
def test_short_run(name, tmp_path):
    overrides, ema, queue = RUNS[name]
    extra = SMALL + (["method.predictor=32-16"] if name in ("mocov3", "nnclr", "msf") else [])
    if name == "nnclr":
        extra = ["method.projector=32-32-16", "method.predictor=32-16"]
    run, before, method = short_run(f"{name}_digits", tmp_path, overrides + extra)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(math.isfinite(r["loss"]) for r in rows)
    after = method.state_dict()
    assert changed(before, after, "backbone.")
    if ema is not None:  # the EMA teacher moved, but lags behind the student
        teacher, student = ema
        assert changed(before, after, teacher)
        t = {k[len(teacher):]: v for k, v in after.items() if k.startswith(teacher) and v.is_floating_point()}
        s = {k[len(student):]: v for k, v in after.items() if k.startswith(student) and v.is_floating_point()}
        assert t.keys() == s.keys() and any(not torch.equal(t[k], s[k]) for k in t if k.endswith("weight"))
    if queue is not None:  # the queue is in the checkpoint and received the batches
        assert not torch.equal(before[queue], after[queue])
        ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
        torch.testing.assert_close(ckpt["method"][queue], after[queue])
    if name in ("nnclr", "msf"):  # label diagnostics of the neighbours are logged
        assert "nn_acc" in rows[-1] or "purity" in rows[-1]


def test_supcon_requires_labels():
    from selfsup.config import load_recipe
    from selfsup.train.loop import build_method

    method = build_method(load_recipe("supcon_digits", ["model.width=8", "method.projector=16-8"]), 1, 16)
    with pytest.raises(ValueError, match="labels"):
        method([torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16)])


def test_unified_method_takes_custom_phi_psi():
    from selfsup.config import load_recipe
    from selfsup.losses import PhiPsi, unified_contrastive
    from selfsup.methods import Unified
    from selfsup.nets import SmallCNN

    cfg = load_recipe("unified_digits", ["method.projector=16-8"]).method
    pair = PhiPsi(phi=lambda s: s.pow(2), psi=torch.sigmoid, name="squared-sigmoid")
    torch.manual_seed(0)
    method = Unified(SmallCNN(1, width=4), 32, cfg, phi_psi=pair).eval()  # eval: BN independent of batching
    views = [torch.randn(6, 1, 16, 16), torch.randn(6, 1, 16, 16)]
    out = method(views)
    out["loss"].backward()
    assert method.backbone.features[0].weight.grad.abs().sum() > 0
    z = [method.projector(method.backbone(v)) for v in views]
    torch.testing.assert_close(out["loss"], unified_contrastive(z[0], z[1], pair, negatives="all"))


def test_mocov2_shuffle_bn_split_forward():
    from selfsup.methods.mocov2 import split_forward

    x = torch.randn(16, 5)
    lin = torch.nn.Linear(5, 3)
    torch.manual_seed(0)
    torch.testing.assert_close(split_forward(lin, x, 4, shuffle=True), lin(x))  # rows come back in order
    bn = torch.nn.BatchNorm1d(5)
    full, chunks = bn(x), split_forward(bn, x, 4, shuffle=False)
    torch.testing.assert_close(chunks[:4], torch.nn.BatchNorm1d(5)(x[:4]))  # each chunk has its own statistics
    assert not torch.allclose(full, chunks)
    with pytest.raises(ValueError, match="bn_splits"):
        split_forward(bn, x[:6], 4, shuffle=True)
