"""The video zoo: R3D-18 and R(2+1)D-18 have torchvision's parameter counts (weights, BN
scales and offsets, the classifier's bias), and each video model runs a float and a DAQ
training step on a small clip in which every contraction, forward, dgrad and wgrad of every
3-D conv and of the classifier, is int8 x int8 -> int32 in the lowered program (every layer
quantized, the stem and head included, so that none is left out of the check).

The steps compile for 30-140 s each with an empty cache: they are in the slow set.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import daq_jax
from daq_jax import models, quant
from daq_jax.quant import lowering


def _count(params) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


@pytest.mark.parametrize(
  ("name", "expected"),
  [("r3d_18", 33_371_472), ("r2plus1d_18", 31_505_325)],  # torchvision, 400 classes
)
def test_parameter_count_matches_torchvision(name, expected):
  model = models.create(name, num_classes=400)
  x = jnp.ones((1, 16, 112, 112, 3))
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  assert _count(shapes["params"]) == expected


def test_r2plus1d_factorises_every_conv_with_torchvision_middle_widths():
  model = models.create("r2plus1d_18", num_classes=400)
  x = jnp.ones((1, 16, 112, 112, 3))
  params = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)[
    "params"
  ]
  assert params["stem_conv"]["kernel"].shape == (1, 7, 7, 3, 45)
  assert params["stem_temporal"]["kernel"].shape == (3, 1, 1, 45, 64)
  block = params["VideoBlock_2"]["conv1"]  # the first block of stage 2: 64 -> 128, stride 2
  # (64 * 128 * 27) // (64 * 9 + 3 * 128) = 230
  assert block["spatial"]["kernel"].shape == (1, 3, 3, 64, 230)
  assert block["temporal"]["kernel"].shape == (3, 1, 1, 230, 128)


def test_an_image_given_to_a_video_model_is_named():
  model = models.create("c3d_small", num_classes=4)
  with pytest.raises(
    ValueError, match=r"C3DSmall takes clips \(N, T, H, W, C\), not \(1, 8, 8, 3\)"
  ):
    jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 8, 8, 3)))


STEP = [
  pytest.param(  # 60-140 s cold, as the others: the 3-D ops are in tests/nn's fast tests
    "c3d_small",
    {"num_classes": 10, "widths": (8, 16, 16)},
    (2, 4, 16, 16, 1),
    marks=pytest.mark.slow,
  ),
  pytest.param(
    "r3d_18", {"num_classes": 10, "num_filters": 8}, (2, 4, 16, 16, 3), marks=pytest.mark.slow
  ),
  pytest.param(
    "r2plus1d_18",
    {"num_classes": 10, "num_filters": 8},
    (2, 4, 16, 16, 3),
    marks=pytest.mark.slow,
  ),
]


@pytest.mark.parametrize(
  ("name", "fields", "shape"), STEP, ids=["c3d_small", "r3d_18", "r2plus1d_18"]
)
def test_a_float_and_a_daq_step_run_and_daq_lowers_every_contraction_to_int8(name, fields, shape):
  x = jax.random.normal(jax.random.key(0), shape)
  y = jnp.arange(shape[0]) % fields["num_classes"]
  results = {}
  for method in ("fp32", "daq"):
    cfg = quant.preset(method)
    model = daq_jax.quantize(models.create(name, **fields), [(".*", cfg)])
    variables = model.init({"params": jax.random.key(1)}, x, train=False)

    def loss_fn(params, state, model=model, variables=variables):
      logits, _ = model.apply(
        {**variables, "params": params, "quant_state": state},
        x,
        mutable=["batch_stats"],
        rngs={"quant": jax.random.key(4)},
      )
      return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], 1))

    step = quant.value_and_grad(loss_fn)
    args = (variables["params"], variables.get("quant_state", {}))
    loss, grads, new_state = jax.jit(step)(*args)
    assert np.isfinite(float(loss))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    logits = jax.jit(lambda v, model=model: model.apply(v, x, train=False))(variables)
    results[method] = np.asarray(logits)
    if method == "daq":
      found = lowering.hlo_contractions(step, *args)
      kernels = [k for k in jax.tree.leaves_with_path(variables["params"]) if "kernel" in str(k[0])]
      # Forward, dgrad and wgrad of every layer but the first (no dgrad into the clip).
      assert len(found) >= 3 * len(kernels) - 1, found
      assert all(c[1] == ("i8", "i8") and c[2] == "i32" for c in found), [
        c for c in found if c[1] != ("i8", "i8") or c[2] != "i32"
      ]
      clips = [np.asarray(c) for c in jax.tree.leaves(new_state)]
      assert clips and all(np.isfinite(c).all() and c.min() >= 0 for c in clips)
  # DAQ's forward is the float one to int8 rounding (measured: relative L2 0.04-0.08 in
  # evaluation mode; batch statistics of two clips at the last stage's single position would
  # amplify any difference, so training mode is not compared).
  error = np.linalg.norm(results["daq"] - results["fp32"]) / np.linalg.norm(results["fp32"])
  assert error < 0.2, error
