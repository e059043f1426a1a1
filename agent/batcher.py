"""Dynamic batching across clients: many callers' frames, one detector call per batch.

`submit(key, item)` never blocks: it queues the item and returns a `Future`. One worker thread
forms batches in arrival order and calls `run_batch(items)` (the detector: decode, detect,
track), then resolves each item's future with its own result.

A batch goes as soon as it is full (`max_batch`) or when its oldest item has waited
`window_s`; while the worker is busy, items wait, and the next batch goes the moment it is free.

Keys are streams. Each key may have at most `max_waiting_per_key` items waiting (not yet in a
batch); one more drops that key's OLDEST waiting item: its future fails with `FrameDropped`, and
the key's drop count goes up. A fast client thus loses its own stale frames and never delays
another client's, which wait behind at most `max_waiting_per_key` items of each other key.
Within a key, results come in submission order (batches are in arrival order, and a batch is
processed in its order).
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .errors import AgentError, ConfigError

logger = logging.getLogger(__name__)


class FrameDropped(AgentError):
    """The item waited while newer items of its key arrived and the worker fell behind."""


class BatcherStopped(AgentError):
    """The batcher stopped before the item was processed."""


@dataclass(frozen=True)
class BatchConfig:
    max_batch: int = 8
    """Items per `run_batch` call at most. Higher: better detector throughput where batches are
    cheaper per frame (GPUs far more than CPUs), at more latency per frame in a full batch."""
    window_s: float = 0.005
    """How long the oldest waiting item may wait for others to join its batch. Higher: fuller
    batches when clients are few or slow, each frame pays up to this much more latency. 0: a
    batch takes what is waiting when the worker is free."""
    max_waiting_per_key: int = 2
    """Waiting items per key before the oldest is dropped. Higher: a bursty stream loses fewer
    frames, a stream that is steadily too fast has each frame wait longer."""

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.window_s < 0:
            raise ConfigError(f"batch window must be >= 0, got {self.window_s}")
        if self.max_waiting_per_key < 1:
            raise ConfigError(f"max_waiting_per_key must be >= 1, got {self.max_waiting_per_key}")


@dataclass(eq=False)
class _Entry:
    key: Hashable
    item: Any
    arrived: float
    future: Future = field(default_factory=Future)
    dropped: bool = False


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    dropped: int = 0
    sizes: collections.Counter = field(default_factory=collections.Counter)


class DynamicBatcher:
    """`start()` spawns the worker; `stop()` fails what still waits with `BatcherStopped`."""

    def __init__(self, run_batch: Callable[[list[Any]], Sequence[Any]], config: BatchConfig | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.run_batch = run_batch
        self.config = config or BatchConfig()
        self.clock = clock
        self.stats = BatchStats()
        self.dropped: collections.Counter = collections.Counter()
        """Dropped items per key, since start (keys are kept until `forget(key)`)."""
        self._cond = threading.Condition()
        self._order: collections.deque[_Entry] = collections.deque()  # arrival order, dropped ones skipped
        self._waiting: dict[Hashable, collections.deque[_Entry]] = {}
        self._count = 0  # entries waiting, dropped ones excluded
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ---- callers (any thread) ----

    def submit(self, key: Hashable, item: Any) -> Future:
        """Queue `item` for `key`; never blocks. The future's result is `run_batch`'s for the item."""
        entry = _Entry(key, item, self.clock())
        with self._cond:
            if self._stopping:
                entry.future.set_exception(BatcherStopped("the inference service is stopping"))
                return entry.future
            queue = self._waiting.setdefault(key, collections.deque())
            dropped = None
            if len(queue) >= self.config.max_waiting_per_key:
                dropped = queue.popleft()
                dropped.dropped = True
                self._count -= 1
                self.dropped[key] += 1
                self.stats.dropped += 1
            queue.append(entry)
            self._order.append(entry)
            self._count += 1
            self._cond.notify()
        if dropped is not None:
            dropped.future.set_exception(FrameDropped(
                f"dropped: {self.config.max_waiting_per_key} newer frame(s) of this stream were waiting "
                "while the detector was busy"))
        return entry.future

    def waiting(self, key: Hashable | None = None) -> int:
        with self._cond:
            return self._count if key is None else len(self._waiting.get(key, ()))

    def forget(self, key: Hashable) -> int:
        """Drop the key's drop count (its stream ended); returns it."""
        with self._cond:
            return self.dropped.pop(key, 0)

    # ---- lifecycle ----

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="inference-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in progress, fail what still waits."""
        with self._cond:
            self._stopping = True
            left = [e for e in self._order if not e.dropped]
            self._order.clear()
            self._waiting.clear()
            self._count = 0
            self._cond.notify_all()
        for entry in left:
            entry.future.set_exception(BatcherStopped("the inference service is stopping"))
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- the worker ----

    def _next_batch(self) -> list[_Entry] | None:
        """Wait for a batch: full, or its oldest item waited the window. None when stopping."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                while self._order and self._order[0].dropped:
                    self._order.popleft()
                if self._count:
                    wait = self._order[0].arrived + self.config.window_s - self.clock()
                    if self._count >= self.config.max_batch or wait <= 0:
                        return self._take()
                    self._cond.wait(wait)
                else:
                    self._cond.wait(0.5)

    def _take(self) -> list[_Entry]:
        batch: list[_Entry] = []
        while self._order and len(batch) < self.config.max_batch:
            entry = self._order.popleft()
            if entry.dropped:
                continue
            queue = self._waiting[entry.key]
            queue.popleft()  # the key's oldest waiting entry is this one (both deques keep arrival order)
            if not queue:
                del self._waiting[entry.key]
            batch.append(entry)
        self._count -= len(batch)
        return batch

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self.stats.batches += 1
            self.stats.items += len(batch)
            self.stats.sizes[len(batch)] += 1
            try:
                results = self.run_batch([e.item for e in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
            except Exception as err:
                logger.exception("inference batch of %d failed", len(batch))
                for entry in batch:
                    entry.future.set_exception(err)
                continue
            for entry, result in zip(batch, results):
                entry.future.set_result(result)
