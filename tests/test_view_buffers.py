"""Recycled shared memory for the views StreamLoader's workers finish (selfsup/data/view_buffers.py): a slot is
reused only once the consumer holds no tensor of its batch, so batches a consumer keeps are never overwritten."""

from __future__ import annotations

import pytest
import torch

from selfsup.data import EpochSampler, StreamLoader, load_data
from selfsup.data.view_buffers import HeldViewBuffers, WorkerViewBuffers
from selfsup.views import build_views
from test_stream import jpeg_folder


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE_DIR", str(tmp_path / "cache"))


def test_a_slot_is_freed_only_when_every_alias_is_gone():
    flags = torch.zeros(1, 2, dtype=torch.int32)
    worker, main = WorkerViewBuffers(flags), HeldViewBuffers(flags)
    shapes = [torch.Size((2, 3, 4, 4))]
    k, bufs = worker.take(0, shapes)
    assert (k, flags.tolist()) == (0, [[1, 0]])
    lent = main.lend(0, k, bufs)
    assert lent[0].data_ptr() == bufs[0].data_ptr() and lent[0] is not bufs[0]
    part = lent[0][1:]  # a slice the consumer keeps
    del lent
    main.release()
    assert flags.tolist() == [[1, 0]]  # the slice still reads the slot's memory
    k2, _ = worker.take(0, shapes)
    k3, fresh = worker.take(0, shapes)
    assert (k2, k3) == (1, -1) and fresh[0].data_ptr() not in (bufs[0].data_ptr(),)
    del part
    main.release()
    assert flags.tolist() == [[0, 1]]  # slot 0 is free again; slot 1 was taken but never lent
    k4, again = worker.take(0, shapes)
    assert k4 == 0 and again[0] is bufs[0]  # the same memory, already touched
    # a slot lent again (the same storage, as torch's shared-storage cache returns it) keeps an exact count
    lent = main.lend(0, 0, [again[0].view(again[0].shape)])
    del lent
    main.release()
    assert flags[0, 0] == 0


def _views(tmp_path):
    jpeg_folder(tmp_path / "d", 48)
    split = load_data(tmp_path / "d", image_size=32, cache="none").train
    return split, build_views("simclr", 32, 3)


def _loader(split, views, workers, reuse=True):
    return StreamLoader(split, views, EpochSampler(len(split), 4), 0, num_workers=workers, prefetch=1,
                        finish_in_workers=True, reuse_buffers=reuse)


def test_reused_memory_gives_the_same_views_and_never_overwrites_a_kept_batch(tmp_path):
    split, views = _views(tmp_path)
    reference = [[v.clone() for v in x.views] for x, _ in _loader(split, views, 0).epoch(0)]
    assert len(reference) == 12
    # a consumer that drops each batch: every batch after the first few reuses a slot, same values
    loader = _loader(split, views, 2)
    for step, (x, _) in enumerate(loader.epoch(0)):
        assert all(torch.equal(a, b) for a, b in zip(x.views, reference[step]))
    assert loader.fresh_batches == 0
    # a consumer that keeps a slice of every batch: those slots stay taken, nothing is overwritten
    loader, kept = _loader(split, views, 2), []
    for x, _ in loader.epoch(0):
        kept.append(x.views[1][2:5])
    assert loader.fresh_batches > 0
    assert all(torch.equal(k, r[1][2:5]) for k, r in zip(kept, reference))
    # and one that keeps whole batches (list(epoch)), as tests and users do
    whole = list(_loader(split, views, 2).epoch(0))
    assert all(torch.equal(a, b) for (x, _), r in zip(whole, reference) for a, b in zip(x.views, r))
