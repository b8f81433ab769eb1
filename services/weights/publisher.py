"""Publication off the learner's critical path.

The learner hands over each version's weights and goes on training; a worker thread
snapshots, hashes and publishes them. Only the copy of the weights is on the learner's
path: on CUDA an asynchronous device → pinned-host copy, queued on the stream after the
optimiser step that made the weights and before the next step that changes them, so the
learner does not even wait for it.

Lifecycle::

    learner thread                                   worker thread
    submit(v, state_dict)
      take a free host buffer (both busy: wait;        loop: take (v, buffer, event)
        that wait is the learner's blocked time)              event.synchronize()
      copy the tensors into it (CUDA: async,                  server.publish(v, buffer)
        an event marks the copy's end)                          (Snapshot.build copies the
      queue (v, buffer, event) ─────────────────────►            bytes: the buffer is free)
    returns                                                   on_published(v, lag)
    flush(): every submitted version is published (or the worker's error is raised)
    close(): flush, then the worker ends

Two buffers: the worker publishes one version while the learner's next copy fills the
other. Versions are published in submission order; the server refuses a number that is
not above the last, as before.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping

import torch

from services.weights.server import WeightServer

log = logging.getLogger(__name__)
BUFFERS = 2


class _HostBuffer:
    """Host tensors shaped like one state dict (pinned when the source is on CUDA)."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        self.tensors = {name: torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=t.is_cuda)
                        for name, t in state_dict.items()}

    def fits(self, state_dict: Mapping[str, torch.Tensor]) -> bool:
        return state_dict.keys() == self.tensors.keys() and all(
            t.shape == self.tensors[n].shape and t.dtype == self.tensors[n].dtype for n, t in state_dict.items())

    def fill(self, state_dict: Mapping[str, torch.Tensor]) -> torch.cuda.Event | None:
        """Copy the weights in; on CUDA the copies are asynchronous and the returned event
        marks their end on the current stream."""
        on_cuda = False
        for name, t in state_dict.items():
            self.tensors[name].copy_(t.detach(), non_blocking=t.is_cuda)
            on_cuda |= t.is_cuda
        if not on_cuda:
            return None
        event = torch.cuda.Event()
        event.record()
        return event


class AsyncPublisher:
    def __init__(self, server: WeightServer, *, on_published: Callable[[int, float], None] | None = None) -> None:
        self.server = server
        self._on_published = on_published
        self._free: queue.Queue[_HostBuffer | None] = queue.Queue()
        self._allocated = 0
        self._work: queue.Queue[tuple[int, _HostBuffer, torch.cuda.Event | None, float] | None] = queue.Queue()
        self._pending = 0
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._worker = threading.Thread(target=self._run, name="weights-publisher", daemon=True)
        self._worker.start()

    def submit(self, version: int, state_dict: Mapping[str, torch.Tensor]) -> float:
        """Queue ``version`` for publication; returns the seconds the caller was blocked."""
        self._raise_error()
        started = time.perf_counter()
        buffer = self._take_buffer(state_dict)
        event = buffer.fill(state_dict)
        with self._cond:
            self._pending += 1
        self._work.put((version, buffer, event, started))
        return time.perf_counter() - started

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every submitted version is published."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._pending == 0 or self._error is not None, timeout=timeout_s):
                raise TimeoutError(f"{self._pending} weight versions still unpublished after {timeout_s}s")
        self._raise_error()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._work.put(None)
            self._worker.join()

    def _take_buffer(self, state_dict: Mapping[str, torch.Tensor]) -> _HostBuffer:
        if not self._allocated:  # all at the first version (pinning memory is slow): none later
            self._allocated = BUFFERS
            for _ in range(BUFFERS - 1):
                self._free.put(_HostBuffer(state_dict))
            return _HostBuffer(state_dict)
        buffer = self._free.get()
        if buffer is None:  # the worker failed
            self._raise_error()
        return buffer if buffer.fits(state_dict) else _HostBuffer(state_dict)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise RuntimeError("weight publication failed") from self._error

    def _run(self) -> None:
        while (item := self._work.get()) is not None:
            version, buffer, event, submitted = item
            try:
                if event is not None:
                    event.synchronize()
                self.server.publish(version, buffer.tensors)
                lag = time.perf_counter() - submitted
                if self._on_published:
                    self._on_published(version, lag)
            except BaseException as err:  # reported to the learner at its next submit or flush
                log.exception("publishing version %d failed", version)
                self._error = err
                self._free.put(None)
            else:
                self._free.put(buffer)
            with self._cond:
                self._pending -= 1
                self._cond.notify_all()
