"""Items of an iterator produced ahead on a background thread, with a bounded queue.

Used where a producer releases the GIL while the consumer works too: Arrow
decoding the next piece of a Parquet file while the kernels reduce this one
(:mod:`streamnorm.sources.parquet`), pinning the next batch while the
device normalizes this one (:mod:`streamnorm.device`). Pure threading: the
callers bring their own per-item work (``prepare``) and per-thread set-up.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Prefetch"]


class Prefetch:
    """Iterate ``items`` on a thread ``depth`` ahead, each passed through ``prepare``.

    Memory stays bounded: the thread waits while ``depth`` items are ready.
    An exception of the iterator, of ``setup`` or of ``prepare`` is raised in
    the consumer's loop, as if the iterator ran there. :meth:`close` (or
    leaving the ``with`` block, on an error or Ctrl-C too) stops the thread;
    the iterator is closed (where it has ``close``) and dropped on that thread.

    Parameters
    ----------
    items : iterator
        What to produce.
    depth : int, default 2
        Items ready ahead of the consumer.
    prepare : callable, optional
        Applied to each item on the thread.
    setup : callable, optional
        Called once on the thread before the first item (thread-local settings).
    name : str
        The thread's name.

    Examples
    --------
    >>> with Prefetch(iter(range(5)), depth=1, prepare=lambda i: i * i) as squares:
    ...     list(squares)
    [0, 1, 4, 9, 16]
    """

    _END = object()
    POLL_S = 0.05  # how often a blocked thread looks whether it was stopped

    def __init__(self, items: Iterator[Any], depth: int = 2, prepare: Callable[[Any], Any] | None = None,
                 setup: Callable[[], None] | None = None, name: str = "streamnorm-prefetch") -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self._items: Iterator[Any] | None = items
        self._prepare = prepare
        self._setup = setup
        self._queue: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name=name, daemon=True)
        self._thread.start()

    def _put(self, entry: tuple[Any, BaseException | None]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=self.POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            if self._setup is not None:
                self._setup()
            for item in self._items:
                if not self._put((item if self._prepare is None else self._prepare(item), None)):
                    return
            self._put((self._END, None))
        except BaseException as exc:  # handed to the consumer, raised there
            self._put((self._END, exc))
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()
            self._items = None  # drop the source (file handles, DataLoader workers) here

    def __iter__(self) -> Iterator[Any]:
        while True:
            item, exc = self._queue.get()
            if exc is not None:
                raise exc
            if item is self._END:
                return
            yield item

    def close(self, timeout: float | None = None) -> None:
        """Stop the thread and wait for it: at most ``timeout`` seconds, or until it ends.

        The thread finishes at most the item it is producing.
        """
        self._stop.set()
        waited = 0.0
        while self._thread.is_alive() and (timeout is None or waited < timeout):
            try:
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=self.POLL_S)
            waited += self.POLL_S

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
