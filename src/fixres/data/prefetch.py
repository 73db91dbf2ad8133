"""Running the last step of batch preparation in a background thread, ahead of the consumer.

The device decoder of the fast pipeline decodes and resamples whole batches on the GPU;
:class:`Prefetched` does that in a thread of its own, on a CUDA stream of its own, a few
batches ahead of the training step, so the GPU work of the data overlaps the model's and
the host-side work (launching kernels, nvJPEG's parsing) overlaps the training loop's.
The consumer's stream waits for each batch's event before using it, and the batch's
tensors are marked as used by that stream, so the caching allocator never hands their
memory back while the consumer still reads it.
"""
from __future__ import annotations

import contextlib
import queue
import threading
from typing import Callable, NamedTuple

import torch
from torch.utils.data import DataLoader


class _Failure(NamedTuple):
    error: BaseException


_END = object()


class Prefetched:
    """Iterates ``finish(raw)`` over ``loader`` in a background thread, ``depth`` batches
    ahead; on CUDA the work runs on a side stream and the consumer's stream waits for it."""

    def __init__(self, loader: DataLoader, finish: Callable, device: torch.device, depth: int = 2,
                 convert: Callable = lambda b: b):
        self.loader, self.finish, self.device, self.depth, self.convert = loader, finish, device, depth, convert
        self._active: tuple[threading.Thread, threading.Event] | None = None

    @property
    def stats(self):
        """The finisher's counters (:class:`~fixres.data.fast.DecodeStats`)."""
        return self.finish.stats

    def __len__(self) -> int:
        return len(self.loader)

    def stop(self) -> None:
        """Stop the background thread of the current pass, if any (the next ``iter()`` starts another)."""
        if self._active is not None:
            thread, stop = self._active
            stop.set()
            thread.join()
            self._active = None

    def __iter__(self):
        self.stop()
        stop, q = threading.Event(), queue.Queue(maxsize=max(1, self.depth))
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        # the CUDA device is per thread: the producer must use the one the caller means, and
        # set_device needs an index ("cuda" alone is refused by torch <= 2.11)
        index = (self.device.index if self.device.index is not None else torch.cuda.current_device()) if cuda else None

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce():
            try:
                if cuda:
                    torch.cuda.set_device(index)
                with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
                    for raw in self.loader:
                        out = self.convert(self.finish(raw))
                        event = None
                        if cuda:
                            event = torch.cuda.Event()
                            event.record(stream)
                        if not put((out, event)):
                            return
                put(_END)
            except BaseException as e:    # noqa: BLE001 -- handed to the consumer, raised there
                put(_Failure(e))

        thread = threading.Thread(target=produce, name="fixres-prefetch", daemon=True)
        thread.start()
        self._active = (thread, stop)
        try:
            while True:
                item = q.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                out, event = item
                if event is not None:
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(event)
                    for t in _device_tensors(out):
                        t.record_stream(current)
                yield out
        finally:
            stop.set()
            thread.join(timeout=10)      # it stops at its next hand-over; never left running at exit
            if self._active is not None and self._active[0] is thread:
                self._active = None


def _device_tensors(batch) -> list[torch.Tensor]:
    images = batch.images
    if images is None:
        return []
    return list(images) if isinstance(images, tuple) else [images]
