"""Linear probe trained on freshly augmented images with a frozen backbone."""

import copy

import pytest
import torch

from selfsup.data import ImageArray
from selfsup.eval import extract_features, linear_probe, stratified_split
from selfsup.eval.image_probe import eval_view_spec, linear_probe_on_images
from train_utils import tiny_digits
from selfsup.nets.backbones import SmallCNN
from selfsup.views import ViewSpec

MEAN, STD = (0.5,), (0.5,)
KW = dict(lrs=(0.1, 1.0), wds=(0.0,), epochs=5, batch_size=64)


pytestmark = pytest.mark.usefixtures("one_thread")


def _digits(n_train=300, n_test=200):
    d = tiny_digits(n_train, n_test, size=16)
    return d.train, d.test


def _net():
    torch.manual_seed(0)
    return SmallCNN(1, width=8)


def test_beats_chance_is_seeded_and_leaves_the_backbone_frozen():
    train, test = _digits()
    net = _net()
    net.train()  # the probe must switch to eval mode itself and restore this flag
    state = copy.deepcopy(net.state_dict())
    a = linear_probe_on_images(net, train, test, MEAN, STD, seed=1, **KW)
    assert a.test_acc > 0.4 and a.val_acc > 0.4  # chance is 0.1
    assert a.n_train == stratified_split(train.labels, 0.1, 1)[0].numel() and set(a.grid) == {(0.1, 0.0), (1.0, 0.0)}
    assert "augmented images (simclr views" in a.protocol
    after = net.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)  # weights and BN running statistics
    assert net.training and all(p.grad is None for p in net.parameters())
    b = linear_probe_on_images(net, train, test, MEAN, STD, seed=1, **KW)
    assert a.grid == b.grid and a.test_acc == b.test_acc
    assert torch.equal(a.head[-1].weight, b.head[-1].weight)
    c = linear_probe_on_images(net, train, test, MEAN, STD, seed=2, **KW)
    assert not torch.equal(a.head[-1].weight, c.head[-1].weight)
    feats = extract_features(net, test.images, MEAN, STD)
    assert (a.predict(feats) == test.labels).double().mean().item() == pytest.approx(a.test_acc)


def test_without_views_it_is_the_offline_linear_probe():
    train, test = _digits()
    net = _net()
    res = linear_probe_on_images(net, train, test, MEAN, STD, views_kind=None, seed=0, **KW)
    tr_f, te_f = extract_features(net, train.images, MEAN, STD), extract_features(net, test.images, MEAN, STD)
    ref = linear_probe(tr_f, train.labels, te_f, test.labels, seed=0, **KW)
    assert res.grid == pytest.approx(ref.grid) and res.test_acc == pytest.approx(ref.test_acc)
    assert torch.allclose(res.head[-1].weight, ref.head[-1].weight, atol=1e-4)
    aug = linear_probe_on_images(net, train, test, MEAN, STD, views_kind="flip", seed=0, **KW)
    assert not torch.allclose(aug.head[-1].weight, ref.head[-1].weight, atol=1e-4)  # the views are used


def test_eval_view_specs():
    spec = eval_view_spec("simclr", 16)
    assert spec.size == 16 and spec.scale == (0.5, 1.0) and spec.flip_p == 0.5 and spec.jitter[-1] == 0.0
    assert eval_view_spec("flip", 8).scale == (1.0, 1.0)
    custom = ViewSpec(size=16, scale=(0.2, 1.0))
    assert eval_view_spec(custom, 16) is custom and eval_view_spec(None, 16) is None
    with pytest.raises(ValueError, match="unknown view kind"):
        eval_view_spec("jigsaw", 16)


def test_bad_input_raises_clear_errors():
    train, test = _digits(64, 16)
    net = _net()
    with pytest.raises(ValueError, match="no labels"):
        linear_probe_on_images(net, ImageArray(train.images), test, MEAN, STD)
    with pytest.raises(TypeError, match="ImageArray"):
        linear_probe_on_images(net, train.images, test, MEAN, STD)
    with pytest.raises(ValueError, match="one value per channel"):
        linear_probe_on_images(net, train, test, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    with pytest.raises(ValueError, match="optimizer"):
        linear_probe_on_images(net, train, test, MEAN, STD, optimizer="adam")
    with pytest.raises(ValueError, match="no validation images"):
        linear_probe_on_images(net, train, test, MEAN, STD, val_fraction=0.0)
