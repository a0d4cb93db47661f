"""Streaming image datasets at full resolution: :class:`StreamSplit` and :class:`StreamLoader`.

Training (cookbook, "Speeding up training": decoding and augmentation are the bottleneck):

1. the main process draws every view's parameters for the global batch from a generator seeded
   by ``(seed, epoch, step)``, crop boxes in each image's *true* size (RandomResizedCrop from the
   full image, as the papers do);
2. the boxes travel to ``num_workers`` worker processes with the indices; each worker decodes its
   batch (libjpeg DCT scaling when every crop is >= 2x its output), cuts and resizes every view;
3. the uint8 crops come back (pinned, ``prefetch`` batches per worker in flight: memory is bounded
   by workers x prefetch x batch, not by the dataset) and :class:`~selfsup.views.MultiView` applies
   flip, colour, blur, solarize and normalisation batched on the device. When the device is the
   CPU (``finish_in_workers``), each worker applies them to its own batch instead: measured on a
   2-core EPYC, SimCLR at 224 px, the main process doing them reached 18 img/s with 2 threads
   (OpenMP threads stall when the loader processes hold the cores) and 90 with 1, the workers
   doing them in parallel, see ``benchmarks/data_stream.py``. Their output memory is recycled once
   the consumer drops a batch (:mod:`selfsup.data.view_buffers`).

Nothing random happens in a worker, so the views are the same bit for bit for any number of
workers, and a mid-epoch resume replays exactly the remaining steps.

Evaluation uses :meth:`StreamSplit.batch`: the standard resize-then-centre-crop (shorter side to
``image_size / 0.875``), decoded by a thread pool, so every evaluator works on streamed data.
Unreadable files found while training are replaced by a deterministic substitute (the next
readable image, same box scaled to its size) and reported; ``on_corrupt="error"`` stops instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from selfsup.seeds import mix_seed

from .decode import DECODE_ERRORS, Header, cut, decode, decode_error, draft_factor, resize_center, unreadable
from .errors import DataError
from .index import ImageIndex
from .readers import Reader
from .view_buffers import HeldViewBuffers, WorkerViewBuffers, shared_empty

__all__ = ["StreamSplit", "StreamLoader", "EVAL_CROP_RATIO", "VIEW_SEED_SALT", "default_num_workers",
           "auto_num_workers"]

#: the standard evaluation transform: resize the shorter side to size / 0.875 (256 for 224), centre crop
EVAL_CROP_RATIO = 0.875
#: the last part of the per-step view seed ``mix_seed(seed, epoch, step, VIEW_SEED_SALT)``
VIEW_SEED_SALT = 0x5EED
_SUBSTITUTE_TRIES = 64
#: workers finish views in row blocks of about this size (see MultiView's block_bytes: cache-sized)
CPU_BLOCK_BYTES = 5 * 2**20


def default_num_workers() -> int:
    """Loader worker processes for ``data.num_workers=auto`` (see :func:`auto_num_workers`)."""
    return auto_num_workers()[0]


def auto_num_workers(environ: Mapping[str, str] | None = None, cap: int = 8) -> tuple[int, str]:
    """``data.num_workers=auto`` and the reason, in words: this process's share of the CPUs, less one
    for the main process, at most ``cap``. The CPUs are SLURM's ``SLURM_CPUS_PER_TASK`` inside a SLURM
    job (shared by the processes of one task: torchrun inside one task splits them, srun's one task
    per GPU does not), else ``os.sched_getaffinity`` (shared by the ``LOCAL_WORLD_SIZE`` processes of
    this machine under torchrun)."""
    env = os.environ if environ is None else environ
    local = max(1, int(env.get("LOCAL_WORLD_SIZE", "1")))
    if env.get("SLURM_CPUS_PER_TASK", "").isdigit():
        cpus, source = int(env["SLURM_CPUS_PER_TASK"]), "SLURM_CPUS_PER_TASK"
        tasks = re.match(r"\d+", env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or "1")
        share = max(1, local // max(1, int(tasks.group()) if tasks else 1))
    else:
        try:
            cpus, source = len(os.sched_getaffinity(0)), "CPUs in this process's affinity"
        except AttributeError:  # not on Linux
            cpus, source = os.cpu_count() or 1, "CPUs"
        share = local
    n = max(0, min(cap, cpus // share - 1))
    per = f" / {share} processes" if share > 1 else ""
    return n, f"{cpus} {source}{per} - 1 for the main process, at most {cap}"


@dataclass
class StreamSplit:
    """A split of encoded images read on demand: a reader, its index, labels, and the output size.

    Has :class:`~selfsup.data.ImageArray`'s interface for evaluation (``len``, ``channels``,
    ``image_size``, ``labels``, ``classes``, ``batch(idx)``), where ``batch`` decodes with the
    evaluation transform; training goes through :class:`StreamLoader`.
    """

    reader: Reader
    index: ImageIndex
    image_size: int
    labels: torch.Tensor | None = None
    classes: list[str] | None = None
    on_corrupt: str = "skip"
    threads: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))
    channels: int = 0  # 0: 1 when every image is grayscale, else 3

    def __post_init__(self) -> None:
        if len(self.reader) != len(self.index):
            raise DataError(f"the reader has {len(self.reader)} images but the index {len(self.index)}; rebuild the index")
        if self.labels is not None:
            self.labels = torch.as_tensor(np.asarray(self.labels), dtype=torch.int64).reshape(-1)
            if self.labels.numel() != len(self):
                raise DataError(f"{len(self)} images but {self.labels.numel()} labels; give one label per image")
        if not self.channels:
            self.channels = 1 if len(self.index) and bool(self.index.gray.all()) else 3
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return len(self.index)

    @property
    def labeled(self) -> bool:
        return self.labels is not None

    def __getstate__(self) -> dict[str, Any]:  # workers get no thread pool
        state = dict(self.__dict__)
        state["_pool"] = None
        return state

    # -- decoding with substitutes ---------------------------------------------------------------
    def decode(self, i: int, reduce: int = 1) -> tuple[torch.Tensor, Header, int, str | None]:
        """Decode image ``i`` (or, if it is unreadable, its substitute): ``(uint8 [C, H', W'], header
        of the image decoded, its row, None or "path: error")``. Raises :class:`DataError` for an
        unreadable file when ``on_corrupt="error"``."""
        problem = None
        n = len(self)
        for k in range(min(n, _SUBSTITUTE_TRIES)):
            j = (i + k) % n
            head = self.index.header(j)
            try:
                return decode(self.reader.read(j), head, self.channels, reduce if k == 0 else 1), head, j, problem
            except DECODE_ERRORS as e:
                if self.on_corrupt == "error":
                    raise unreadable(self.reader.name(j), decode_error(e), "replace unreadable images") from None
                problem = problem or f"{self.reader.name(j)}: {decode_error(e)}"
        raise DataError(f"{_SUBSTITUTE_TRIES} images in a row from {self.reader.name(i)} are unreadable; check the files")

    def cut_views(self, i: int, boxes: torch.Tensor, sizes: list[int]) -> tuple[list[torch.Tensor], str | None]:
        """Image ``i``'s views: ``boxes`` ``[V, 4]`` (full-resolution oriented pixels), resized to ``sizes``."""
        head = self.index.header(i)
        ratio = float(torch.minimum(boxes[:, 2], boxes[:, 3]).div(torch.tensor(sizes, dtype=torch.float64)).min())
        x, used, j, problem = self.decode(i, draft_factor(ratio))
        if j != i:  # the substitute: the same boxes, scaled to its size
            scale = torch.tensor([used.height / head.height, used.width / head.width] * 2, dtype=torch.float64)
            boxes = (boxes.to(torch.float64) * scale).round().long()
        return cut(x, used, boxes, sizes), problem

    def eval_image(self, i: int, resize_to: int | None = None) -> tuple[torch.Tensor, str | None]:
        """Image ``i`` with the evaluation transform (shorter side to ``resize_to``, default
        ``image_size / 0.875``, then a centre ``image_size`` crop)."""
        size = self.image_size
        resize_to = resize_to or int(round(size / EVAL_CROP_RATIO))
        head = self.index.header(i)
        x, _, j, problem = self.decode(i, draft_factor(min(head.width, head.height) / resize_to))
        if j != i:  # the substitute, as it is evaluated itself
            return self.eval_image(j, resize_to)[0], problem
        return resize_center(x, resize_to, size), problem

    def batch(self, idx: torch.Tensor, resize_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rows ``idx`` with the evaluation transform: ``(uint8 [B, C, S, S], int64 [B] labels or None)``."""
        rows = torch.as_tensor(idx, dtype=torch.int64).reshape(-1).tolist()
        if self._pool is None and self.threads > 1:
            self._pool = ThreadPoolExecutor(max_workers=self.threads)  # PIL and torch release the GIL
        work = lambda i: self.eval_image(i, resize_to)[0]  # noqa: E731
        imgs = list(self._pool.map(work, rows)) if self._pool is not None and len(rows) > 1 else [work(i) for i in rows]
        x = torch.stack(imgs) if imgs else torch.empty(0, self.channels, self.image_size, self.image_size,
                                                       dtype=torch.uint8)
        return x, (self.labels[rows] if self.labels is not None else None)

    def to_ram(self, resize_to: int | None = None):
        """Decode every image (shorter side to ``resize_to``, default ``image_size``, centre crop) into
        an in-RAM :class:`~selfsup.data.ImageArray`: ``data.cache=ram``. Unreadable images are
        dropped (``on_corrupt="skip"``) and returned as ``[(path, error), ...]``."""
        from .arrays import ImageArray

        n, s = len(self), self.image_size
        buf = torch.empty((n, self.channels, s, s), dtype=torch.uint8)
        keep = np.ones(n, dtype=bool)
        bad: list[tuple[int, str]] = []

        def work(i: int) -> None:
            head = self.index.header(i)
            try:
                x = decode(self.reader.read(i), head, self.channels, draft_factor(min(head.width, head.height) / s))
            except DECODE_ERRORS as e:
                if self.on_corrupt == "error":
                    raise unreadable(self.reader.name(i), decode_error(e)) from None
                keep[i] = False
                bad.append((i, f"{self.reader.name(i)}: {decode_error(e)}"))
                return
            buf[i] = resize_center(x, resize_to or s, s)

        if self.threads > 1 and n > 1:
            with ThreadPoolExecutor(max_workers=self.threads) as pool:
                list(pool.map(work, range(n), chunksize=32))
        else:
            for i in range(n):
                work(i)
        if not keep.any():
            raise DataError(f"every image of {self.reader.name(0)}'s split is unreadable; check the files")
        labels = self.labels[torch.from_numpy(keep)] if self.labels is not None else None
        images = buf if keep.all() else buf[torch.from_numpy(keep)]
        return ImageArray(images, labels, self.classes), [msg for _, msg in sorted(bad)]


class _StepTask:
    """One step's work for a worker: rows, and each view's boxes and parameters (carried back)."""

    __slots__ = ("step", "rows", "boxes", "params")

    def __init__(self, step: int, rows: list[int], boxes: torch.Tensor, params: list) -> None:
        self.step, self.rows, self.boxes, self.params = step, rows, boxes, params


class _TaskSampler:
    """Runs in the main process: yields one :class:`_StepTask` per step (as a one-item batch)."""

    def __init__(self, loader: "StreamLoader", epoch: int, start_step: int) -> None:
        self.loader, self.epoch, self.start = loader, epoch, start_step

    def __len__(self) -> int:
        return self.loader.sampler.steps_per_epoch - self.start

    def __iter__(self) -> Iterator[list[_StepTask]]:
        ld = self.loader
        for step in range(self.start, ld.sampler.steps_per_epoch):
            yield [ld.task(self.epoch, step)]


class _CutDataset(torch.utils.data.Dataset):
    """What a worker runs: decode a step's rows and cut their views (and finish them, with ``views``)."""

    def __init__(self, split: StreamSplit, sizes: list[int], views=None, flags: torch.Tensor | None = None) -> None:
        self.split, self.sizes, self.views = split, sizes, views
        self.buffers = WorkerViewBuffers(flags) if flags is not None else None  # reused view memory, see view_buffers

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, task: _StepTask) -> dict[str, Any]:
        split, views = self.split, [[] for _ in self.sizes]
        problems, t0 = [], time.perf_counter()
        try:
            for r, i in enumerate(task.rows):
                crops, problem = split.cut_views(i, task.boxes[:, r], self.sizes)
                for v, c in enumerate(crops):
                    views[v].append(c)
                if problem:
                    problems.append(problem)
        except DataError as e:  # passed back and raised in the main process as one line
            return {"step": task.step, "fatal": str(e)}
        y = split.labels[task.rows] if split.labels is not None else None
        t_cut = time.perf_counter()
        crops = [torch.stack(v) for v in views]
        out = {"step": task.step, "labels": y, "problems": problems}
        if self.views is None:
            return {**out, "crops": crops, "params": task.params, "times": (t_cut - t0, 0.0)}
        from selfsup.views import Crops

        info = torch.utils.data.get_worker_info()
        if info is None:  # in the calling process: nothing to send
            slot, dest = -1, [torch.empty(c.shape) for c in crops]
        elif self.buffers is None:
            slot, dest = -1, [shared_empty(c.shape) for c in crops]
        else:
            slot, dest = self.buffers.take(info.id, [c.shape for c in crops])
        with _one_thread():  # the same arithmetic in every process: views do not depend on the worker count
            ready = self.views(Crops(crops, task.params), torch.Generator(), block_bytes=CPU_BLOCK_BYTES, out=dest)
        return {**out, "views": ready, "slot": (info.id if info else 0, slot),
                "times": (t_cut - t0, time.perf_counter() - t_cut)}


def _first(items: list) -> Any:
    return items[0]


def _keep_heap(_: int) -> None:
    """Worker init: glibc keeps freed memory in the heap (no trimming, no per-allocation mmap below 32 MB), so
    each batch's MB-sized float buffers reuse pages already mapped instead of faulting fresh ones in: measured
    a 1.2x shorter worker batch (SimCLR, 224 px; page faults are expensive on this VM). No-op without glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is not None:
        mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
        mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD (glibc's maximum)


@contextlib.contextmanager
def _one_thread():
    """Run a block with one intra-op thread (DataLoader workers already have one), then restore."""
    n = torch.get_num_threads()
    if n != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n != 1:
            torch.set_num_threads(n)


class StreamLoader:
    """Training batches of a :class:`StreamSplit`: ``(Crops on device, labels)`` per step.

    ``views`` is the run's :class:`~selfsup.views.MultiView` (it draws the parameters),
    ``sampler`` the run's :class:`~selfsup.data.EpochSampler` (rows and sharding), ``seed`` the
    run's seed. ``num_workers=0`` decodes in the calling process. ``finish_in_workers`` (default:
    when ``device`` is the CPU) makes the workers apply the views' photometric part too and yield
    :class:`~selfsup.views.ReadyViews`. ``times`` sums the workers' seconds spent decoding and
    cutting, and finishing, over the batches yielded so far. ``reuse_buffers`` (default on) lets the
    workers write finished views into recycled shared memory once the consumer holds no tensor of
    an earlier batch (:mod:`selfsup.data.view_buffers`); ``fresh_batches`` counts the batches that
    still needed fresh memory.
    """

    def __init__(self, split: StreamSplit, views, sampler, seed: int, num_workers: int = 2, prefetch: int = 2,
                 device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                 finish_in_workers: bool | None = None, reuse_buffers: bool = True) -> None:
        if len(split) != sampler.n:
            raise DataError(f"the sampler is for {sampler.n} rows but the split has {len(split)}; rebuild the sampler")
        self.split, self.views, self.sampler, self.seed = split, views, sampler, seed
        self.num_workers, self.prefetch = int(num_workers), max(1, int(prefetch))
        self.device, self.rank, self.world_size = torch.device(device), rank, world_size
        self.sizes = [spec.size for spec in views.specs]
        self.heights = torch.from_numpy(split.index.height.astype(np.int64))
        self.widths = torch.from_numpy(split.index.width.astype(np.int64))
        self.finish_in_workers = self.device.type == "cpu" if finish_in_workers is None else finish_in_workers
        self.problems: list[str] = []  # unreadable files replaced since the last take_problems() (this rank)
        self.times = [0.0, 0.0]
        self.reuse_buffers, self.fresh_batches = reuse_buffers, 0
        self._perm: tuple[int, torch.Tensor] | None = None

    def generator(self, epoch: int, step: int) -> torch.Generator:
        """The generator of step ``step``'s view parameters: its own seed, so any step can be replayed."""
        return torch.Generator().manual_seed(mix_seed(self.seed, epoch, step, VIEW_SEED_SALT))

    def task(self, epoch: int, step: int) -> _StepTask:
        """Draw step ``step``'s parameters for the global batch and keep this rank's rows."""
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, self.sampler.permutation(epoch))
        g = self.sampler.global_batch_size
        rows = self._perm[1][step * g : (step + 1) * g]
        params = self.views.sample_params(self.heights[rows], self.widths[rows], self.generator(epoch, step),
                                          (self.rank, self.world_size))
        b = self.sampler.batch_size
        mine = rows[self.rank * b : (self.rank + 1) * b]
        boxes = torch.stack([p.boxes for p in params])  # [V, b, 4]
        return _StepTask(step, mine.tolist(), boxes, params)

    def take_problems(self) -> list[str]:
        """The unreadable files replaced since the last call (``"path: error"``), and forget them."""
        out, self.problems = self.problems, []
        return out

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[Any, torch.Tensor | None]]:
        """Yield ``(Crops, labels)`` on the device for steps ``start_step ..`` of ``epoch``."""
        from selfsup.views import Crops, ReadyViews

        if not 0 <= start_step <= self.sampler.steps_per_epoch:
            raise DataError(f"start_step must be in 0..{self.sampler.steps_per_epoch}, got {start_step}")
        pin = self.device.type == "cuda"
        kwargs = dict(num_workers=self.num_workers, collate_fn=_first, pin_memory=pin)
        if self.num_workers > 0:
            kwargs.update(prefetch_factor=self.prefetch, persistent_workers=False, worker_init_fn=_keep_heap)
        reuse = self.reuse_buffers and self.finish_in_workers and self.num_workers > 0 and self.device.type == "cpu"
        # Slots per worker: its `prefetch` batches in flight, and the two the consumer may still hold (the batch
        # it works on, the one its loop variable kept); when all are taken the worker uses fresh memory.
        flags = torch.zeros(self.num_workers, self.prefetch + 2, dtype=torch.int32).share_memory_() if reuse else None
        held = HeldViewBuffers(flags) if flags is not None else None
        dl = torch.utils.data.DataLoader(_CutDataset(self.split, self.sizes,
                                                     self.views if self.finish_in_workers else None, flags),
                                         batch_sampler=_TaskSampler(self, epoch, start_step), **kwargs)
        for out in dl:
            if "fatal" in out:
                raise DataError(out["fatal"])
            self.problems += out["problems"]
            self.times = [a + b for a, b in zip(self.times, out["times"])]
            y = out["labels"].to(self.device, non_blocking=pin) if out["labels"] is not None else None
            if "views" in out:
                self.fresh_batches += out["slot"][1] < 0
                lent = held.lend(*out["slot"], out["views"]) if held is not None else out["views"]
                yield ReadyViews([v.to(self.device, non_blocking=pin) for v in lent]), y
                del lent  # this frame's aliases: the slot is free once the consumer drops its own
                if held is not None:
                    held.release()
            else:
                yield Crops([c.to(self.device, non_blocking=pin) for c in out["crops"]], out["params"]), y
