"""`python -m daq_jax.analyze` and `python -m daq_jax.compare` on short runs of the default
config (digits, the small CNN): every promised file is written and its numbers are in range;
on the captured gradients per-channel max scales (gvq) are no worse than one per-tensor scale,
layer by layer; the errors a user meets (no checkpoint, an unknown method, a directory that is
not a run, no matplotlib) are one clear line. And the trainer logs the quantizer's statistics."""

import json
import os
import shutil
import sys

import numpy as np
import pytest

from daq_jax.analysis import gradients, report
from daq_jax.analysis.report import analyze_workdir
from daq_jax.analyze import main as analyze_main
from daq_jax.compare import main as compare_main
from daq_jax.quant.config import RECOMMENDED
from daq_jax.training import train_and_evaluate
from daq_jax.training.config import TrainConfig, to_dict

LAYERS = ("stem_conv", "conv1", "conv2", "head")  # the small CNN's quantized layers


def _default(**overrides):
  cfg = to_dict(TrainConfig())
  cfg.update(num_steps=2, log_every_steps=1, **overrides)
  return cfg


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("default"))
  train_and_evaluate(_default(), workdir)
  return workdir


@pytest.fixture(scope="module")
def analysis(default_run):
  return analyze_workdir(default_run, batches=2, report=lambda note: None)


@pytest.mark.slow
def test_the_analysis_of_a_2_step_default_run_writes_every_file(default_run, analysis):
  out = os.path.join(default_run, "analysis")
  images = {f"hist_{layer}.png" for layer in LAYERS}
  images |= {"distributions.png", "errors.png", "dw_errors.png"}
  assert set(os.listdir(out)) == images | {"analysis.json", "summary.md"}
  for name in images:
    with open(os.path.join(out, name), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(os.path.join(out, "summary.md")) as f:
    summary = f.read()
  assert all(f"]({name})" in summary for name in images)
  with open(os.path.join(out, "analysis.json")) as f:
    assert json.load(f) == json.loads(json.dumps(analysis))


@pytest.mark.slow
def test_its_numbers_are_in_range(analysis):
  assert analysis["step"] == 2 and analysis["batches"] == 2
  assert [layer["layer"] for layer in analysis["layers"]] == list(LAYERS)
  for layer in analysis["layers"]:
    r = np.asarray(layer["r"])
    assert r.shape == (layer["channels"],) and ((r >= 0) & (r <= 1)).all()
    assert 0 <= layer["inverted_t_share"] <= 1 and layer["batches"] == 2
    assert set(layer["methods"]) == {
      "daq",
      "daq_sr",
      "daq_sr_wgrad",
      "daq_sr_wgrad_rows",
      "per_tensor",
      "gvq",
      "mcs",
      "ui8",
    }
    for name, method in layer["methods"].items():
      for what in ("wgrad_g", "dgrad_g", "dw", "dx"):
        # int8 with sensible scales: close to the float gradients, never identical
        assert 0 < method[what]["cosine_distance"] < 0.05, (layer["layer"], name, what)
        assert 0 < method[what]["rel_l2"] < 0.5, (layer["layer"], name, what)
      clip = method["clip_over_max"]
      assert 0 < clip["min"] <= clip["mean"] <= clip["max"]
      for what in ("dw", "dx"):
        # The three increments bound the whole error (triangle inequality) per batch, so
        # their batch means bound the mean error too.
        split = method[f"split_{what}"]
        assert all(v >= 0 for v in split.values()) and split["forward"] > 0
        assert method[what]["rel_l2"] <= sum(split.values()) * (1 + 1e-4), (name, what, split)
      for path in ("wgrad_zeroed", "dgrad_zeroed"):
        assert 0 <= method[path]["share"] <= 1 and 0 <= method[path]["energy"] <= 1
    # Nearest rounding zeroes exactly the entries below half a level: the smallest ones, so
    # they hold a smaller share of g's energy than of its entries.
    zeroed = layer["methods"]["daq"]["wgrad_zeroed"]
    assert zeroed["energy"] <= zeroed["share"]
    per_row = layer["dgrad_per_row"]
    assert set(per_row) == {"nearest", "stochastic"}
    assert all(0 < e["rel_l2"] < 0.5 for e in per_row.values())
    for h in layer["histograms"].values():
      assert sum(h["counts"]) == np.prod(layer["g_shape"][:-1])
      assert len(h["edges"]) == gradients.HISTOGRAM_BINS + 1


def test_zeroed_share_and_energy_and_the_error_split_on_known_values():
  import jax.numpy as jnp

  zeroed = gradients._zeroed(jnp.array([1.0, 1e-3, 2e-3, 0.0]), jnp.array([127, 0, 0, 0]))
  assert float(zeroed["share"]) == pytest.approx(2 / 3)
  assert float(zeroed["energy"]) == pytest.approx(5e-6 / (1 + 5e-6), rel=1e-5)
  exact = jnp.array([3.0, 4.0])  # |exact| = 5
  split = gradients._split(exact, exact + 0.5, exact + 0.5, exact + jnp.array([0.5, 1.5]))
  assert {k: round(float(v), 6) for k, v in split.items()} == {
    "forward": round(0.5 * 2**0.5 / 5, 6),
    "clipping": 0.0,
    "rounding": 0.2,
  }


@pytest.mark.slow
def test_per_channel_max_scales_are_no_worse_than_a_per_tensor_scale(analysis):
  for layer in analysis["layers"]:
    gvq, per_tensor = layer["methods"]["gvq"], layer["methods"]["per_tensor"]
    assert gvq["wgrad_g"]["cosine_distance"] <= per_tensor["wgrad_g"]["cosine_distance"]
    assert gvq["clip_over_max"]["max"] == pytest.approx(1.0)  # each channel's own max
    assert per_tensor["clip_over_max"]["min"] >= 1.0  # one max for all: at least each one's
  assert analysis["comparison"]["gvq_below_per_tensor_wgrad_g"]["of"] == len(LAYERS)


def test_analyze_refuses_a_workdir_without_checkpoint_or_an_unknown_method(
  default_run, tmp_path, capsys
):
  for name in ("config.json", "dataset.json"):
    shutil.copy(os.path.join(default_run, name), tmp_path / name)
  assert analyze_main(["--workdir", str(tmp_path)]) == 1
  assert f"workdir {tmp_path} has no checkpoint to analyze" in capsys.readouterr().err
  assert analyze_main(["--workdir", default_run, "--methods", "daq,int4"]) == 1
  err = capsys.readouterr().err
  assert "--methods: int4 is not a quantization method; known: per_tensor, daq, daq_sr" in err
  assert err.count("\n") == 1


def test_any_quantized_preset_can_be_analyzed_and_the_default_set_is_kept():
  assert report.check_methods(["daq_sr_rows", "daq"]) == ("daq_sr_rows", "daq")
  assert set(report.METHODS) <= set(report.KNOWN) and "fp32" not in report.KNOWN
  with pytest.raises(ValueError, match="fp32 is not a quantization method"):
    report.check_methods(["fp32"])


@pytest.mark.slow
def test_without_matplotlib_the_commands_say_how_to_install_it(default_run, monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
  assert analyze_main(["--workdir", default_run]) == 1
  assert "pip install 'daq_jax[plots]'" in capsys.readouterr().err
  assert compare_main([default_run]) == 1
  assert "pip install 'daq_jax[plots]'" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_tables_two_runs_and_refuses_a_directory_that_is_not_one(
  default_run, tmp_path, capsys
):
  fp32 = str(tmp_path / "fp32")
  train_and_evaluate(_default(quant={"method": "fp32"}), fp32)
  out = str(tmp_path / "cmp")
  assert compare_main([default_run, fp32, "--out", out]) == 0
  assert f"| {RECOMMENDED} | small_cnn |" in capsys.readouterr().out
  assert sorted(os.listdir(out)) == ["comparison.json", "comparison.md", "curves.png"]
  with open(os.path.join(out, "comparison.json")) as f:
    rows = json.load(f)
  assert [r["method"] for r in rows] == [RECOMMENDED, "fp32"]
  for row in rows:
    assert row["steps"] == 2 and row["finished"] and 0 <= row["final_top1"] <= 1
    assert row["best_top1"] == row["final_top1"] and row["images_per_s"] > 0
    assert [round(e, 6) for e, _ in row["loss_curve"]] == [round(1 / 22, 6), round(2 / 22, 6)]
  assert compare_main([default_run, str(tmp_path)]) == 1
  assert f"{tmp_path} is not a train.py run: it has no config.json" in capsys.readouterr().err


@pytest.mark.slow
def test_the_trainer_logs_the_quantizers_statistics(default_run):
  with open(os.path.join(default_run, "metrics.jsonl")) as f:
    records = [r for r in map(json.loads, f) if any(k.startswith("quant/") for k in r)]
  assert [r["step"] for r in records] == [1, 2]
  for record in records:
    for layer in LAYERS:
      assert 0 <= record[f"quant/{layer}/inverted_t"] <= 1
      assert record[f"quant/{layer}/clip_ratio"] > 0 and record[f"quant/{layer}/dgrad_scale"] > 0
    shares = [record[f"quant/{layer}/inverted_t"] for layer in LAYERS]
    assert record["quant/mean/inverted_t"] == pytest.approx(np.mean(shares))


@pytest.mark.slow
def test_a_video_run_is_analyzed_and_compared_like_an_image_run(tmp_path):
  """c3d_small on the moving digits: the 3-D convs' gradients are analyzed per channel (the
  histograms of the paper's Fig. 1 for each video layer) and the run compares."""
  import importlib

  video = importlib.import_module("configs.video_default").get_config().to_dict()
  video.update(num_steps=2, log_every_steps=1, batch_size=8)
  workdir = str(tmp_path / "video")
  train_and_evaluate(video, workdir)
  result = analyze_workdir(workdir, batches=1, methods=("daq", "daq_sr"), report=lambda n: None)
  assert [layer["layer"] for layer in result["layers"]] == list(LAYERS)
  conv1 = next(layer for layer in result["layers"] if layer["layer"] == "conv1")
  assert conv1["g_shape"] == [8, 4, 8, 8, 32]  # (N, T, H, W, C): a 3-D conv's gradient
  assert 0 <= conv1["inverted_t_share"] <= 1 and set(conv1["histograms"]) == {"bell", "inverted_t"}
  assert os.path.exists(os.path.join(workdir, "analysis", "hist_conv1.png"))
  assert compare_main([workdir, workdir, "--out", str(tmp_path / "cmp")]) == 0


@pytest.mark.slow
def test_a_detection_run_is_analyzed_per_part(tmp_path):
  """retinanet_small on the shapes: every conv of backbone, FPN and both heads is analyzed
  with the detector's own loss, and the inverted-T shares are reported per part."""
  import importlib

  detection = importlib.import_module("configs.detection_default").get_config().to_dict()
  detection.update(num_steps=2, log_every_steps=1, batch_size=8)
  workdir = str(tmp_path / "detection")
  summary = train_and_evaluate(detection, workdir)
  assert 0 <= summary["eval_mAP"] <= 1
  result = analyze_workdir(workdir, batches=1, methods=("daq",), report=lambda n: None)
  parts = result["parts"]
  assert set(parts) == {"backbone", "fpn", "class_head", "box_head"}, parts
  assert all(0 <= p["inverted_t_share"] <= 1 and p["layers"] > 0 for p in parts.values())
  assert parts["class_head"]["layers"] == 3 and parts["box_head"]["layers"] == 3  # 2 + output
  with open(os.path.join(workdir, "analysis", "summary.md")) as f:
    assert "| class_head | 3 |" in f.read()
