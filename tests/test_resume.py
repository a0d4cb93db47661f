"""Exact resume: an interrupted run and an uninterrupted one give bit-identical weights and metrics.

Every stateful method is trained for 2 epochs of 6 steps straight; separately it is stopped at a
mid-epoch step drawn at random, resumed into a freshly built model, and finished. The final state
(weights, teachers, queues, banks, centers, pseudo-labels) and every metrics row (timings aside)
must be equal.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal

import pytest
import torch
import torch.multiprocessing as mp

from selfsup.config import ConfigError, load_recipe
from selfsup.rundir import read_metrics
from selfsup.train import checkpoint as ckpt
from selfsup.train.loop import TIMING_KEYS, build_method, train
from train_utils import TINY, tiny_digits

MULTICROP = ["views.params.n_local=2", "views.params.local_size=8"]
# recipe -> overrides that keep it tiny (and make its state non-trivial within 12 steps)
STATEFUL = {
    "simclr": ["method.projector=32-16"],
    "byol": ["method.projector=32-16", "method.predictor=32-16"],
    "mocov2": ["method.projector=32-16", "method.queue_size=96"],
    "nnclr": ["method.projector=32-32-16", "method.predictor=32-16", "method.queue_size=96"],
    "msf": ["method.projector=32-16", "method.predictor=32-16", "method.queue_size=96", "method.k=3"],
    "dino": ["method.head=32-32-16", "method.out_dim=64", "views.params={n_local: 2}"],
    "swav": ["method.projector=32-16", "method.nmb_prototypes=10", "method.queue_length=64",
             "method.queue_start_epochs=1", "method.freeze_prototypes_epochs=1", *MULTICROP],
    "deepcluster_v2": ["method.projector=32-16", "method.nmb_prototypes=[8,6]", "method.memory_size=192", *MULTICROP],
    "wmse": ["method.projector=32-8", "method.w_size=16"],
    "directpred": ["method.projector=32-16"],
    "simsiam": ["method.projector=32-32", "method.predictor=8-32"],
    "vicreg": ["method.projector=32-32"],
}
EPOCHS, STEPS = 2, 6  # 192 images / batch 32


def _recipe(name: str, extra: list[str] = ()):
    return load_recipe(f"{name}_digits", TINY + [f"train.epochs={EPOCHS}", *STATEFUL[name], *extra])


def _fresh(recipe, seed: int):
    torch.manual_seed(seed)
    return build_method(recipe, 1, 16)


def _rows(run):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(run)]


def _assert_same_run(a, b):
    assert _rows(a) == _rows(b)
    sa = torch.load(a / "checkpoint.pt", weights_only=True)
    sb = torch.load(b / "checkpoint.pt", weights_only=True)
    assert sa["method"].keys() == sb["method"].keys()
    for k in sa["method"]:
        assert torch.equal(sa["method"][k], sb["method"][k]), k
    for g, h in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        assert all(torch.equal(g[k], h[k]) for k in g if isinstance(g[k], torch.Tensor))
    assert sa["probe"].keys() == sb["probe"].keys() and all(torch.equal(sa["probe"][k], sb["probe"][k])
                                                            for k in sa["probe"])


@pytest.mark.parametrize("name", list(STATEFUL))
def test_resume_mid_epoch_is_bit_identical(name, tmp_path, one_thread):
    r, data, quiet = _recipe(name), tiny_digits(), (lambda *a: None)
    straight = train(r, run_dir=tmp_path / "a", data=data, method=_fresh(r, 0), log=quiet)
    stop = random.Random(name).randrange(1, EPOCHS * STEPS)  # a step inside one of the epochs
    if stop % STEPS == 0:
        stop += 1
    run = tmp_path / "b"
    train(r, run_dir=run, data=data, method=_fresh(r, 0), stop_after_step=stop, log=quiet)
    state = ckpt.load(run / "checkpoint.pt")
    assert state["global_step"] == stop and [x["epoch"] for x in read_metrics(run)] == list(range(1, stop // STEPS + 1))
    train(r, run_dir=run, resume=True, data=data, method=_fresh(r, 1), log=quiet)  # state comes from the checkpoint
    _assert_same_run(straight, run)


def test_periodic_checkpoints_resume_exactly(tmp_path, one_thread, monkeypatch):
    """The checkpoint written every N steps (not one written on stopping) resumes exactly too."""
    r, data, quiet = _recipe("mocov2", ["train.checkpoint_every_steps=4"]), tiny_digits(), (lambda *a: None)
    straight = train(r, run_dir=tmp_path / "a", data=data, method=_fresh(r, 0), log=quiet)
    run = tmp_path / "b"
    saves, real_save = [], ckpt.save_atomic

    def save_and_record(obj, path):
        saves.append(obj["global_step"])
        real_save(obj, path)
        if obj["global_step"] == 8:
            shutil.copy(path, tmp_path / "step8.pt")

    monkeypatch.setattr(ckpt, "save_atomic", save_and_record)
    train(r, run_dir=run, data=data, method=_fresh(r, 0), stop_after_step=10, log=quiet)
    assert saves == [4, 6, 8, 10]  # every 4 steps, the epoch end (6), and the stop
    monkeypatch.undo()
    shutil.copy(tmp_path / "step8.pt", run / "checkpoint.pt")  # as if it had died at step 9 or 10
    train(r, run_dir=run, resume=True, data=data, method=_fresh(r, 1), log=quiet)
    _assert_same_run(straight, run)


def _crash_between_metrics_and_checkpoint(run: str) -> None:
    """Train; at the second epoch end, the metrics row is appended and then the process is killed
    (SIGKILL) before the checkpoint is written."""
    torch.set_num_threads(1)
    from selfsup.train import checkpoint

    real = checkpoint.save_atomic

    def save(obj, path):
        if obj["global_step"] == 2 * STEPS:
            os.kill(os.getpid(), signal.SIGKILL)
        real(obj, path)

    checkpoint.save_atomic = save
    r = load_recipe("simclr_digits", TINY + ["train.epochs=3", *STATEFUL["simclr"], "train.checkpoint_every_steps=3"])
    train(r, run_dir=run, data=tiny_digits(), method=_fresh(r, 0), log=lambda *a: None)


def test_kill_between_metrics_and_checkpoint_leaves_no_duplicate_row(tmp_path, one_thread):
    r = load_recipe("simclr_digits", TINY + ["train.epochs=3", *STATEFUL["simclr"], "train.checkpoint_every_steps=3"])
    straight = train(r, run_dir=tmp_path / "a", data=tiny_digits(), method=_fresh(r, 0), log=lambda *a: None)
    run = tmp_path / "b"
    p = mp.get_context("spawn").Process(target=_crash_between_metrics_and_checkpoint, args=(str(run),))
    p.start()
    p.join(120)
    assert p.exitcode == -signal.SIGKILL
    assert [x["epoch"] for x in read_metrics(run)] == [1, 2]  # row 2 written, its checkpoint not
    assert ckpt.load(run / "checkpoint.pt")["global_step"] == 9  # the last periodic checkpoint
    train(r, run_dir=run, resume=True, data=tiny_digits(), method=_fresh(r, 1), log=lambda *a: None)
    assert [x["epoch"] for x in read_metrics(run)] == [1, 2, 3]
    _assert_same_run(straight, run)


def test_resume_refuses_schedule_and_model_overrides_and_records_safe_ones(tmp_path, one_thread):
    r, data, quiet = _recipe("simclr"), tiny_digits(), (lambda *a: None)
    run = train(r, run_dir=tmp_path / "run", data=data, stop_after_step=3, log=quiet)
    for bad, key in (("optim.lr=0.5", "optim.lr"), ("train.epochs=3", "train.epochs"),
                     ("data.batch_size=16", "data.batch_size"), ("method.temperature=0.5", "method.temperature"),
                     ("model.width=16", "model.width")):
        with pytest.raises(ConfigError, match=f"cannot resume with a changed {key}:") as e:
            train(_recipe("simclr", [bad]), run_dir=run, resume=True, data=data, log=quiet)
        assert "\n" not in str(e.value)
    train(_recipe("simclr", ["eval.knn_k=[5]", "train.progress_bar=false"]), run_dir=run, resume=True, data=data,
          log=quiet)
    import yaml

    assert yaml.safe_load((run / "config.yaml").read_text())["eval"]["knn_k"] == [5]


def test_resume_accepts_a_checkpoint_from_before_a_key_existed(tmp_path, one_thread):
    """A checkpoint written before train.accumulate / train.float32_matmul_precision existed resumes with
    their defaults (and with a setting resolved from auto), but not with another value."""
    r, data, quiet = _recipe("simclr"), tiny_digits(), (lambda *a: None)
    run = train(r, run_dir=tmp_path / "run", data=data, stop_after_step=3, log=quiet)
    state = ckpt.load(run / "checkpoint.pt")
    for key in ("accumulate", "float32_matmul_precision", "compile"):
        del state["config"]["train"][key]
    ckpt.save_atomic(state, run / "checkpoint.pt")
    with pytest.raises(ConfigError, match="cannot resume with a changed train.accumulate: None -> 2"):
        train(_recipe("simclr", ["train.accumulate=2"]), run_dir=run, resume=True, data=data, log=quiet)
    train(_recipe("simclr"), run_dir=run, resume=True, data=data, log=quiet)
    assert read_metrics(run)[-1]["epoch"] == r.train.epochs


def test_new_run_refuses_an_existing_run_directory_unless_overwrite(tmp_path, one_thread):
    r, data, quiet = _recipe("simclr", ["train.epochs=1"]), tiny_digits(), (lambda *a: None)
    run = train(r, run_dir=tmp_path / "run", data=data, log=quiet)
    (run / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already holds a run .*--resume .*--overwrite"):
        train(r, run_dir=run, data=data, log=quiet)
    assert [x["epoch"] for x in read_metrics(run)] == [1]  # untouched
    train(r, run_dir=run, data=data, overwrite=True, log=quiet)
    assert [x["epoch"] for x in read_metrics(run)] == [1]  # started over, not appended
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files are removed


def test_sampler_seed_and_epoch_do_not_alias():
    from selfsup.data import EpochSampler

    a, b = EpochSampler(100, 10, seed=0), EpochSampler(100, 10, seed=1)
    assert not torch.equal(a.permutation(1), b.permutation(0))
    assert torch.equal(a.permutation(3), EpochSampler(100, 10, seed=0).permutation(3))
