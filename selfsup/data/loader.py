"""Batch index sampling (single- and multi-process) and a background prefetcher.

Joint-embedding SSL losses are computed over the *global* batch, and the
Cookbook (Balestriero et al., 2023) stresses that batch size matters
(e.g. SimCLR's InfoNCE uses the other samples as negatives), so every step
must see full batches: :class:`EpochSampler` drops the last partial global
batch and gives each rank an equal contiguous shard of every global batch.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import torch

from selfsup.seeds import mix_seed

from .arrays import ImageArray
from .errors import DataError

__all__ = ["EpochSampler", "Prefetcher", "check_batch_size", "sequential_batches"]


def _require_full_batch(n: int, batch_size: int, world_size: int) -> None:
    if batch_size < 1 or world_size < 1:
        raise DataError(f"batch_size ({batch_size}) and world_size ({world_size}) must be >= 1")
    if n < batch_size * world_size:
        raise DataError(
            f"dataset has {n} training images but the effective batch is {batch_size * world_size}; "
            "lower data.batch_size or add data"
        )


def check_batch_size(split: ImageArray, batch_size: int, world_size: int = 1) -> None:
    """Raise :class:`DataError` unless ``split`` holds at least one full global batch ``batch_size * world_size``."""
    _require_full_batch(len(split), batch_size, world_size)


class EpochSampler:
    """Reproducible shuffled batches of row indices, sharded across ``world_size`` ranks.

    Epoch ``e`` uses the permutation ``randperm(n)`` seeded with ``mix_seed(seed, e)``, identical on
    every rank (seed s at epoch e + 1 is unrelated to seed s + 1 at epoch e). Global batch ``s`` is
    ``perm[s*b*W : (s+1)*b*W]`` and rank ``r`` gets its rows
    ``r*b : (r+1)*b``; the last partial global batch is dropped, so all ranks run
    ``steps_per_epoch = n // (b*W)`` steps of exactly ``b`` rows.
    """

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank must be in 0..world_size-1, got rank={rank}, world_size={world_size}")
        _require_full_batch(n, batch_size, world_size)
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.seed, self.shuffle = seed, shuffle

    @property
    def global_batch_size(self) -> int:
        """Rows per step summed over ranks (``batch_size * world_size``)."""
        return self.batch_size * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        """Full global batches per epoch (the remainder ``n mod global_batch_size`` is dropped)."""
        return self.n // self.global_batch_size

    def __len__(self) -> int:
        return self.steps_per_epoch

    def permutation(self, epoch: int) -> torch.Tensor:
        """The epoch's row order (int64 ``[n]``), the same on all ranks."""
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        return torch.randperm(self.n, generator=g)

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[torch.Tensor]:
        """Yield this rank's index tensors for steps ``start_step .. steps_per_epoch - 1`` of ``epoch``.

        ``start_step`` is checked here, at the call, not at the first ``next()``.
        """
        if not 0 <= start_step <= self.steps_per_epoch:
            raise DataError(f"start_step must be in 0..{self.steps_per_epoch}, got {start_step}")
        return self._iter(self.permutation(epoch), start_step)

    def _iter(self, perm: torch.Tensor, start_step: int) -> Iterator[torch.Tensor]:
        g, lo = self.global_batch_size, self.rank * self.batch_size
        for s in range(start_step, self.steps_per_epoch):
            yield perm[s * g + lo : s * g + lo + self.batch_size]


def sequential_batches(n: int, batch_size: int) -> Iterator[torch.Tensor]:
    """Yield ``arange(n)`` in order, in chunks of ``batch_size`` (last one partial): for evaluation passes."""
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield torch.arange(start, min(n, start + batch_size))


_DONE = object()


def _put(q: queue.Queue, stop: threading.Event, item: object) -> bool:
    """Put ``item`` unless ``stop`` gets set while the queue is full."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _produce(arrays: ImageArray, indices: Iterator[torch.Tensor], q: queue.Queue, stop: threading.Event,
             pin: bool) -> None:
    """Loading-thread body: gather (and pin) batches into ``q``; errors are passed on to the consumer."""
    try:
        for idx in indices:
            x, y = arrays.batch(idx)
            if pin:
                x, y = x.pin_memory(), (y.pin_memory() if y is not None else None)
            if not _put(q, stop, (x, y)):
                return
    except BaseException as e:  # re-raised in the consumer thread
        _put(q, stop, e)
        return
    _put(q, stop, _DONE)


class Prefetcher:
    """Iterate ``(uint8 images [B,C,H,W], labels [B] | None)`` on ``device``, loading ahead in a thread.

    A daemon thread gathers the next ``depth`` CPU batches (``pin_memory`` pins them);
    on CUDA the host-to-device copy of batch ``k + 1`` is issued ``non_blocking`` on a side
    stream while batch ``k`` is being used, and the consumer's stream waits for it.
    ``start_step`` resumes mid-epoch (yields the same batches as the tail of a full pass).
    Use as an iterator (optionally ``with Prefetcher(...) as it:``); ``close()`` stops the thread.
    """

    def __init__(self, arrays: ImageArray, sampler: EpochSampler, epoch: int, device: torch.device | str = "cpu",
                 pin_memory: bool = False, start_step: int = 0, depth: int = 2) -> None:
        if len(arrays) != sampler.n:
            raise DataError(f"the sampler is for {sampler.n} rows but the split has {len(arrays)}; rebuild the sampler")
        self.device = torch.device(device)
        self.pin_memory = pin_memory and self.device.type == "cuda"
        self._steps = sampler.steps_per_epoch - start_step
        indices = sampler.batches(epoch, start_step)  # validates start_step now, not in the thread
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._staged: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._thread = threading.Thread(  # holds no reference to self, so an abandoned Prefetcher is collected
            target=_produce, args=(arrays, indices, self._queue, self._stop, self.pin_memory), daemon=True
        )
        self._thread.start()

    def __len__(self) -> int:
        return self._steps

    def _next_cpu(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        item = self._queue.get()
        if item is _DONE:
            return None
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def _stage(self) -> None:
        """Fetch the next CPU batch and start its (asynchronous) copy to the device."""
        cpu = self._next_cpu()
        if cpu is None:
            self._staged = None
            return
        x, y = cpu
        if self._stream is None:
            self._staged = (x.to(self.device), y.to(self.device) if y is not None else None)
            return
        with torch.cuda.stream(self._stream):
            self._staged = (x.to(self.device, non_blocking=True),
                            y.to(self.device, non_blocking=True) if y is not None else None)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        if self._thread.ident is None or self._stop.is_set():
            raise RuntimeError("this Prefetcher was closed; create a new one for the next epoch")
        try:
            self._stage()
            while self._staged is not None:
                x, y = self._staged
                if self._stream is not None:
                    current = torch.cuda.current_stream(self.device)
                    current.wait_stream(self._stream)
                    x.record_stream(current)
                    if y is not None:
                        y.record_stream(current)
                self._stage()  # overlap the next copy with the caller's work on (x, y)
                yield x, y
        finally:  # also runs when the caller breaks out of the loop
            self.close()

    def close(self) -> None:
        """Stop the loading thread (idempotent)."""
        self._stop.set()
        self._staged = None

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
