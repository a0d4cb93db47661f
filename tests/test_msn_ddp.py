"""2-process gloo DDP parity of MSN and PMSN at the method level: ME-MAX / the power-law prior KL on the
global mean prediction and Sinkhorn over the global batch of targets, through the whole method (ViT,
patch drop, head, prototypes, EMA target). One process on the full batch and two processes on halves
must give the same loss (mean of the ranks' values) and the same input gradients (DDP's average).

The head runs without BatchNorm here: per-rank BatchNorm statistics differ from full-batch ones
(the trainer converts BN to SyncBatchNorm on CUDA only, as the official code does under DDP).
"""

import torch

from ddp_utils import assert_parity, ddp_parity
from selfsup.config import load_recipe
from selfsup.train.loop import build_method

OVERRIDES = ["model.backbone=timm:vit_tiny_patch16_224", "model.vit.patch_size=4", "model.vit.embed_dim=16",
             "model.vit.depth=1", "model.vit.num_heads=2", "data.image_size=8", "method.hidden_dim=16",
             "method.output_dim=8", "method.num_proto=6", "method.use_bn=false", "method.sharpen_temp=0.5"]


def _method(name: str):
    torch.manual_seed(0)
    return build_method(load_recipe(f"{name}_digits", OVERRIDES), 1, 8).double()


def _loss(name, target, anchor, focal1, focal2, drop):
    m = _method(name)
    return m([target, anchor, focal1, focal2], 0.0, masks=(drop,))["loss"]


def msn_case(target, anchor, focal1, focal2, drop):
    return _loss("msn", target, anchor, focal1, focal2, drop)


def pmsn_case(target, anchor, focal1, focal2, drop):
    return _loss("pmsn", target, anchor, focal1, focal2, drop)


def test_msn_and_pmsn_are_exact_under_ddp():
    g = torch.Generator().manual_seed(0)
    b = 8
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    drop = _method("msn").make_masks(b, torch.Generator().manual_seed(1))[0]
    inputs = [r(b, 1, 8, 8) * 3, r(b, 1, 8, 8), r(b, 1, 4, 4), r(b, 1, 4, 4), drop]
    result = ddp_parity([("msn", msn_case, inputs), ("pmsn", pmsn_case, inputs)])
    assert_parity(result)
    # the check can fail: the batch statistics of half the batch give another loss
    half = msn_case(*[x[: b // 2] for x in inputs])
    assert not torch.allclose(half, result["msn"]["single"][0])
