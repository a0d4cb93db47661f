"""train.loggers: the curves each backend holds, read back with the backend's own reader, against the
per-step losses the training loop computed and the metrics.jsonl rows; resume continues them; a
failing run still flushes them. W&B and MLflow run only where they are installed (not in CI's dev
extra: they are large), in their offline modes."""

from __future__ import annotations

import glob
import json
import struct
from pathlib import Path

import pytest

import selfsup.train.loop as loop
from selfsup.config import load_recipe
from selfsup.rundir import read_metrics
from selfsup.run_evaluation import evaluate_run
from selfsup.train.loggers import LoggerError, RunLoggers, check_loggers, default_loggers, open_loggers
from selfsup.train.loop import train
from train_utils import TINY, tiny_digits

STEPS = 12  # 2 epochs x 6 steps (192 images, batch 32)


def _recipe(loggers: str, extra=()):
    return load_recipe("simclr_digits", TINY + ["train.epochs=2", f"train.loggers={loggers}", "method.projector=32-16",
                                                "eval.protocols=[knn]", *extra])


def _recorded_run(monkeypatch, tmp_path, loggers: str, **kwargs):
    """Train with ``loggers``; return the run and the losses train_one_step returned, in step order."""
    losses: list[float] = []
    step = loop.train_one_step

    def recording(*args, **kw):
        values, t_aug = step(*args, **kw)
        losses.append(values["loss"])
        return values, t_aug

    monkeypatch.setattr(loop, "train_one_step", recording)
    run = train(_recipe(loggers), run_dir=tmp_path / "run", data=tiny_digits(), log=lambda *a: None, **kwargs)
    monkeypatch.setattr(loop, "train_one_step", step)
    return run, losses


def _tb_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    out = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    out["_images"] = [(tag, [e.step for e in acc.Images(tag)]) for tag in acc.Tags()["images"]]
    out["_text"] = [tag for tag in acc.Tags()["tensors"]]
    return out


def test_default_is_jsonl_and_tensorboard_when_installed(monkeypatch):
    pytest.importorskip("tensorboard")
    assert default_loggers() == ["jsonl", "tensorboard"]
    assert load_recipe("simclr_digits").train.loggers == ["jsonl", "tensorboard"]
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    assert default_loggers() == ["jsonl"]
    with pytest.raises(LoggerError, match=r"^train.loggers names tensorboard but tensorboard is not installed; "
                                          r"pip install 'selfsup\[tb\]'"):
        check_loggers(["jsonl", "tensorboard"])


def test_tensorboard_curve_is_the_loss_of_every_step(monkeypatch, tmp_path, one_thread):
    pytest.importorskip("tensorboard")
    run, losses = _recorded_run(monkeypatch, tmp_path, "[jsonl,tensorboard]")
    assert len(losses) == STEPS
    tb = _tb_scalars(run)
    assert [s for s, _ in tb["train/loss"]] == list(range(1, STEPS + 1))
    assert [v for _, v in tb["train/loss"]] == pytest.approx(losses, rel=1e-6)  # float32 in the event file
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in steps] == losses
    rows = read_metrics(run)
    assert [s for s, _ in tb["epoch/loss"]] == [r["step"] for r in rows] == [6, 12]
    for (_, v), row, epoch in zip(tb["epoch/loss"], rows, range(2)):
        assert v == pytest.approx(row["loss"], rel=1e-6)
        assert row["loss"] == pytest.approx(sum(losses[6 * epoch:6 * epoch + 6]) / 6, rel=1e-12)
    assert [v for _, v in tb["train/lr"]] == pytest.approx([r["lr"] for r in steps], rel=1e-6)
    assert tb["epoch/online_acc"][-1][1] == pytest.approx(rows[-1]["online_acc"], rel=1e-6)
    assert tb["_images"] == [("views", [0])]

    metrics = evaluate_run(run, data=tiny_digits(), log=lambda *a: None)  # the eval table at the last step
    tb = _tb_scalars(run)
    knn = next(m for m in metrics if m.name.startswith("kNN"))
    assert tb[f"eval/{knn.name}"] == [(STEPS, pytest.approx(knn.value, rel=1e-6))]
    assert "eval/text_summary" in tb["_text"]
    assert len(tb["train/loss"]) == STEPS  # evaluation adds, removes nothing


def test_resume_continues_the_curves_and_drops_steps_past_the_checkpoint(monkeypatch, tmp_path, one_thread):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    straight, losses = _recorded_run(monkeypatch, tmp_path / "a", "[jsonl,tensorboard]")
    run = train(_recipe("[jsonl,tensorboard]"), run_dir=tmp_path / "b", data=tiny_digits(), stop_after_step=5,
                log=lambda *a: None)
    # a process that went on logging after its last checkpoint (step 5), then died
    with SummaryWriter(str(run / "tb")) as w:
        for step in (6, 7):
            w.add_scalar("train/loss", 999.0, step)
    with open(run / "steps.jsonl", "a") as f:
        f.write(json.dumps({"step": 6, "loss": 999.0, "lr": 0.0}) + "\n")
    train(_recipe("[jsonl,tensorboard]"), run_dir=run, resume=True, data=tiny_digits(), log=lambda *a: None)

    curve = _tb_scalars(run)["train/loss"]
    assert [s for s, _ in curve] == list(range(1, STEPS + 1))
    assert [v for _, v in curve] == pytest.approx(losses, rel=1e-6)  # resume is exact: the straight run's curve
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in steps] == losses
    assert _tb_scalars(run)["_images"] == [("views", [0])]  # the preview belongs to the new run only


def test_a_failing_run_still_flushes_its_loggers(monkeypatch, tmp_path, one_thread):
    pytest.importorskip("tensorboard")
    step, calls = loop.train_one_step, []

    def fails_at_step_3(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return step(*args, **kw)

    monkeypatch.setattr(loop, "train_one_step", fails_at_step_3)
    closed = []
    close = RunLoggers.close
    monkeypatch.setattr(RunLoggers, "close", lambda self, failed=False: (closed.append(failed), close(self, failed)))
    with pytest.raises(RuntimeError, match="boom"):
        train(_recipe("[jsonl,tensorboard]"), run_dir=tmp_path / "run", data=tiny_digits(), log=lambda *a: None)
    assert True in closed
    assert [s for s, _ in _tb_scalars(tmp_path / "run")["train/loss"]] == [1, 2]
    assert len((tmp_path / "run" / "steps.jsonl").read_text().splitlines()) == 2


def test_unknown_logger_is_refused_in_one_line(tmp_path):
    from selfsup.config import ConfigError

    with pytest.raises(ConfigError, match=r"train.loggers.0: Input should be 'jsonl', 'tensorboard', 'wandb' or "
                                          r"'mlflow'"):
        _recipe("[comet]")
    with pytest.raises(LoggerError, match="unknown logger 'comet'"):
        open_loggers(["comet"], tmp_path)


def _wandb_history(run_file: str) -> list[dict]:
    """The history rows of an offline ``.wandb`` file: LevelDB-log records (32 KiB blocks, 7-byte
    headers: crc, length, type) of wandb ``Record`` protobufs, after a 7-byte file header."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, records, part = Path(run_file).read_bytes(), 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        part, pos = part + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):  # FULL or LAST
            records.append(part)
            part = b""
    rows = []
    for raw in records:
        r = pb.Record()
        r.ParseFromString(raw)
        if r.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
    return rows


def test_wandb_and_mlflow_offline_hold_the_curves(monkeypatch, tmp_path, one_thread):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run, losses = _recorded_run(monkeypatch, tmp_path, "[wandb,mlflow]")
    metrics = evaluate_run(run, data=tiny_digits(), log=lambda *a: None)
    knn = next(m for m in metrics if m.name.startswith("kNN"))
    rows = read_metrics(run)

    # W&B: offline runs under RUN/wandb, the evaluation continuing the training run's id
    files = sorted(glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb")))
    run_id = (run / "wandb_id").read_text().strip()
    assert len(files) == 2 and all(f.endswith(f"run-{run_id}.wandb") for f in files)
    history = _wandb_history(files[0])
    per_step = [(h["_step"], h["train/loss"]) for h in history if "train/loss" in h]
    assert per_step == [(i + 1, pytest.approx(v, rel=1e-12)) for i, v in enumerate(losses)]
    epochs = [(h["_step"], h["epoch/loss"]) for h in history if "epoch/loss" in h]
    assert epochs == [(r["step"], pytest.approx(r["loss"], rel=1e-12)) for r in rows]
    assert glob.glob(str(run / "wandb" / "offline-run-*" / "files" / "media" / "images" / "views_0_*.png"))
    evals = [h for h in _wandb_history(files[1]) if f"eval/{knn.name}" in h]
    assert [(h["_step"], h[f"eval/{knn.name}"]) for h in evals] == [(STEPS, pytest.approx(knn.value))]

    # MLflow: one run in the file store under RUN/mlruns, read back with MlflowClient
    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    (found,) = client.search_runs([client.get_experiment_by_name("selfsup").experiment_id])
    rid = found.info.run_id
    history = sorted((m.step, m.value) for m in client.get_metric_history(rid, "train/loss"))
    assert history == [(i + 1, pytest.approx(v, rel=1e-12)) for i, v in enumerate(losses)]
    epoch_loss = sorted((m.step, m.value) for m in client.get_metric_history(rid, "epoch/loss"))
    assert epoch_loss == [(r["step"], pytest.approx(r["loss"], rel=1e-12)) for r in rows]
    knn_key = "eval/" + "".join(c if c.isalnum() or c in "_-./: " else "_" for c in knn.name)
    assert [(m.step, m.value) for m in client.get_metric_history(rid, knn_key)] == [(STEPS, pytest.approx(knn.value))]
    artifacts = {a.path for a in client.list_artifacts(rid)}
    assert {"views.png", "eval.txt", "config.json"} <= artifacts
    assert client.get_run(rid).info.status == "FINISHED"
