"""A full disk costs one line and no earlier record (daq_jax.training.files).

Strategy: inject the failure where each file is written (the `os.write` of a metrics record,
Orbax's save, a JSON or figure replace) so the tests do not depend on the machine's free
space; check the one-line message (file or step, the cause, the last intact checkpoint, what
to do), that nothing partial is left and that the same run then resumes to its end. One test
fills a real 900 KB tmpfs with `train.py`, where mounting one is allowed (root).
"""

import errno
import io
import json
import os
import shutil
import subprocess
import sys

import orbax.checkpoint as ocp
import pytest

from daq_jax.training import checkpoint, files, metrics, train_and_evaluate
from tests.training.common import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TENSORSTORE_FULL = (
  'RESOURCE_EXHAUSTED: Error writing "params.conv1.kernel/0" in OCDBT database at local file '
  '"/w/checkpoints/6.orbax-checkpoint-tmp/default.orbax-checkpoint-tmp/ocdbt.process_0/": '
  "Failed to write 112097 bytes to file 22: No space left on device [os_error_code='28']"
)


@pytest.mark.parametrize(
  "error, words",
  [
    (OSError(errno.ENOSPC, "No space left on device"), "no space left on the device"),
    (OSError(errno.EROFS, "Read-only file system"), "the file system is read-only"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "the disk quota is exceeded"),
    (ValueError(TENSORSTORE_FULL), "no space left on the device"),
    (ValueError("INTERNAL: something else\nsecond line"), "INTERNAL: something else"),
  ],
)
def test_the_cause_of_a_failed_write_is_said_in_words(error, words):
  assert files.cause(error) == words


def _records(path):
  with open(path) as f:
    return [json.loads(line) for line in f]  # a partial line would not parse


def _leftovers(directory):
  return sorted(n for n in os.listdir(directory) if ".tmp" in n)


def test_a_failed_replace_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "summary.json"
  files.write_json(str(path), {"step": 1})
  with pytest.raises(files.WriteError) as e, files.replace(str(path)) as f:
    f.write('{"step": 2')
    raise OSError(errno.ENOSPC, "No space left on device")
  assert str(e.value) == f"writing {path} failed: no space left on the device"
  assert e.value.errno == errno.ENOSPC
  assert json.loads(path.read_text()) == {"step": 1}
  assert _leftovers(tmp_path) == []


class _FullFigure:
  """A figure whose PNG stops half-way, as on a full disk."""

  def savefig(self, f, **kwargs):
    f.write(b"\x89PNG half")
    f.flush()
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_figure_that_cannot_be_written_keeps_the_earlier_one(tmp_path):
  path = tmp_path / "errors.png"
  path.write_bytes(b"the earlier figure")
  with pytest.raises(files.WriteError, match=r"errors\.png failed: no space left on the device"):
    files.save_figure(_FullFigure(), str(path))
  assert path.read_bytes() == b"the earlier figure"
  assert _leftovers(tmp_path) == []


def _disk_fills_at(monkeypatch, name: str, marker: bytes):
  """From the first write to a file called `name` that holds `marker` on, os.write puts half
  of what it is given on disk and then fails with ENOSPC."""
  real = os.write
  full = []

  def write(fd, data):
    path = os.readlink(f"/proc/self/fd/{fd}")
    if os.path.basename(path) == name and (full or marker in bytes(data)):
      full.append(path)
      real(fd, bytes(data)[: len(data) // 2])
      raise OSError(errno.ENOSPC, "No space left on device")
    return real(fd, data)

  monkeypatch.setattr(os, "write", write)
  return full


def test_a_record_that_does_not_fit_is_cut_off_and_the_file_stays_whole(tmp_path, monkeypatch):
  writer = metrics.MetricWriter(str(tmp_path), 10, stream=io.StringIO())
  writer.write(1, {"loss": 1.0})
  full = _disk_fills_at(monkeypatch, "metrics.jsonl", b'"step": 2,')
  with pytest.raises(files.WriteError) as e:
    writer.write(2, {"loss": 0.5})
  assert full
  assert str(e.value) == f"writing {tmp_path / 'metrics.jsonl'} failed: no space left on the device"
  monkeypatch.undo()
  writer.write(3, {"loss": 0.25})  # a failed file takes nothing more
  writer.close()
  assert [r["step"] for r in _records(tmp_path / "metrics.jsonl")] == [1]


def _resumes_to_the_end(workdir):
  summary = train_and_evaluate(tiny(), workdir)
  assert summary["step"] == 6
  steps = [r["step"] for r in _records(os.path.join(workdir, "metrics.jsonl"))]
  assert steps == sorted(steps) and steps[-1] == 6


def test_a_full_disk_while_writing_metrics_stops_the_run_in_one_line(tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  _disk_fills_at(monkeypatch, "metrics.jsonl", b'"step": 4,')
  with pytest.raises(files.WriteError) as e:
    train_and_evaluate(tiny(), workdir)
  assert str(e.value) == (
    f"writing {workdir}/metrics.jsonl failed: no space left on the device. The last intact "
    "checkpoint is step 3: free space and run the same command to resume from it"
  )
  assert all(r["step"] <= 3 for r in _records(os.path.join(workdir, "metrics.jsonl")))
  monkeypatch.undo()
  _resumes_to_the_end(workdir)


@pytest.mark.parametrize(
  "error, words",
  [
    (ValueError(TENSORSTORE_FULL), "no space left on the device"),
    (OSError(errno.EROFS, "Read-only file system"), "the file system is read-only"),
  ],
)
def test_a_checkpoint_that_cannot_be_saved_is_one_line_and_leaves_nothing(
  tmp_path, monkeypatch, error, words
):
  workdir = str(tmp_path / "run")
  real = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step == 6:  # what Orbax leaves when TensorStore fails part-way
      partial = os.path.join(workdir, "checkpoints", "6.orbax-checkpoint-tmp", "default")
      os.makedirs(partial)
      open(os.path.join(partial, "part"), "w").close()
      raise error
    return real(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  with pytest.raises(checkpoint.SaveError) as e:
    train_and_evaluate(tiny(), workdir)
  assert str(e.value) == (
    f"checkpoint step 6 could not be saved in {workdir}/checkpoints: {words}. The last intact "
    "checkpoint is step 3: free space and run the same command to resume from it"
  )
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3"]
  monkeypatch.undo()
  _resumes_to_the_end(workdir)


def test_a_step_whose_manifest_cannot_be_written_is_removed(tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  real = checkpoint.write_manifest

  def write_manifest(step_dir):
    if step_dir.endswith("/6"):
      raise OSError(errno.ENOSPC, "No space left on device")
    real(step_dir)

  monkeypatch.setattr(checkpoint, "write_manifest", write_manifest)
  with pytest.raises(checkpoint.SaveError, match=r"step 6 could not be saved .*: no space left"):
    train_and_evaluate(tiny(), workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3"]


def _mount_tmpfs(path, size: str) -> str | None:
  """Mounts a tmpfs of `size` at `path`; None, or why it cannot be."""
  if os.geteuid() != 0 or shutil.which("mount") is None:
    return "mounting a tmpfs needs root"
  path.mkdir()
  done = subprocess.run(
    ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
    capture_output=True,
    text=True,
  )
  return None if done.returncode == 0 else f"mount -t tmpfs failed: {done.stderr.strip()}"


@pytest.mark.slow
def test_train_py_on_a_full_tmpfs_says_one_line_and_resumes_elsewhere(tmp_path):
  disk = tmp_path / "disk"
  why = _mount_tmpfs(disk, "900k")
  if why:
    pytest.skip(why)
  try:
    args = [
      sys.executable,
      "train.py",
      f"--workdir={disk / 'run'}",
      "--config.num_steps=60",
      "--config.checkpoint_every_steps=10",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    failed = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert failed.returncode == 1
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, failed.stderr
    assert "no space left on the device" in errors[0]
    assert "free space and run the same command" in errors[0]
    assert "Traceback" not in failed.stderr and "RESOURCE_EXHAUSTED" not in failed.stderr
    assert not [n for n in os.listdir(disk / "run" / "checkpoints") if "tmp" in n]
    kept = shutil.copytree(disk / "run", tmp_path / "run")
  finally:
    subprocess.run(["umount", str(disk)], check=False)
  args[2] = f"--workdir={kept}"
  done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr
  assert "resumed from" in done.stderr
  assert json.loads((kept / "summary.json").read_text())["step"] == 60
