"""The detector's pieces against references computed another way: IoU against a plain loop
over boxes, encode/decode round trips, anchors against their definition, the assignment's
rules on hand-made cases, NMS against a plain numpy greedy loop, and the focal loss at values
worked out by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from daq_jax.detection import boxes as box_lib
from daq_jax.detection import losses, nms


def _random_boxes(rng, n, size=100.0):
  xy = rng.uniform(0, size, (n, 2))
  wh = rng.uniform(1, size / 2, (n, 2))
  return np.concatenate([xy, xy + wh], -1).astype(np.float32)


def _iou_loop(a, b):
  out = np.zeros((len(a), len(b)))
  for i, p in enumerate(a):
    for j, q in enumerate(b):
      w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
      h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
      union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - w * h
      out[i, j] = w * h / union
  return out


def test_iou_matches_a_loop_over_boxes():
  rng = np.random.default_rng(0)
  a, b = _random_boxes(rng, 30), _random_boxes(rng, 20)
  np.testing.assert_allclose(box_lib.iou(a, b), _iou_loop(a, b), atol=1e-6)
  assert float(box_lib.iou(a[:1], a[:1])[0, 0]) == pytest.approx(1.0)
  # A degenerate box has no union with itself: 0, not NaN.
  assert float(box_lib.iou(np.zeros((1, 4)), np.zeros((1, 4)))[0, 0]) == 0.0


def test_encode_then_decode_gives_the_boxes_back():
  rng = np.random.default_rng(1)
  boxes, anchors = _random_boxes(rng, 50), _random_boxes(rng, 50)
  deltas = box_lib.encode(boxes, anchors)
  np.testing.assert_allclose(box_lib.decode(deltas, anchors), boxes, rtol=1e-5, atol=1e-3)
  # An anchor encodes itself as zeros.
  np.testing.assert_allclose(box_lib.encode(anchors, anchors), 0, atol=1e-6)


def test_decode_clips_the_size_change():
  anchor = np.array([[0, 0, 10, 10]], np.float32)
  box = box_lib.decode(np.array([[0, 0, 100.0, 100.0]], np.float32), anchor)
  side = 10 * math.exp(box_lib.MAX_LOG_SCALE)
  np.testing.assert_allclose(box[0, 2] - box[0, 0], side, rtol=1e-5)


def test_anchors_follow_their_definition():
  a = box_lib.anchors(64, (3, 4), 4.0, (1.0, 2.0), (0.5, 1.0, 2.0))
  assert a.shape == ((8 * 8 + 4 * 4) * 6, 4)
  # The first cell of level 3: centre (4, 4), sides 32 * scale at constant area per ratio.
  first = a[:6]
  centres = (first[:, :2] + first[:, 2:]) / 2
  np.testing.assert_allclose(centres, 4.0)
  w, h = first[:, 2] - first[:, 0], first[:, 3] - first[:, 1]
  np.testing.assert_allclose(w * h, np.array([32.0, 64.0] * 3) ** 2, rtol=1e-5)
  np.testing.assert_allclose(h / w, np.repeat([0.5, 1.0, 2.0], 2), rtol=1e-5)
  # The next anchor group is the next column (x + stride), the order of the head's outputs.
  np.testing.assert_allclose(a[6:12, 0] - a[:6, 0], 8.0)


def test_assignment_foreground_background_ignored_and_low_quality():
  anchors = np.array(
    [[0, 0, 10, 10], [0, 0, 10, 7], [0, 0, 10, 5], [50, 50, 60, 60], [80, 80, 90, 90]],
    np.float32,
  )
  boxes = np.array([[0, 0, 10, 10], [50, 50, 70, 70], [0, 0, 0, 0]], np.float32)
  valid = np.array([True, True, False])
  crowd = np.zeros(3, bool)
  matched, label = box_lib.assign(anchors, boxes, valid, crowd)
  # IoUs with box 0: 1.0, 0.7, 0.5 -> foreground; anchor 3 has IoU 0.25 with box 1, below
  # 0.4, but it is box 1's best anchor: foreground (low-quality match). Anchor 4: background.
  assert label.tolist() == [1, 1, 1, 1, 0]
  assert matched[:4].tolist() == [0, 0, 0, 1]
  # Between the thresholds: ignored.
  _, label = box_lib.assign(
    np.array([[0, 0, 10, 4.5]], np.float32),
    boxes[:1],
    valid[:1],
    crowd[:1],
    foreground_iou=0.5,
    background_iou=0.4,
  )
  assert label.tolist() == [1]  # still box 0's best: low-quality foreground
  two = np.array([[0, 0, 10, 10], [0, 0, 10, 4.5]], np.float32)
  _, label = box_lib.assign(two, boxes[:1], valid[:1], crowd[:1])
  assert label.tolist() == [1, -1]


def test_crowd_boxes_are_never_matched_and_their_anchors_are_ignored():
  anchors = np.array([[0, 0, 10, 10], [40, 40, 50, 50]], np.float32)
  boxes = np.array([[0, 0, 20, 20], [0, 0, 100, 100]], np.float32)
  valid = np.array([True, True])
  # Box 1 is crowd and covers anchor 1, whose IoU with box 0 is 0: ignored, not background.
  _, label = box_lib.assign(anchors[1:], boxes, valid, np.array([False, True]))
  assert label.tolist() == [-1]
  # Only a crowd box: nothing is foreground, and the anchors it covers are ignored.
  _, label = box_lib.assign(anchors, boxes[1:], valid[1:], np.array([True]))
  assert label.tolist() == [-1, -1]
  _, label = box_lib.assign(anchors + 200, boxes[1:], valid[1:], np.array([True]))
  assert label.tolist() == [0, 0]


def _nms_loop(boxes, scores, classes, threshold, score_threshold, top_k, max_detections):
  order = np.argsort(-scores, kind="stable")[:top_k]
  order = [i for i in order if scores[i] > score_threshold]
  kept = []
  for i in order:
    if all(
      classes[j] != classes[i] or _iou_loop(boxes[[i]], boxes[[j]])[0, 0] <= threshold for j in kept
    ):
      kept.append(i)
  return kept[:max_detections]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_nms_matches_a_numpy_greedy_loop(seed):
  rng = np.random.default_rng(seed)
  n, c = 60, 3
  # Clusters of overlapping boxes, so that suppression happens.
  centres = _random_boxes(rng, 6)
  base = centres[rng.integers(0, 6, n)]
  boxes = (base + rng.normal(0, 3, (n, 4))).astype(np.float32)
  boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
  scores = rng.uniform(0, 1, (n, c)).astype(np.float32)
  out = nms.batched_nms(
    jnp.asarray(boxes)[None],
    jnp.asarray(scores)[None],
    score_threshold=0.3,
    iou_threshold=0.5,
    pre_nms_top_k=100,
    max_detections=25,
  )
  got_boxes, got_scores, got_classes, got_valid = (np.asarray(o[0]) for o in out)
  flat_boxes = np.repeat(boxes, c, axis=0)
  flat_scores, flat_classes = scores.reshape(-1), np.tile(np.arange(c), n)
  want = _nms_loop(flat_boxes, flat_scores, flat_classes, 0.5, 0.3, 100, 25)
  assert int(got_valid.sum()) == len(want)
  k = len(want)
  np.testing.assert_allclose(got_scores[:k], flat_scores[want])
  np.testing.assert_array_equal(got_classes[:k], flat_classes[want])
  np.testing.assert_allclose(got_boxes[:k], flat_boxes[want])
  assert not got_valid[k:].any()


def test_nms_pads_when_there_are_fewer_candidates_than_detections():
  boxes = jnp.asarray([[[0, 0, 10, 10], [20, 20, 30, 30]]], jnp.float32)
  scores = jnp.asarray([[[0.9], [0.8]]], jnp.float32)
  b, _, _, v = nms.batched_nms(
    boxes, scores, score_threshold=0.05, iou_threshold=0.5, pre_nms_top_k=10, max_detections=5
  )
  assert b.shape == (1, 5, 4) and v[0].tolist() == [True, True, False, False, False]


def test_focal_loss_at_values_worked_out_by_hand():
  # p = sigmoid(0) = 0.5: positive: 0.25 * 0.5**2 * log 2; negative: 0.75 * 0.5**2 * log 2.
  got = losses.focal_loss(jnp.zeros(2), jnp.array([1.0, 0.0]))
  np.testing.assert_allclose(got, [0.25 * 0.25 * math.log(2), 0.75 * 0.25 * math.log(2)], rtol=1e-6)
  # gamma 0, alpha 0.5 is half the binary cross-entropy.
  z = jnp.array([2.0, -1.0, 0.3])
  t = jnp.array([1.0, 0.0, 1.0])
  bce = -(t * jnp.log(jax.nn.sigmoid(z)) + (1 - t) * jnp.log(1 - jax.nn.sigmoid(z)))
  np.testing.assert_allclose(losses.focal_loss(z, t, alpha=0.5, gamma=0.0), 0.5 * bce, rtol=1e-6)
  # Finite for large logits, and a confident right answer costs (almost) nothing.
  far = losses.focal_loss(jnp.array([100.0, -100.0]), jnp.array([1.0, 0.0]))
  assert np.all(np.isfinite(far)) and float(far.max()) < 1e-30


def test_smooth_l1_and_giou():
  x = jnp.array([0.05, -0.05, 0.5, -2.0])
  np.testing.assert_allclose(losses.smooth_l1(x, 0.1), [0.0125, 0.0125, 0.45, 1.95], rtol=1e-6)
  np.testing.assert_allclose(losses.smooth_l1(x, 0.0), jnp.abs(x))
  a = jnp.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], jnp.float32)
  b = jnp.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 0, 30, 10]], jnp.float32)
  # IoU 1; IoU 1/3 and hull = union; IoU 0 with hull 300 and union 200: 1 + 1/3.
  np.testing.assert_allclose(losses.giou_loss(a, b), [0.0, 2 / 3, 1 + 1 / 3], rtol=1e-5)
