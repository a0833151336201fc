"""The command lines a user types, run as subprocesses: `python train.py` (2 steps of the
default config), misspelt and invalid config keys, SIGTERM and Ctrl-C (twice) in the middle of
a run, and the same run on 1 and 4 CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=4), which must agree within float
tolerance, quantization statistics included."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from daq_jax.quant.config import RECOMMENDED

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Largest relative differences, 4 devices vs 1, after 4 steps. Reductions (BN statistics,
# gradients, the clip statistics) are summed in another order; relative to |y| + 1e-6, so
# parameters near zero dominate the parameter figure.
SHARDED_RTOL = {"params": 1e-3, "batch_stats": 1e-5, "quant_state": 1e-5}


def _run(args, env=None, timeout=300):
  return subprocess.run(
    [sys.executable, *args],
    cwd=ROOT,
    env={**os.environ, **(env or {})},
    capture_output=True,
    text=True,
    timeout=timeout,
    check=False,
  )


def test_train_py_runs_the_default_config_end_to_end(tmp_path):
  workdir = str(tmp_path / "run")
  proc = _run(["train.py", f"--workdir={workdir}", "--config.num_steps=2"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"final: small_cnn {RECOMMENDED} step 2: test top-1" in proc.stderr
  assert {"config.json", "dataset.json", "metrics.jsonl", "summary.json", "checkpoints"} <= set(
    os.listdir(workdir)
  )
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["num_steps"] == 2
  # Started again, it finds the finished run and says so.
  again = _run(["train.py", f"--workdir={workdir}", "--config.num_steps=2"])
  assert again.returncode == 0 and "is complete at step 2" in again.stderr


@pytest.mark.slow  # two compilations of a 3-D CNN's steps: 50-110 s
def test_train_py_runs_the_video_default_config_and_reports_clip_and_video_top1(tmp_path):
  workdir = str(tmp_path / "run")
  args = ["train.py", "--config=configs/video_default.py", f"--workdir={workdir}"]
  proc = _run([*args, "--config.num_steps=2"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "1437 train / 360 test videos" in proc.stderr
  assert re.search(
    rf"final: c3d_small {RECOMMENDED} step 2: test clip top-1 [\d.]+, top-5 [\d.]+, video top-1 "
    r"[\d.]+ on 1080 clips of 360 videos",
    proc.stderr,
  ), proc.stderr[-2000:]
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  assert summary["eval_videos"] == 360 and 0 <= summary["eval_video_top1"] <= 1
  # The workdir evaluates as it trained.
  again = _run(["-m", "daq_jax.evaluate", f"--workdir={workdir}"])
  assert again.returncode == 0, again.stderr[-2000:]
  assert f"video top-1 {summary['eval_video_top1']:.4f} on 1080 clips of 360 videos" in again.stdout


@pytest.mark.slow  # the detector's steps compile for 40-90 s
def test_train_py_runs_the_detection_default_config_resumes_and_evaluates_map(tmp_path):
  workdir = str(tmp_path / "run")
  args = ["train.py", "--config=configs/detection_default.py", f"--workdir={workdir}"]
  short = ["--config.num_steps=4", "--config.checkpoint_every_steps=2"]
  proc = _run([*args, *short, "--config.num_steps=2"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "2048 train / 512 test images" in proc.stderr
  # More steps on the same workdir: it resumes from step 2 (the config allows a longer run).
  proc = _run([*args, *short])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resumed from" in proc.stderr and "checkpoints/2" in proc.stderr, proc.stderr[-2000:]
  assert re.search(
    r"final: retinanet_small daq_sr_rows step 4: test mAP [\d.]+, mAP@.5 [\d.]+ "
    r"\(COCO, pycocotools\) "
    r"on 512 images",
    proc.stderr,
  ), proc.stderr[-2000:]
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  assert 0 <= summary["eval_mAP"] <= 1 and summary["eval_examples"] == 512
  again = _run(["-m", "daq_jax.evaluate", f"--workdir={workdir}"])
  assert again.returncode == 0, again.stderr[-2000:]
  assert f"mAP {summary['eval_mAP']:.4f}, mAP@.5 {summary['eval_mAP50']:.4f}" in again.stdout
  # And on a COCO directory of the same classes (its val2017), as a user's data comes.
  from daq_jax.data import coco, shapes

  data_dir = tmp_path / "coco"
  coco.write_coco(shapes.shapes("test").take(range(10)), str(data_dir), "val")
  other = _run(["-m", "daq_jax.evaluate", f"--workdir={workdir}", f"--data_dir={data_dir}"])
  assert other.returncode == 0, other.stderr[-2000:]
  assert re.search(
    r"on \S+coco: mAP [\d.]+, mAP@.5 [\d.]+ \(COCO, pycocotools\) on 10 images", other.stdout
  )


DETECTION = "--config=configs/detection_default.py"


@pytest.mark.parametrize(
  ("flag", "message"),
  [
    (
      f"{DETECTION} --config.data.image_size=100",
      "config data.image_size=100 is not divisible by the largest stride 32 "
      "(detection.max_level=5)",
    ),
    (
      f"{DETECTION} --config.data.max_boxes=2",
      "the embedded shapes (train): image 10 has 5 boxes, more than config data.max_boxes=2",
    ),
  ],
)
def test_bad_detection_config_values_are_clear_errors(tmp_path, flag, message):
  proc = _run(["train.py", f"--workdir={tmp_path}", *flag.split()])
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert os.listdir(tmp_path) == [] or set(os.listdir(tmp_path)) <= {"run.lock"}


@pytest.mark.parametrize(
  ("flag", "message"),
  [
    ("--config.quant.mehtod=fp32", 'Did you mean "method" instead of "mehtod"?'),
    ("--config.quant.method=int4", "quant.method: method spec 'int4': unknown quantization"),
    (
      "--config.quant.method=daq(wgrad_rounding=stocastic)",
      "wgrad_rounding='stocastic' is not one of ('nearest', 'stochastic')",
    ),
    ("--config.quant.method=daq(clip=max)", "unknown quantization option(s) ['clip']"),
    ("--config.model.name=resnet21", "model.name='resnet21' is unknown"),
    ("--config.model.name=my_models.Net", "module 'my_models' does not import"),
    ("--config.model.name=json.JSONDecoder", "JSONDecoder is a type, not a flax.linen Module"),
    ("--config.quant.rules=stem", "quant.rules: 'stem' is not 'regex:method'"),
    ("--config.data.name=cifar10", "data.dir is empty"),
    ("--config=configs/nope.py", "No such file or directory: 'configs/nope.py'"),
    ("--config.batch_size=many", "--config.batch_size=many: invalid literal for int()"),
    ("--config.optim.base_learning_rate=nan", "optim.base_learning_rate=nan must be a finite"),
    ("--config.data.val_fraction=-0.5", "config data.val_fraction=-0.5 must be in [0, 1)"),
    ("--config.seed=-1", "config seed=-1 must be >= 0"),
    ("--config.data.image_size=-4", "config data.image_size=-4 must be >= 0"),
    ("--restore_step=-2", "--restore_step=-2: -2 is not a non-negative integer"),
    (
      "--config.data.name=moving_digits",
      "config model.name='small_cnn' takes images, but data.name='moving_digits' gives clips "
      "(8, 32, 32, 1): use a video model (r3d_18, r2plus1d_18, c3d_small)",
    ),
    (
      "--config.model.name=c3d_small",
      "config model.name='c3d_small' takes clips, but data.name='digits' gives images (8, 8, 1)",
    ),
    # a setting the run would not read: an error, not a run on something else
    (
      "--config.data.dir=/data/coco",
      "config data.dir='/data/coco' is not read by this run: it is read by data.name ('cifar10'",
    ),
  ],
)
def test_bad_config_values_are_clear_errors(tmp_path, flag, message):
  proc = _run(["train.py", f"--workdir={tmp_path}", *flag.split()])
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
  ("signum", "status"),
  [(signal.SIGTERM, 143), pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)],
)
def test_a_signal_saves_a_checkpoint_and_stops_with_one_message(tmp_path, signum, status):
  workdir = str(tmp_path / "run")
  args = [sys.executable, "train.py", f"--workdir={workdir}", "--config.log_every_steps=1"]
  proc = subprocess.Popen(
    [*args, "--config.num_steps=100000"], cwd=ROOT, stderr=subprocess.PIPE, text=True
  )
  with proc:
    for line in proc.stderr:
      if "/100000 loss" in line:  # training, past the compile
        break
    proc.send_signal(signum)
    seen = []
    for line in proc.stderr:  # the first one acknowledged: the run is stopping, not stopped
      seen.append(line)
      if "received: stopping" in line:
        break
    proc.send_signal(signum)  # a second one, as an impatient user or scheduler sends
    rest = "".join(seen) + proc.stderr.read()
  assert proc.returncode == status, rest[-3000:]
  assert "Traceback" not in rest and "already stopping" in rest
  name = signal.Signals(signum).name
  (step,) = re.findall(rf"stopped by {name} at step (\d+): checkpoint .*/(?:\d+) is saved", rest)
  assert os.listdir(os.path.join(workdir, "checkpoints")) == [step]
  assert not [n for _, dirs, _ in os.walk(workdir) for n in dirs if "tmp" in n]
  again = _run(args[1:] + [f"--config.num_steps={int(step) + 2}"])
  assert again.returncode == 0 and f"resumed from {workdir}/checkpoints/{step}" in again.stderr


@pytest.mark.slow
def test_one_and_four_devices_train_the_same_model():
  proc = _run(
    ["-m", "tests.training.multidevice_run"],
    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "on 4 cpu device(s)" in proc.stderr and "on 1 cpu device(s)" in proc.stderr
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  for key, rtol in SHARDED_RTOL.items():
    assert result[key] <= rtol, (key, result)
  assert result["top1"][0] == pytest.approx(result["top1"][1], abs=1 / 360)
  assert "batch_size=6 is not divisible by the 4 devices" in result["error"]
