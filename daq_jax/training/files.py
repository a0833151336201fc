"""Writing a run's files so that a full disk costs one line and never an earlier record.

Every file the project writes into a workdir (or an analysis folder) is either replaced whole
(`replace`: written beside its target, then renamed over it) or appended by whole records
(`metrics.MetricWriter`, which cuts a failed record off again). A write that fails raises
`WriteError`: an `OSError` whose message is one line naming the file and the cause in words
(`cause`), with no partial file left behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re

# The errno values of a disk that takes no more data, as a user would say them. TensorStore
# (Orbax's writer) gives them only inside its message: "... [os_error_code='28']".
_CAUSES = {
  errno.ENOSPC: "no space left on the device",
  errno.EROFS: "the file system is read-only",
  errno.EDQUOT: "the disk quota is exceeded",
  errno.EACCES: "permission denied",
  errno.EFBIG: "the file is larger than allowed",
}
_TEXTS = {
  "No space left on device": errno.ENOSPC,
  "Read-only file system": errno.EROFS,
  "Disk quota exceeded": errno.EDQUOT,
  "Permission denied": errno.EACCES,
}


class WriteError(OSError):
  """A file could not be written; the message is one line naming it and the cause."""

  def __init__(self, message: str, code: int | None = None):
    super().__init__(message)
    self.errno = code  # str(self) stays the message alone, without "[Errno N]"


def write_failed(path: str, e: BaseException, then: str = "") -> WriteError:
  """The error for a failed write of `path`: "writing PATH failed: <cause>" and `then`."""
  return WriteError(f"writing {path} failed: {cause(e)}{then}", error_code(e))


def error_code(e: BaseException) -> int | None:
  """The errno behind `e`: its own, or the one a TensorStore or Orbax message names."""
  if isinstance(e, OSError) and e.errno:
    return e.errno
  text = str(e)
  code = re.search(r"os_error_code='?(\d+)", text)
  if code:
    return int(code.group(1))
  for words, number in _TEXTS.items():
    if words in text:
      return number
  return None


def cause(e: BaseException) -> str:
  """Why a write failed, in words: "no space left on the device", or the error's first line."""
  code = error_code(e)
  if code in _CAUSES:
    return _CAUSES[code]
  lines = str(e).strip().splitlines() or [type(e).__name__]
  return lines[0][:300]


@contextlib.contextmanager
def replace(path: str, mode: str = "w"):
  """Yields a file open beside `path` that replaces `path` when the block ends; if writing
  fails, `path` keeps its old content, the temporary file is removed, and `WriteError` names
  `path`. Only the process that writes should enter it."""
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    if isinstance(e, WriteError):
      raise
    raise write_failed(path, e) from None


def write_json(path: str, value) -> None:
  """Writes `value` as JSON in place of `path`, whole or not at all (`replace`)."""
  with replace(path) as f:
    json.dump(value, f, indent=2, sort_keys=True)


def save_figure(fig, path: str, **kwargs) -> str:
  """Saves a matplotlib figure as PNG in place of `path`, whole or not at all."""
  with replace(path, "wb") as f:
    fig.savefig(f, format="png", **kwargs)
  return path
