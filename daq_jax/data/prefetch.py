"""`prefetch`: a thread that prepares batches ahead of the training step."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator


def prefetch(batches: Iterator, size: int, transform: Callable = lambda b: b) -> Iterator:
  """Runs `transform(next(batches))` `size` batches ahead in a thread; errors surface here."""
  if size <= 0:
    yield from map(transform, batches)
    return
  buffer: queue.Queue = queue.Queue(maxsize=size)
  done = object()
  stop = threading.Event()

  def produce():
    try:
      for batch in batches:
        if stop.is_set():
          return
        buffer.put(transform(batch))
      buffer.put(done)
    except BaseException as e:
      buffer.put(e)

  thread = threading.Thread(target=produce, daemon=True)
  thread.start()
  try:
    while True:
      item = buffer.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    while not buffer.empty():
      buffer.get_nowait()
