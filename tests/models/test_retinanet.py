"""RetinaNet: the levels packed on one canvas give what separate convs with zero padding give
(the shared head in one call per layer), the outputs line up with the anchors, and a small
RetinaNet, its class output starting at the prior, takes a DAQ step whose every contraction
(every conv of backbone, FPN and heads; forward, dgrad and wgrad) is int8 x int8 -> int32.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import daq_jax
from daq_jax import models, quant
from daq_jax.detection import Detection, DetectionConfig
from daq_jax.models import retinanet
from daq_jax.quant import lowering

SMALL = dict(backbone="resnet10_narrow", min_level=3, max_level=5, fpn_channels=16, head_convs=2)


def test_a_packed_head_equals_the_head_applied_to_each_level():
  keys = jax.random.split(jax.random.key(0), 3)
  levels = [jax.random.normal(k, (2, s, s, 8)) for k, s in zip(keys, (8, 4, 2), strict=True)]
  head = retinanet.Head(outputs=5, anchors=3, channels=8, convs=2)
  pyramid = dict(zip((3, 4, 5), levels, strict=True))
  variables = jax.jit(head.init)(jax.random.key(1), pyramid)
  packed = jax.jit(head.apply)(variables, pyramid)
  params = variables["params"]

  def conv(name, x):
    p = params[name]
    return nn.Conv(p["kernel"].shape[-1], (3, 3)).apply({"params": p}, x)

  want = []
  for x in levels:
    for i in range(2):
      x = nn.relu(conv(f"conv{i + 1}", x))
    x = conv("output", x)
    want.append(x.reshape(2, -1, 5))
  np.testing.assert_allclose(packed, jnp.concatenate(want, 1), rtol=1e-5, atol=1e-5)


def test_the_heads_per_level_equal_the_canvas_in_float():
  keys = jax.random.split(jax.random.key(0), 3)
  levels = [jax.random.normal(k, (2, s, s, 8)) for k, s in zip(keys, (8, 4, 2), strict=True)]
  pyramid = dict(zip((3, 4, 5), levels, strict=True))
  canvas = retinanet.Head(outputs=5, anchors=3, channels=8, convs=2)
  per_level = canvas.clone(canvas=False)
  variables = jax.jit(canvas.init)(jax.random.key(1), pyramid)
  np.testing.assert_allclose(
    jax.jit(per_level.apply)(variables, pyramid),
    jax.jit(canvas.apply)(variables, pyramid),
    rtol=1e-5,
    atol=1e-5,
  )


def test_outputs_line_up_with_the_anchors():
  fields = {k: v for k, v in SMALL.items() if k != "backbone"}
  model = models.create("retinanet_small", num_classes=3, **fields)
  det = Detection(DetectionConfig(min_level=3, max_level=5, fpn_channels=16, head_convs=2), 64)
  x = jnp.zeros((2, 64, 64, 3))
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  logits, deltas = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
  assert logits.shape == (2, len(det.anchors), 3) and deltas.shape == (2, len(det.anchors), 4)


def test_resnet50_backbone_has_the_zoo_widths():
  model = models.create("retinanet_r50", num_classes=80)
  x = jnp.ones((1, 128, 128, 3))
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  p = shapes["params"]
  assert p["fpn"]["lateral3"]["kernel"].shape == (1, 1, 512, 256)
  assert p["fpn"]["lateral5"]["kernel"].shape == (1, 1, 2048, 256)
  assert p["fpn"]["output6"]["kernel"].shape == (3, 3, 2048, 256)  # P6 from C5, as the paper
  assert p["class_head"]["output"]["kernel"].shape == (3, 3, 256, 9 * 80)
  assert p["box_head"]["output"]["kernel"].shape == (3, 3, 256, 9 * 4)


@pytest.mark.slow  # 60-110 s to compile on 2 cores
def test_a_daq_step_lowers_every_conv_of_backbone_fpn_and_heads_to_int8():
  cfg = DetectionConfig(min_level=3, max_level=5, fpn_channels=16, head_convs=2)
  det = Detection(cfg, 64)
  float_model = retinanet.RetinaNet(num_classes=3, **SMALL)
  model = daq_jax.quantize(float_model, [(".*", quant.preset("daq"))])
  x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  batch = {
    "boxes": jnp.asarray([[[4, 4, 30, 30], [30, 20, 60, 50]]] * 2, jnp.float32),
    "classes": jnp.asarray([[0, 2]] * 2, jnp.int32),
    "box_valid": jnp.ones((2, 2), bool),
    "crowd": jnp.zeros((2, 2), bool),
  }
  variables = model.init({"params": jax.random.key(1)}, x, train=False)
  # The class output starts at the prior p = 0.01 (its bias -log((1 - p) / p)), the box
  # output at zero.
  bias = variables["params"]["class_head"]["output"]["bias"]
  np.testing.assert_allclose(jax.nn.sigmoid(bias), 0.01, rtol=1e-5)
  assert not np.asarray(variables["params"]["box_head"]["output"]["bias"]).any()

  def loss_fn(params, state):
    out, _ = model.apply(
      {**variables, "params": params, "quant_state": state},
      x,
      mutable=["batch_stats"],
      rngs={"quant": jax.random.key(4)},
    )
    return det.loss(out, batch)[0]

  step = quant.value_and_grad(loss_fn)
  args = (variables["params"], variables["quant_state"])
  loss, grads, _ = jax.jit(step)(*args)
  assert np.isfinite(float(loss))
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  found = lowering.hlo_contractions(step, *args)
  kernels = [k for k in jax.tree.leaves_with_path(variables["params"]) if "kernel" in str(k[0])]
  parts = {str(k[0][0]) for k in kernels}
  assert {"['backbone']", "['fpn']", "['class_head']", "['box_head']"} <= parts, parts
  # Forward, dgrad and wgrad of every conv but the stem's (no dgrad into the image).
  assert len(found) >= 3 * len(kernels) - 1, (len(found), len(kernels))
  assert all(c[1] == ("i8", "i8") and c[2] == "i32" for c in found), [
    c for c in found if c[1] != ("i8", "i8") or c[2] != "i32"
  ]
