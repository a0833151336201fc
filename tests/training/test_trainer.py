"""The training loop in-process on the embedded digits: a run writes what it promises
(checkpoints, metrics, TensorBoard events, summary), a resumed run is bit-identical to an
uninterrupted one, a non-finite loss stops the run naming the step, UI8 scales per layer,
layer selection and bf16 compute reach the model, and evaluation reproduces the run's score."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from daq_jax import data
from daq_jax.evaluate import evaluate_workdir
from daq_jax.evaluate import main as evaluate_main
from daq_jax.quant import lowering
from daq_jax.quant.config import RECOMMENDED
from daq_jax.training import NonFiniteLossError, modeling, optim, steps, train_and_evaluate, trainer
from daq_jax.training.checkpoint import Checkpoints
from daq_jax.training.config import from_dict
from tests.training.common import tiny
from tests.training.events import read_run_scalars, read_scalars


def _restore(workdir, cfg_dict, step=None, fresh=False):
  """The run's checkpoint at `step` (the latest if None); `fresh`: the state the run
  started from, as its seed initialises it."""
  cfg = from_dict(cfg_dict)
  _, _, info = data.load(cfg.data)
  model = modeling.create_model(cfg, info.num_classes, info.image_shape)
  tx, _ = optim.build_optimizer(cfg, 1, 1)
  target = steps.init_train_state(model, tx, info, cfg.seed)
  if fresh:
    return target
  ckpts = Checkpoints(workdir)
  try:
    return ckpts.restore(target, step)
  finally:
    ckpts.close()


def _assert_trees_equal(a, b):
  """Leaf by leaf equal, bit for bit."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  summary = train_and_evaluate(tiny(), workdir)
  return workdir, summary


def test_a_run_writes_checkpoints_metrics_and_a_summary(finished_run):
  workdir, summary = finished_run
  assert summary["step"] == 6 and summary["eval_examples"] == 360
  assert 0 <= summary["eval_top1"] <= 1
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = [json.loads(x) for x in f]
  train_lines = [x for x in lines if "train/loss" in x]
  assert [x["step"] for x in train_lines] == [2, 4, 6]
  for key in ("train/accuracy", "train/learning_rate", "train/step_time_s", "train/images_per_s"):
    assert all(np.isfinite(x[key]) for x in train_lines), key
  assert lines[-1]["test/top1"] == summary["eval_top1"]
  (events,) = os.listdir(os.path.join(workdir, "tensorboard"))
  scalars = read_scalars(os.path.join(workdir, "tensorboard", events))
  losses = [(s, v) for s, tag, v in scalars if tag == "train/loss"]
  assert [s for s, _ in losses] == [2, 4, 6]
  np.testing.assert_allclose(
    [v for _, v in losses], [x["train/loss"] for x in train_lines], rtol=1e-6
  )
  with open(os.path.join(workdir, "summary.json")) as f:
    assert json.load(f) == summary


def test_the_quantization_state_is_checkpointed(finished_run):
  workdir, _ = finished_run
  state = _restore(workdir, tiny())
  assert int(state.step) == 6
  clips = state.quant_state["stem_conv"]["quant"]["wgrad_clip"]
  assert clips.shape == (32,) and float(clips.min()) > 0  # it came out of 6 backward passes


def test_evaluation_of_the_workdir_reproduces_the_final_score(finished_run, tmp_path, capsys):
  workdir, summary = finished_run
  result = evaluate_workdir(workdir)
  assert result["top1"] == summary["eval_top1"] and result["examples"] == 360
  # The same images as a folder of grey PNGs given on the command line.
  test = data.load_digits("test")
  for i, (image, label) in enumerate(zip(test.images, test.labels)):
    os.makedirs(tmp_path / str(label), exist_ok=True)
    Image.fromarray(image[..., 0]).save(tmp_path / str(label) / f"{i}.png")
  # Activations are quantized with one scale per batch, so a quantized model's outputs depend
  # on which images share a batch, and the folder lists the images class by class: compare
  # both in one batch of all 360.
  whole = evaluate_workdir(workdir, batch_size=360)
  assert evaluate_main(["--workdir", workdir, "--data_dir", str(tmp_path), "--batch_size=360"]) == 0
  out = capsys.readouterr().out
  assert f"top-1 {whole['top1']:.4f} on 360 examples" in out


def test_evaluation_with_another_methods_forward(finished_run, capsys):
  """--quant_method fp32 scores the DAQ-trained weights with the float forward: the same top-1
  as a float model applied to the restored variables directly, one batch of all 360."""
  workdir, _ = finished_run
  result = evaluate_workdir(workdir, batch_size=360, quant_method="fp32")
  assert result["quant_method"] == "fp32" and result["examples"] == 360
  assert result["written"].endswith("eval-test-fp32.json")
  state = _restore(workdir, tiny())
  cfg = from_dict(tiny(**{"quant.method": "fp32"}))
  test = data.load_digits("test")
  _, _, info = data.load(cfg.data)
  model = modeling.create_model(cfg, info.num_classes, info.image_shape)
  images = steps.normalize(test.images, info, np.float32)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  logits = model.apply(variables, images, train=False)
  top1 = float(np.mean(np.argmax(np.asarray(logits), -1) == test.labels))
  np.testing.assert_allclose(result["top1"], top1, atol=1e-6)
  int8 = evaluate_workdir(workdir, batch_size=360)
  assert int8["top1"] != result["top1"] or int8["loss"] != result["loss"]
  assert evaluate_main(["--workdir", workdir, "--quant_method", "fp32"]) == 0
  assert "with the fp32 forward" in capsys.readouterr().out
  assert evaluate_main(["--workdir", workdir, "--quant_method", "daq(rounding=up)"]) == 1
  assert "--quant_method 'daq(rounding=up)'" in capsys.readouterr().err


def test_a_float_run_evaluates_with_the_int8_forward(tmp_path):
  """The other way: a float-trained run (no quantization state) under DAQ's forward, which
  gets a fresh state; the weights are the run's, so the score is near the float one."""
  workdir = str(tmp_path / "fp32")
  summary = train_and_evaluate(tiny(**{"quant.method": "fp32"}), workdir)
  result = evaluate_workdir(workdir, batch_size=360, quant_method="daq")
  assert result["quant_method"] == "daq" and result["examples"] == 360
  assert abs(result["top1"] - summary["eval_top1"]) < 0.1
  assert result["loss"] != summary["eval_loss"]  # an int8 forward, not the float one again


def test_the_fresh_quantizer_state_alone_is_a_fresh_train_states():
  cfg = from_dict(tiny())
  _, _, info = data.load(cfg.data)
  model = modeling.create_model(cfg, info.num_classes, info.image_shape)
  tx, _ = optim.build_optimizer(cfg, 1, 1)
  whole = steps.init_train_state(model, tx, info, cfg.seed)
  alone = steps.init_quant_state(model, info, cfg.seed)
  assert jax.tree.leaves(alone)  # the tiny model's quantized layers have state
  _assert_trees_equal(alone, whole.quant_state)


def test_evaluation_errors_are_clear(finished_run, tmp_path, capsys):
  workdir, _ = finished_run
  assert evaluate_main(["--workdir", str(tmp_path)]) == 1
  assert "config.json is missing" in capsys.readouterr().err
  assert evaluate_main(["--workdir", workdir, "--data_dir", str(tmp_path / "nowhere")]) == 1
  assert "no such directory" in capsys.readouterr().err
  os.makedirs(tmp_path / "dogs")
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "dogs" / "a.png")
  assert evaluate_main(["--workdir", workdir, "--data_dir", str(tmp_path)]) == 1
  assert "classes ['dogs'] are not among the model's" in capsys.readouterr().err


# Resumed as it was, or in the other memory mode, which is not part of a run's numerics: another
# program, whose arithmetic `quant.exact` rounds as the first one's, so bit-identical too.
@pytest.mark.parametrize("resume", [{}, {"memory": "int8"}], ids=["as it was", "memory=int8"])
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(
  finished_run, tmp_path, monkeypatch, resume
):
  workdir, summary = finished_run
  compile_steps = steps.compile_steps
  calls = {"n": 0}

  def interrupting(*args, **kwargs):
    train, evaluate = compile_steps(*args, **kwargs)

    def train_then_interrupt(state, batch):
      calls["n"] += 1
      if calls["n"] == 5:
        raise KeyboardInterrupt
      return train(state, batch)

    return train_then_interrupt, evaluate

  interrupted = str(tmp_path / "interrupted")
  monkeypatch.setattr(steps, "compile_steps", interrupting)
  with pytest.raises(KeyboardInterrupt):
    train_and_evaluate(tiny(), interrupted)
  monkeypatch.undo()
  assert sorted(os.listdir(os.path.join(interrupted, "checkpoints"))) == ["3", "4"]
  resumed = train_and_evaluate(tiny(**resume), interrupted)
  assert resumed == summary
  _assert_trees_equal(_restore(interrupted, tiny()), _restore(workdir, tiny()))
  # One timeline: every logged step once, in both records (test_workdir resumes from a step
  # before the last logged one).
  with open(os.path.join(interrupted, "metrics.jsonl")) as f:
    losses = [(r["step"], r["train/loss"]) for r in map(json.loads, f) if "train/loss" in r]
  assert [s for s, _ in losses] == [2, 4, 6]
  scalars = read_run_scalars(os.path.join(interrupted, "tensorboard"))
  assert [s for s, tag, _ in scalars if tag == "train/loss"] == [2, 4, 6]


def test_a_workdir_of_another_run_is_refused(finished_run):
  workdir, _ = finished_run
  with pytest.raises(ValueError, match=r"quant\.method='daq', not 'fp32'.*use another --workdir"):
    train_and_evaluate(tiny(**{"quant.method": "fp32"}), workdir)
  # The implementation does not change the numbers: a run may go on with another one.
  train_and_evaluate(tiny(**{"quant.impl": "im2col"}), workdir)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
  cfg = tiny(
    **{"optim.base_learning_rate": 1e30, "checkpoint_every_steps": 1, "quant.method": "fp32"}
  )
  with pytest.raises(
    NonFiniteLossError,
    match=r"(loss is|parameters became).* at step \d+: stopping.*last good checkpoint",
  ):
    train_and_evaluate(cfg, str(tmp_path))
  kept = Checkpoints(str(tmp_path))
  latest = kept.latest_step()
  kept.close()
  state = _restore(str(tmp_path), cfg)
  assert latest is not None and int(state.step) == latest
  assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(state.params))


@pytest.mark.slow
def test_ui8_scales_each_quantized_layer_by_its_deviation(tmp_path):
  cfg = tiny(**{"quant.method": "ui8", "num_steps": 2, "checkpoint_every_steps": 2})
  train_and_evaluate(cfg, str(tmp_path))
  state = _restore(str(tmp_path), cfg)
  factors = next(s.factors for s in state.opt_state if isinstance(s, optim.DeviationScaleState))
  deviation = float(state.quant_state["conv1"]["quant"]["deviation"])
  expected = max(np.exp(-20 * deviation), 0.1)
  np.testing.assert_allclose(float(factors["conv1"]["kernel"]), expected, rtol=1e-6)
  assert 0.1 <= float(factors["conv1"]["kernel"]) < 1
  assert float(factors["bn0"]["scale"]) == 1.0  # not a quantized layer


def test_layer_selection_and_bf16_reach_the_model():
  cfg = from_dict(
    tiny(
      **{
        "quant.quantize_first_conv": False,
        "quant.quantize_last_dense": False,
        "model.dtype": "bfloat16",
      }
    )
  )
  model = modeling.create_model(cfg, 10, (8, 8, 1))
  variables = jax.eval_shape(
    lambda: model.init(jax.random.key(0), np.zeros((2, 8, 8, 1), np.float32), train=False)
  )
  assert set(variables["quant_state"]) == {"conv1", "conv2"}
  assert model.module.dtype == jax.numpy.bfloat16


@pytest.mark.parametrize(
  ("quantize_ends", "dtype", "method"),
  [
    (True, "float32", "daq"),
    (False, "float32", "daq"),
    (True, "bfloat16", "daq"),
    (True, "float32", "daq_sr"),  # stochastic rounding keeps every product int8
    # the recommendation: per-row dgrad scales, whose dgrad is a GEMM + col2im on im2col dots
    (True, "float32", RECOMMENDED),
  ],
)
def test_the_training_step_of_train_py_runs_int8_contractions(quantize_ends, dtype, method):
  """Every conv and dot of the lowered train step (forward, dgrad, wgrad) is i8 x i8 -> i32,
  except the first conv and the classifier when the config keeps them in float."""
  ends = {"quant.quantize_first_conv": quantize_ends, "quant.quantize_last_dense": quantize_ends}
  cfg = from_dict(tiny(**ends, **{"model.dtype": dtype, "quant.method": method}))
  _, _, info = data.load(cfg.data)
  model = modeling.create_model(cfg, info.num_classes, info.image_shape)
  assert model.module.dtype == jax.numpy.dtype(dtype)
  tx, _ = optim.build_optimizer(cfg, 10, 100)
  state = steps.init_train_state(model, tx, info, 0)
  batch = {"image": np.zeros((32, 8, 8, 1), np.uint8), "label": np.zeros(32, np.int32)}

  def step(state, batch):
    return steps.train_step(
      state,
      batch,
      model=model,
      tx=tx,
      info=info,
      label_smoothing=0.0,
      input_dtype=jax.numpy.dtype(dtype),
    )

  found = lowering.hlo_contractions(step, state, batch)
  floats = [c for c in found if c[1] != ("i8", "i8")]
  int8 = [c for c in found if c[1] == ("i8", "i8")]
  assert all(out == "i32" for _, _, out in int8)
  if quantize_ends:
    assert int8 and not floats, floats
  else:
    # stem conv: forward and wgrad (its dgrad is not needed); head: forward, dgrad, wgrad.
    assert len(floats) == 5, floats
    assert len(int8) >= 9  # conv1 and conv2: forward, dgrad and wgrad each


def test_each_step_compiles_once_over_a_run(tmp_path, monkeypatch):
  """Eight steps with evaluations every two and at the end: one train-step and one eval-step
  compilation (a state, batch or sharding that changes between calls would add entries)."""
  compile_steps = steps.compile_steps
  made = []

  def recording(*args, **kwargs):
    made.append(compile_steps(*args, **kwargs))
    return made[-1]

  monkeypatch.setattr(steps, "compile_steps", recording)
  calls = {"eval": 0}
  evaluate = trainer.evaluate_batches

  def counting(*args, **kwargs):
    calls["eval"] += 1
    return evaluate(*args, **kwargs)

  monkeypatch.setattr(trainer, "evaluate_batches", counting)
  # 1,437 training digits in batches of 32: 44 steps an epoch, so 0.05 epochs is 2 steps.
  train_and_evaluate(tiny(num_steps=8, eval_every_epochs=0.05), str(tmp_path))
  ((train, evaluate_fn),) = made
  assert calls["eval"] == 4  # after steps 2, 4 and 6, and the final one
  assert train._cache_size() == 1
  assert evaluate_fn._cache_size() == 1
