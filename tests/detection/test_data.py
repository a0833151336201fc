"""Detection data: the generated shapes (deterministic, their boxes tight), the COCO layout read
back from files the tests write, every bad annotation as one line naming file and id, the
letterbox and flip moving boxes with their pixels, batches, and COCO's metric (pycocotools) on
detections whose answer is known."""

import json

import numpy as np
import pytest

from daq_jax.data import DataConfig, DatasetInfo, coco, shapes, sources
from daq_jax.data.batches import Batches
from daq_jax.detection import coco_metric


@pytest.fixture(scope="module")
def small():
  return shapes.shapes("test").take(np.arange(12))


def test_shapes_are_deterministic_and_their_boxes_hold_their_objects():
  a, b = shapes.draw_image(0, 5), shapes.draw_image(0, 5)
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x, y)
  data = shapes.shapes("test")
  assert len(data) == 512 and data.class_names == shapes.CLASSES
  counts = [len(b) for b in data.boxes]
  assert min(counts) >= 1 and max(counts) <= 5
  assert {int(c) for cs in data.classes for c in cs} == {0, 1, 2}
  sides = np.concatenate([b[:, 2:] - b[:, :2] for b in data.boxes])
  assert sides.min() > 6 and sides.max() <= 96
  # The object is drawn over the background inside its box: its pixels differ from outside.
  image, boxes, _ = shapes.draw_image(1, 0)
  x1, y1, x2, y2 = (round(float(v)) for v in boxes[-1])  # drawn last: never covered
  background = shapes._background(np.random.default_rng([1, 0]), 96)
  changed = np.any(image != background, -1)
  # Every pixel the objects changed lies in some box; the last object fills its box's centre.
  in_a_box = np.zeros_like(changed)
  for bx1, by1, bx2, by2 in boxes:
    in_a_box[int(by1) : int(np.ceil(by2)) + 1, int(bx1) : int(np.ceil(bx2)) + 1] = True
  assert changed.any() and not (changed & ~in_a_box).any()
  assert changed[(y1 + y2) // 2, (x1 + x2) // 2]
  assert len(data.coco["annotations"]) == sum(counts)


def test_the_coco_layout_reads_back_what_was_written(tmp_path, small):
  coco.write_coco(small, str(tmp_path), "train")
  coco.write_coco(small, str(tmp_path), "val")
  back = coco.read_coco(str(tmp_path), "train")
  assert len(back) == 12 and back.images is None and len(back.paths) == 12
  for a, b in zip(small.boxes, back.boxes, strict=True):
    np.testing.assert_allclose(a, b, atol=1e-4)
  assert back.category_ids == (1, 2, 3)
  cfg = DataConfig(name="coco", dir=str(tmp_path), image_size=64, max_boxes=6)
  _, evaluation, info = sources.load(cfg)
  assert info.image_shape == (64, 64, 3) and info.is_detection and info.augment == "flip"
  batch = next(Batches(evaluation, info, 4).evaluation())
  assert batch["image"].shape == (4, 64, 64, 3) and batch["boxes"].shape == (4, 6, 4)
  np.testing.assert_allclose(batch["scale"], 64 / 96)
  np.testing.assert_allclose(
    batch["boxes"][0][: len(small.boxes[0])], small.boxes[0] * 64 / 96, atol=1e-3
  )


def test_worker_processes_decode_the_same_batches(tmp_path, small):
  coco.write_coco(small, str(tmp_path), "train")
  data = coco.read_coco(str(tmp_path), "train")
  info = DatasetInfo(shapes.CLASSES, (64, 64, 3), (0.5,) * 3, (0.25,) * 3, "flip", max_boxes=8)
  here = Batches(data, info, 4, seed=1).train(2)
  pool = Batches(data, info, 4, seed=1, workers=2)
  try:
    there = pool.train(2)
  finally:
    pool.close()
  for key in here:
    np.testing.assert_array_equal(here[key], there[key])


def _write(tmp_path, coco_dict, image_names=("a.png",)):
  (tmp_path / "annotations").mkdir(exist_ok=True)
  (tmp_path / "train2017").mkdir(exist_ok=True)
  for name in image_names:
    from PIL import Image

    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "train2017" / name)
  path = tmp_path / "annotations" / "instances_train2017.json"
  path.write_text(json.dumps(coco_dict))
  return str(path)


def _coco(annotations, categories=({"id": 7, "name": "cat"},), images=None):
  images = images or [{"id": 1, "file_name": "a.png", "width": 30, "height": 20}]
  return {"images": list(images), "annotations": list(annotations), "categories": list(categories)}


@pytest.mark.parametrize(
  "annotation, message",
  [
    (
      {"id": 11, "image_id": 1, "category_id": 7, "bbox": [25, 0, 10, 5]},
      "annotation 11: box [25.0, 0.0, 10.0, 5.0] lies outside its image 1 (30x20)",
    ),
    (
      {"id": 12, "image_id": 1, "category_id": 7, "bbox": [1, 1, 0, 5]},
      "annotation 12: zero-area box",
    ),
    (
      {"id": 13, "image_id": 1, "category_id": 9, "bbox": [1, 1, 3, 5]},
      "annotation 13: unknown category id 9 (known: [7])",
    ),
    (
      {"id": 14, "image_id": 5, "category_id": 7, "bbox": [1, 1, 3, 5]},
      "annotation 14: unknown image id 5",
    ),
  ],
)
def test_a_bad_annotation_is_one_line_naming_the_file_and_its_id(tmp_path, annotation, message):
  path = _write(tmp_path, _coco([annotation]))
  with pytest.raises(ValueError) as e:
    coco.read_coco(str(tmp_path), "train")
  assert str(e.value) == f"{path}: {message}" or str(e.value).startswith(f"{path}: {message}")
  assert "\n" not in str(e.value)


def test_a_missing_image_file_and_no_categories_are_one_line(tmp_path):
  images = [{"id": 3, "file_name": "gone.png", "width": 30, "height": 20}]
  path = _write(tmp_path, _coco([], images=images))
  with pytest.raises(ValueError, match=r"image 3: file .*gone.png is missing$"):
    coco.read_coco(str(tmp_path), "train")
  path = _write(tmp_path, _coco([], categories=()))
  with pytest.raises(ValueError, match=f"^{path}: no categories"):
    coco.read_coco(str(tmp_path), "train")
  (tmp_path / "annotations" / "instances_train2017.json").write_text("{not json")
  with pytest.raises(ValueError, match="not JSON"):
    coco.read_coco(str(tmp_path), "train")


def test_an_image_id_listed_twice_is_one_line(tmp_path):
  image = {"id": 4, "file_name": "a.png", "width": 30, "height": 20}
  path = _write(tmp_path, _coco([], images=[image, image]))
  with pytest.raises(ValueError, match=f"^{path}: image id 4 is listed twice$"):
    coco.read_coco(str(tmp_path), "train")


def test_crowd_and_images_without_boxes_are_kept(tmp_path):
  images = [
    {"id": 1, "file_name": "a.png", "width": 30, "height": 20},
    {"id": 2, "file_name": "b.png", "width": 30, "height": 20},
  ]
  anns = [
    {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5], "iscrowd": 1},
    {"id": 2, "image_id": 1, "category_id": 7, "bbox": [10, 1, 5, 5]},
    # Overruns its image by half a pixel (annotation tools round): clipped, not an error.
    {"id": 3, "image_id": 1, "category_id": 7, "bbox": [20, 10, 10.5, 10]},
  ]
  _write(tmp_path, _coco(anns, images=images), ("a.png", "b.png"))
  data = coco.read_coco(str(tmp_path), "train")
  assert data.crowd[0].tolist() == [True, False, False] and len(data.boxes[1]) == 0
  np.testing.assert_allclose(data.boxes[0][2], [20, 10, 30, 20])
  batch = coco.batch(data, [0, 1], 32, [False, False], 4)
  assert batch["crowd"][0].tolist() == [True, False, False, False]
  assert batch["box_valid"].sum(1).tolist() == [3, 0]


def test_letterbox_keeps_the_aspect_and_the_flip_moves_boxes_with_their_pixels():
  image = np.zeros((40, 80, 3), np.uint8)
  image[10:20, 5:25] = 255  # a white box at x 5-25, y 10-20
  box = np.array([[5, 10, 25, 20]], np.float32)
  for flip in (False, True):
    out, scale = coco.letterbox(image, 40, flip)
    assert scale == 0.5 and out.shape == (40, 40, 3)
    assert not out[20:].any()  # the padding: below the 20 resized rows
    placed, valid = coco.place_boxes(box, scale, 80, flip, 2)
    x1, y1, x2, y2 = placed[0].astype(int)
    assert valid.tolist() == [True, False]
    inside = out[y1:y2, x1:x2].astype(np.int64)
    assert inside.mean() > 200, (flip, placed[0])  # the pixels moved with the box
    # Nothing bright outside the box grown by the one pixel that bilinear resizing blurs.
    grown = out[max(y1 - 1, 0) : y2 + 1, max(x1 - 1, 0) : x2 + 1].astype(np.int64)
    assert out.astype(np.int64).sum() == grown.sum()
  assert coco.place_boxes(box, 0.5, 80, True, 1)[0][0].tolist() == [27.5, 5.0, 37.5, 10.0]


def test_training_batches_are_a_function_of_seed_and_step_and_flip_half(small):
  info = DatasetInfo(shapes.CLASSES, (96, 96, 3), (0.5,) * 3, (0.25,) * 3, "flip", max_boxes=8)
  batches = Batches(small, info, 4, seed=3)
  a, b = batches.train(1), batches.train(1)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  # Half the images flipped (drawn from (seed, step)); a flipped image's boxes mirrored.
  flips = [batches.train(s)["boxes"][:, 0, 0] for s in range(8)]
  unflipped = [small.boxes[i][0, 0] for s in range(8) for i in batches.train_indices(s)]
  moved = np.mean(~np.isclose(np.concatenate(flips), unflipped))
  assert 0.3 < moved < 0.7, moved
  assert set(a) == {"image", "boxes", "classes", "box_valid", "crowd"}
  # Two processes' halves are the one-process batch.
  halves = [
    Batches(small, info, 4, seed=3, process_index=i, process_count=2).train(1) for i in (0, 1)
  ]
  np.testing.assert_array_equal(np.concatenate([h["boxes"] for h in halves]), a["boxes"])


def test_coco_map_of_known_detections(small):
  records = []
  for i, (boxes, classes) in enumerate(zip(small.boxes, small.classes, strict=True)):
    for box, cls in zip(boxes, classes, strict=True):
      x1, y1, x2, y2 = (float(v) for v in box)
      records.append(
        {
          "image_id": int(small.image_ids[i]),
          "category_id": int(cls) + 1,
          "bbox": [x1, y1, x2 - x1, y2 - y1],
          "score": 0.9,
        }
      )
  perfect = coco_metric.coco_map(small, records)
  assert perfect["mAP"] == pytest.approx(1.0) and perfect["mAP50"] == pytest.approx(1.0)
  wrong_class = [{**r, "category_id": r["category_id"] % 3 + 1} for r in records]
  assert coco_metric.coco_map(small, wrong_class)["mAP"] == 0.0
  assert coco_metric.coco_map(small, [])["mAP"] == 0.0
  # The eval step's detections, in padded-input pixels at scale 0.5, map back to the images.
  n = len(small)
  batch = {
    "det_boxes": np.zeros((n, 8, 4), np.float32),
    "det_scores": np.zeros((n, 8), np.float32),
    "det_classes": np.zeros((n, 8), np.int32),
    "det_valid": np.zeros((n, 8), bool),
    "image_index": np.arange(n),
    "scale": np.full(n, 0.5, np.float32),
    "mask": np.ones(n, bool),
  }
  for i, (boxes, classes) in enumerate(zip(small.boxes, small.classes, strict=True)):
    batch["det_boxes"][i, : len(boxes)] = boxes * 0.5
    batch["det_scores"][i, : len(boxes)] = 0.8
    batch["det_classes"][i, : len(boxes)] = classes
    batch["det_valid"][i, : len(boxes)] = True
  again = coco_metric.coco_map(small, coco_metric.results(small, [batch]))
  assert again["mAP"] == pytest.approx(1.0)
