"""RetinaNet's losses: the sigmoid focal loss of the classes, and smooth-L1 (on the box
coding) or GIoU (on the decoded boxes) of the foreground anchors' boxes.

References:
  Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017 (eq. 5; alpha 0.25, gamma 2).
  Rezatofighi et al., "Generalized Intersection over Union", CVPR 2019.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from daq_jax.detection import boxes as box_lib


def focal_loss(logits: jax.Array, targets: jax.Array, alpha: float = 0.25, gamma: float = 2.0):
  """The elementwise sigmoid focal loss of `logits` against 0/1 `targets` (same shape):
  -alpha_t (1 - p_t)**gamma log(p_t), computed from log-sigmoids so that it stays finite."""
  logits = logits.astype(jnp.float32)
  p = jax.nn.sigmoid(logits)
  # log(p_t) = -softplus(-z) for a positive target, -softplus(z) for a negative one.
  ce = targets * jax.nn.softplus(-logits) + (1 - targets) * jax.nn.softplus(logits)
  p_t = targets * p + (1 - targets) * (1 - p)
  alpha_t = targets * alpha + (1 - targets) * (1 - alpha)
  return alpha_t * (1 - p_t) ** gamma * ce


def smooth_l1(x: jax.Array, beta: float) -> jax.Array:
  """Elementwise smooth-L1 (Huber divided by beta): 0.5 x**2 / beta below beta, |x| - beta/2
  above; plain L1 at beta 0."""
  ax = jnp.abs(x)
  if beta <= 0:
    return ax
  return jnp.where(ax < beta, 0.5 * ax * ax / beta, ax - 0.5 * beta)


def giou_loss(a: jax.Array, b: jax.Array) -> jax.Array:
  """1 - GIoU of matching boxes a, b (..., 4): 0 for equal boxes, up to 2 for far apart."""
  lo, hi = jnp.maximum(a[..., :2], b[..., :2]), jnp.minimum(a[..., 2:], b[..., 2:])
  inter = jnp.prod(jnp.clip(hi - lo, 0), -1)
  union = box_lib.area(a) + box_lib.area(b) - inter
  hull = jnp.prod(jnp.maximum(a[..., 2:], b[..., 2:]) - jnp.minimum(a[..., :2], b[..., :2]), -1)
  iou = inter / jnp.maximum(union, 1e-7)
  return 1 - (iou - (hull - union) / jnp.maximum(hull, 1e-7))
