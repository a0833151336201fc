"""The roofline model (`daq_jax.quant.backends.cost`) and impl="auto"'s use of it for CUDA.

Strategy: (1) the model's byte counts equal what can be seen in programs on the CPU: the int8
im2col patch tensor in XLA's compiled program (its largest int8 buffer), and the int8 input
that the quantized op keeps for the backward pass (`saved_residuals`); (2) its arithmetic
reproduces the hand numbers it was sketched from (ResNet-50's first 3x3 conv at batch 128: a
231 MB patch tensor, 29.6 GFLOP, about 43 µs in bf16 at 70 % of the peak); (3) the designs
rank as their traffic says (every im2col product moves more bytes than the implicit kernels'),
fusing quantization into the loads costs ALU time per reload, and `fastest` returns the
predicted minimum; (4) bad designs are refused by name. The predictions themselves are not
measurements and no test asserts a timing of a run.
"""

import math
import re

import jax
import jax.numpy as jnp
import pytest

from daq_jax import quant
from daq_jax.quant import conv_op, gradient
from daq_jax.quant.backends import cost

METHOD = cost.Method.of(quant.daq_sr_rows())
HW = cost.Hardware()


def _layer(lhs, rhs, **kw):
  return cost.Layer("conv", lhs, rhs, conv_op.make_spec(lhs, rhs, **kw))


def _largest_s8_buffer(text: str) -> int:
  sizes = [
    math.prod(int(d) for d in dims.split(",") if d)
    for dims in re.findall(r"\bs8\[([\d,]*)\]", text)
  ]
  return max(sizes)


@pytest.mark.parametrize(
  "lhs, rhs, kw",
  [((2, 16, 16, 8), (3, 3, 8, 16), {}), ((2, 17, 17, 8), (3, 3, 8, 16), dict(window_strides=2))],
)
def test_patch_bytes_are_the_im2col_buffer_of_the_compiled_program(lhs, rhs, kw):
  layer = _layer(lhs, rhs, **kw)
  cfg = quant.daq(impl="im2col")
  x, w = jnp.ones(lhs), jnp.ones(rhs)
  state = gradient.init_state(cfg, rhs[-1])
  fn = jax.jit(lambda x, w: quant.conv_general(x, w, state, cfg=cfg, **kw))
  text = fn.lower(x, w).compile().as_text()
  assert _largest_s8_buffer(text) == layer.patch_bytes
  # ... which is T times the input's bytes at stride 1
  if not kw:
    assert layer.patch_bytes == 9 * layer.x_elements


def test_the_int8_residual_is_the_input_once_in_bytes():
  lhs, rhs = (2, 16, 16, 8), (3, 3, 8, 16)
  layer = _layer(lhs, rhs)
  cfg = quant.daq(impl="implicit")
  state = gradient.init_state(cfg, rhs[-1])
  # the residuals are the leaves of the function jax.vjp returns
  conv = lambda x, w, s: quant.conv_general(x, w, s, cfg=cfg)
  _, vjp = jax.vjp(conv, jnp.ones(lhs), jnp.ones(rhs), state)
  int8 = [a for a in jax.tree.leaves(vjp) if a.dtype == jnp.int8 and a.shape == lhs]
  assert [a.size for a in int8] == [layer.x_elements]
  # the model's forward writes exactly that much int8 for x: the quantize pass's output
  quantize_x = next(
    k
    for k in cost.products(layer, "implicit", METHOD, 2)["forward"]
    if k.name.startswith("quantize x")
  )
  assert quantize_x.written == layer.x_elements


def test_resnet50_first_3x3_conv_matches_the_hand_numbers():
  layer = _layer((128, 56, 56, 64), (3, 3, 64, 64))
  assert layer.patch_bytes == 128 * 56 * 56 * 576  # 231 MB
  assert 2 * layer.macs == pytest.approx(29.6e9, rel=0.01)
  (_, bf16_conv) = cost.products(layer, "bf16", METHOD, 2)["forward"]
  assert bf16_conv.seconds(HW) == pytest.approx(43e-6, rel=0.03)
  assert bf16_conv.bound(HW) == "mma"


@pytest.mark.parametrize(
  "lhs, rhs, kw",
  [
    ((128, 56, 56, 64), (3, 3, 64, 64), {}),
    ((128, 56, 56, 64), (1, 1, 64, 256), {}),
    ((128, 56, 56, 128), (3, 3, 128, 128), dict(window_strides=2)),
    ((128, 7, 7, 512), (3, 3, 512, 512), {}),
  ],
)
def test_every_im2col_product_moves_more_bytes_than_the_implicit_kernels(lhs, rhs, kw):
  layer = _layer(lhs, rhs, **kw)
  for product in cost.PRODUCTS:
    moved = {
      design: sum(k.read + k.written for k in cost.contraction(layer, design, product, METHOD, 2))
      for design in ("im2col", "implicit")
    }
    assert moved["im2col"] > moved["implicit"], (product, moved)


def test_quantize_on_load_costs_alu_time_per_reload_and_saves_the_int8_copies():
  layer = _layer((128, 56, 56, 64), (3, 3, 64, 64))
  plain = cost.products(layer, "implicit", METHOD, 2)
  fused = cost.products(layer, "implicit_fused", METHOD, 2)
  names = lambda kernels: [k.name for k in kernels]
  assert any(n.startswith("quantize g") for n in names(plain["wgrad"]))
  assert not any(n.startswith("quantize g") for n in names(fused["wgrad"] + fused["dgrad"]))
  (dgrad,) = [k for k in fused["dgrad"] if k.name.startswith("implicit")]
  # every tap reloads g, and stochastic rounding hashes every element it loads
  assert dgrad.alu_ops == layer.y_elements * 9 * cost.STOCHASTIC_QUANTIZE_OPS
  assert all(k.alu_ops == 0 for k in plain["dgrad"] + plain["wgrad"])


def test_fastest_is_the_least_predicted_plan():
  layer = _layer((128, 28, 28, 128), (3, 3, 128, 128))
  options = {p: ("implicit", "im2col", "implicit_fused") for p in cost.PRODUCTS}
  plan = cost.fastest(layer, options, METHOD, 2, HW)
  best = cost.layer_seconds(layer, plan, METHOD, 2, HW)
  for other in [("im2col",) * 3, ("implicit",) * 3, ("implicit_fused",) * 3]:
    assert best <= cost.layer_seconds(layer, other, METHOD, 2, HW)


def test_bad_designs_are_refused_by_name():
  layer = _layer((2, 8, 8, 4), (3, 3, 4, 8))
  with pytest.raises(ValueError, match="design 'cudnn' is not one of"):
    cost.products(layer, "cudnn", METHOD, 2)
  with pytest.raises(ValueError, match=r"\['bf16'\] covers all three products"):
    cost.products(layer, ("bf16", "implicit", "implicit"), METHOD, 2)
