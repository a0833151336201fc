"""What a run does to its workdir when things go wrong, each case first reproducing a failure
that was seen: a resume of another run (other classes, other data) is refused with nothing
written; one process at a time, a dead holder's lock taken over; a damaged newest checkpoint is
moved aside and the run goes on from the step before it, bit-identically; `restore_step`;
one record per step after a resume; a start that saved nothing is not a run. Signals are tested
on `train.py` itself in test_cli.py."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from daq_jax import data
from daq_jax.evaluate import main as evaluate_main
from daq_jax.quant import gradient
from daq_jax.training import WorkdirError, modeling, optim, steps, train_and_evaluate, workdir
from daq_jax.training.checkpoint import ASIDE, Checkpoints
from daq_jax.training.config import from_dict
from tests.training.common import tiny
from tests.training.events import read_run_scalars


def _folder(root, classes, per_class=12, size=8):
  rng = np.random.default_rng(0)
  for c in classes:
    os.makedirs(os.path.join(root, "train", c), exist_ok=True)
    for i in range(per_class):
      pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(os.path.join(root, "train", c, f"{i}.png"))
  return str(root)


def _folder_run(data_dir, **overrides):
  return tiny(
    **{
      "data.name": "image_folder",
      "data.dir": data_dir,
      "data.cache_dir": "",
      "data.val_fraction": 0.25,
      "data.eval_split": "val",
      "quant.method": "fp32",
      "batch_size": 8,
      "optim.base_batch_size": 8,
      "num_steps": 2,
      "checkpoint_every_steps": 1,
      **overrides,
    }
  )


def _snapshot(path):
  """{file: (bytes, mtime)} of everything under `path` (the lock file: its bytes only)."""
  out = {}
  for root, _, names in os.walk(path):
    for name in names:
      with open(os.path.join(root, name), "rb") as f:
        mtime = os.stat(f.name).st_mtime_ns if name != workdir.LOCK_FILE else None
        out[os.path.relpath(f.name, path)] = (f.read(), mtime)
  return out


def _records(path):
  """The train and eval records of metrics.jsonl (not the quantizer statistics)."""
  with open(os.path.join(path, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return [r for r in records if not any(k.startswith("quant/") for k in r)]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("finished"))
  return path, train_and_evaluate(tiny(), path)


@pytest.fixture
def copied_run(finished_run, tmp_path):
  path, summary = finished_run
  copy = str(tmp_path / "copy")
  shutil.copytree(path, copy)
  return copy, summary


def test_a_resume_of_other_data_is_refused_and_changes_nothing(tmp_path):
  run = str(tmp_path / "run")
  abc = _folder(tmp_path / "abc", "abc")
  train_and_evaluate(_folder_run(abc), run)
  before = _snapshot(run)
  abcd = _folder(tmp_path / "abcd", "abcd")
  with pytest.raises(WorkdirError, match=r"data dir=.*data class_names=\['a', 'b', 'c'\], not"):
    train_and_evaluate(_folder_run(abcd), run)
  xyz = _folder(tmp_path / "xyz", "xyz")
  with pytest.raises(WorkdirError, match=r"class_names=\['a', 'b', 'c'\], not \['x', 'y', 'z'\]"):
    train_and_evaluate(_folder_run(xyz), run)
  with pytest.raises(WorkdirError, match=r"seed=0, not 1.*use another --workdir"):
    train_and_evaluate(_folder_run(abc, seed=1), run)
  assert _snapshot(run) == before  # no file written
  assert evaluate_main(["--workdir", run]) == 0  # and the run still evaluates


def test_a_workdir_without_a_checkpoint_is_started_afresh(tmp_path):
  run = str(tmp_path / "run")
  with pytest.raises(ValueError, match="batch_size=5000 is larger than the 1437"):
    train_and_evaluate(tiny(batch_size=5000), run)
  os.makedirs(os.path.join(run, "tensorboard"))
  with open(os.path.join(run, "metrics.jsonl"), "w") as f:
    f.write('{"step": 40, "train/loss": 9.0}\n{"step": 4')  # a killed start's partial line
  with open(os.path.join(run, "config.json"), "w") as f:
    json.dump({"seed": 7}, f)
  summary = train_and_evaluate(tiny(num_steps=2), run)
  assert summary["step"] == 2
  assert [r["step"] for r in _records(run)] == [2, 2]  # the train and the test record


def test_one_process_per_workdir_and_a_dead_holders_lock_is_taken_over(tmp_path, capsys):
  run = str(tmp_path / "run")
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import sys, time; from daq_jax.training import workdir as w; "
      f"w.RunLock(w.prepare({run!r})); print('locked', flush=True); time.sleep(10**6)",
    ],
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert holder.stdout.readline().strip() == "locked"
    host = os.uname().nodename
    with pytest.raises(WorkdirError, match=rf"in use by pid {holder.pid} on {host} \(since "):
      train_and_evaluate(tiny(num_steps=1), run)
    assert os.listdir(run) == [workdir.LOCK_FILE]  # refused before writing anything
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
  train_and_evaluate(tiny(num_steps=1), run)
  assert f"took over the workdir lock left by pid {holder.pid}" in capsys.readouterr().err
  with open(os.path.join(run, workdir.LOCK_FILE)) as f:
    assert f.read() == ""  # released by a run that ended


@pytest.mark.parametrize(
  ("damage", "message"),
  [
    ("truncate", r"file default/ocdbt.process_0/d/\w+ has 10 bytes, not the \d+ written"),
    ("garbage", r"file default/ocdbt.process_0/d/\w+ is not the file written"),
    ("metadata", r"file default/_METADATA is missing"),
  ],
)
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_run_goes_on(
  copied_run, capsys, damage, message
):
  run, summary = copied_run
  data_dir = os.path.join(run, "checkpoints", "6", "default", "ocdbt.process_0", "d")
  victim = os.path.join(data_dir, sorted(os.listdir(data_dir))[0])
  if damage == "truncate":
    os.truncate(victim, 10)
  elif damage == "garbage":
    size = os.path.getsize(victim)
    with open(victim, "wb") as f:
      f.write(np.random.default_rng(0).bytes(size))
  else:
    os.remove(os.path.join(run, "checkpoints", "6", "default", "_METADATA"))
  capsys.readouterr()
  assert evaluate_main(["--workdir", run]) == 0  # evaluate skips it, and leaves it in place
  out = capsys.readouterr()
  assert "step 3 on test" in out.out and "left in place" in out.err
  assert train_and_evaluate(tiny(), run) == summary  # steps 4-6 again, bit-identical
  err = capsys.readouterr().err
  moved = rf"checkpoint step 6 is damaged: {message}.*; moved to .*{ASIDE}/6-damaged-"
  assert re.search(moved, err)
  assert "resumed from" in err and err.count("\n") < 12  # lines, not a traceback
  (aside,) = os.listdir(os.path.join(run, ASIDE))
  assert aside.startswith("6-damaged-")
  assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["3", "6"]


def test_a_chosen_step_supersedes_the_later_ones_and_the_record_keeps_one_timeline(copied_run):
  run, summary = copied_run
  assert train_and_evaluate(tiny(), run, restore_step=3) == summary
  assert [a.split("-")[:2] for a in os.listdir(os.path.join(run, ASIDE))] == [["6", "superseded"]]
  keys = [(r["step"], next(k for k in r if "/" in k).split("/")[0]) for r in _records(run)]
  assert keys == [(2, "train"), (4, "train"), (6, "train"), (6, "test")]
  scalars = read_run_scalars(os.path.join(run, "tensorboard"))
  assert [s for s, tag, _ in scalars if tag == "train/loss"] == [2, 4, 6]
  assert [s for s, tag, _ in scalars if tag == "test/top1"] == [6]
  with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 5 .* there are \[3, 6\]"):
    train_and_evaluate(tiny(), run, restore_step=5)


def test_a_finished_run_started_again_does_nothing(copied_run, capsys, monkeypatch):
  run, summary = copied_run
  before = _records(run)
  monkeypatch.setattr(steps, "compile_steps", None)  # not even compiled
  assert train_and_evaluate(tiny(), run) == summary
  assert "is complete at step 6" in capsys.readouterr().err
  assert _records(run) == before


def test_a_checkpoint_of_another_state_layout_is_refused_in_one_line(copied_run):
  run, _ = copied_run
  cfg = from_dict(tiny())
  _, _, info = data.load(cfg.data)
  model = modeling.create_model(cfg, info.num_classes, info.image_shape)
  tx, _ = optim.build_optimizer(cfg, 1, 1)
  ckpts = Checkpoints(run)
  state = ckpts.restore(steps.init_train_state(model, tx, info, cfg.seed), 3)
  old = state.replace(
    quant_state=jax.tree.map(
      lambda layer: {**layer, **{f"stat_{k}": v for k, v in gradient.init_statistics().items()}},
      state.quant_state,
      is_leaf=lambda node: isinstance(node, dict) and "wgrad_clip" in node,
    )
  )
  ckpts.close()
  shutil.rmtree(os.path.join(run, "checkpoints", "6"))
  shutil.rmtree(os.path.join(run, "checkpoints", "3"))
  ckpts = Checkpoints(run)  # opened anew: Orbax lists the steps it found when opened
  ckpts.save(3, old)  # as the code wrote it while the statistics were part of the state
  ckpts.close()
  assert os.listdir(os.path.join(run, "checkpoints")) == ["3"]
  with pytest.raises(ValueError, match=r"checkpoints/3 does not match this model and config "):
    train_and_evaluate(tiny(), run)


def test_the_workdir_must_be_a_writable_directory(tmp_path):
  a_file = tmp_path / "file"
  a_file.write_text("")
  with pytest.raises(WorkdirError, match=r"workdir .*file is a file, not a directory"):
    train_and_evaluate(tiny(), str(a_file))
  with pytest.raises(WorkdirError, match=r"workdir .*file/run cannot be created: Not a directory"):
    train_and_evaluate(tiny(), str(a_file / "run"))
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "checkpoints").write_text("")
  with pytest.raises(WorkdirError, match=r"run/checkpoints is a file; the run needs a directory"):
    train_and_evaluate(tiny(), str(tmp_path / "run"))


def test_evaluate_prints_its_result_where_it_cannot_write_it(finished_run, monkeypatch, capsys):
  run, summary = finished_run

  def read_only(path, value):
    raise PermissionError(13, "Permission denied", path)

  monkeypatch.setattr("daq_jax.training.files.write_json", read_only)
  assert evaluate_main(["--workdir", run]) == 0
  out = capsys.readouterr()
  assert f"top-1 {summary['eval_top1']:.4f}" in out.out
  assert "not written to" in out.err and "permission denied" in out.err
