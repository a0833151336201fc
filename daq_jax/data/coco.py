"""COCO-format detection data: the official layout read and checked, and the batches of boxes.

    DIR/annotations/instances_train2017.json   DIR/train2017/*.jpg
    DIR/annotations/instances_val2017.json     DIR/val2017/*.jpg

Every image is resized with its aspect ratio kept (the longer side to the input size), padded
at the bottom and right to the square input, and flipped (boxes too) in training. Crowd
annotations (`iscrowd` 1) are kept as crowd: they are never matched, and anchors inside them
are ignored, as COCO's evaluation ignores detections there. Images without boxes stay in both
splits (in evaluation their detections are false positives, as in COCO's).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from PIL import Image

# A box may overrun its image by this many pixels (rounding in the annotation tools); it is
# clipped. Beyond it, it is an error.
BOX_TOLERANCE = 1.0


@dataclasses.dataclass(frozen=True)
class DetectionDataset:
  """Images and their boxes, with the COCO ground truth the metric is computed against.

  Attributes:
    images: (N, H, W, 3) uint8 in memory, or None when read from `paths`.
    paths: one file per image, or None.
    sizes: (N, 2) int, each image's (height, width).
    boxes, classes, crowd: per image: (n, 4) float32 (x1, y1, x2, y2) pixels, (n,) int32
      0-based class indices, (n,) bool.
    image_ids: (N,) the COCO image ids.
    category_ids: the COCO category id of each class index.
    class_names: one name per class.
    coco: the COCO annotation dict of these images (pycocotools' ground truth).
    source: the annotation file, or "" for generated data.
  """

  images: np.ndarray | None
  paths: tuple[str, ...] | None
  sizes: np.ndarray
  boxes: tuple[np.ndarray, ...]
  classes: tuple[np.ndarray, ...]
  crowd: tuple[np.ndarray, ...]
  image_ids: np.ndarray
  category_ids: tuple[int, ...]
  class_names: tuple[str, ...]
  coco: dict
  source: str = ""

  def __len__(self) -> int:
    return len(self.image_ids)

  @property
  def max_boxes(self) -> int:
    return max((len(b) for b in self.boxes), default=0)

  def take(self, indices) -> DetectionDataset:
    indices = np.asarray(indices)
    keep = {int(self.image_ids[i]) for i in indices}
    coco = {
      **self.coco,
      "images": [im for im in self.coco["images"] if im["id"] in keep],
      "annotations": [a for a in self.coco["annotations"] if a["image_id"] in keep],
    }
    pick = lambda seq: tuple(seq[i] for i in indices)
    return dataclasses.replace(
      self,
      images=None if self.images is None else self.images[indices],
      paths=None if self.paths is None else pick(self.paths),
      sizes=self.sizes[indices],
      boxes=pick(self.boxes),
      classes=pick(self.classes),
      crowd=pick(self.crowd),
      image_ids=self.image_ids[indices],
      coco=coco,
    )


def _fail(where: str, what: str):
  raise ValueError(f"{where}: {what}")


def from_coco(coco: dict, where: str, image_dir: str | None = None, images=None):
  """The `DetectionDataset` of a COCO annotation dict, every field checked.

  Args:
    where: the annotation file (named in every error).
    image_dir: the folder of the images' `file_name`s (checked to exist), or None with
      `images`, the decoded images in the order of `coco["images"]`.

  Raises:
    ValueError: one line naming the file and the image or annotation id: a box outside its
      image, a zero-area box, an unknown category id, an unknown image id, a missing image
      file, no categories.
  """
  for key in ("images", "annotations", "categories"):
    if not isinstance(coco.get(key), list):
      _fail(where, f"no {key!r} list: not a COCO instances file")
  categories = sorted(coco["categories"], key=lambda c: c["id"])
  if not categories:
    _fail(where, "no categories: a detector needs at least one class")
  category_index = {c["id"]: i for i, c in enumerate(categories)}
  index, sizes, paths = {}, [], []
  for i, im in enumerate(coco["images"]):
    try:
      image_id, height, width, name = im["id"], int(im["height"]), int(im["width"]), im["file_name"]
    except (KeyError, TypeError, ValueError) as e:
      _fail(where, f"image {im.get('id', i)!r} lacks a valid {e}")
    if height <= 0 or width <= 0:
      _fail(where, f"image {image_id} has size {width}x{height}")
    if image_id in index:
      _fail(where, f"image id {image_id} is listed twice")
    index[image_id] = i
    sizes.append((height, width))
    if image_dir is not None:
      path = os.path.join(image_dir, name)
      if not os.path.isfile(path):
        _fail(where, f"image {image_id}: file {path} is missing")
      paths.append(path)
  boxes = [[] for _ in index]
  classes = [[] for _ in index]
  crowd = [[] for _ in index]
  for ann in coco["annotations"]:
    ann_id = ann.get("id")
    if ann.get("image_id") not in index:
      _fail(where, f"annotation {ann_id}: unknown image id {ann.get('image_id')!r}")
    if ann.get("category_id") not in category_index:
      _fail(
        where,
        f"annotation {ann_id}: unknown category id {ann.get('category_id')!r} (known: "
        f"{sorted(category_index)})",
      )
    i = index[ann["image_id"]]
    height, width = sizes[i]
    try:
      x, y, w, h = (float(v) for v in ann["bbox"])
    except (KeyError, TypeError, ValueError):
      _fail(where, f"annotation {ann_id}: bbox {ann.get('bbox')!r} is not [x, y, w, h]")
    if not (w > 0 and h > 0):
      _fail(where, f"annotation {ann_id}: zero-area box {[x, y, w, h]}")
    t = BOX_TOLERANCE
    if x < -t or y < -t or x + w > width + t or y + h > height + t:
      _fail(
        where,
        f"annotation {ann_id}: box {[x, y, w, h]} lies outside its image {ann['image_id']} "
        f"({width}x{height})",
      )
    boxes[i].append((max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)))
    classes[i].append(category_index[ann["category_id"]])
    crowd[i].append(bool(ann.get("iscrowd", 0)))
  return DetectionDataset(
    images=images,
    paths=tuple(paths) if image_dir is not None else None,
    sizes=np.asarray(sizes, np.int64).reshape(-1, 2),
    boxes=tuple(np.asarray(b, np.float32).reshape(-1, 4) for b in boxes),
    classes=tuple(np.asarray(c, np.int32) for c in classes),
    crowd=tuple(np.asarray(c, bool) for c in crowd),
    image_ids=np.asarray([im["id"] for im in coco["images"]], np.int64),
    category_ids=tuple(c["id"] for c in categories),
    class_names=tuple(str(c.get("name", c["id"])) for c in categories),
    coco=coco,
    source=where,
  )


def annotation_file(root: str, split: str) -> str:
  return os.path.join(root, "annotations", f"instances_{split}2017.json")


def read_coco(root: str, split: str) -> DetectionDataset:
  """The `split` ("train" or "val") of a COCO-layout directory.

  Raises:
    FileNotFoundError: naming the missing annotation file or image folder.
    ValueError: a file that is not JSON, or any bad annotation (`from_coco`).
  """
  path = annotation_file(root, split)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is missing (the COCO layout: annotations/instances_*.json)")
  image_dir = os.path.join(root, f"{split}2017")
  if not os.path.isdir(image_dir):
    raise FileNotFoundError(f"{image_dir} is missing (the images of {path})")
  try:
    with open(path) as f:
      coco = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not JSON ({e})") from None
  if not isinstance(coco, dict):
    raise ValueError(f"{path}: not a COCO instances file (a JSON object)")
  return from_coco(coco, path, image_dir)


def write_coco(dataset: DetectionDataset, root: str, split: str) -> str:
  """Writes an in-memory dataset in the COCO layout under `root` (PNG images): the generated
  shapes as a user's data would come. Returns the annotation file."""
  image_dir = os.path.join(root, f"{split}2017")
  os.makedirs(image_dir, exist_ok=True)
  os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
  for im, image in zip(dataset.coco["images"], dataset.images, strict=True):
    Image.fromarray(image).save(os.path.join(image_dir, im["file_name"]))
  path = annotation_file(root, split)
  with open(path, "w") as f:
    json.dump(dataset.coco, f)
  return path


def letterbox(image: np.ndarray, size: int, flip: bool) -> tuple[np.ndarray, float]:
  """`image` resized so that its longer side is `size` (aspect ratio kept), flipped
  left-right if `flip`, padded with zeros at the bottom and right to (size, size); and the
  scale it was resized by."""
  height, width = image.shape[:2]
  scale = size / max(height, width)
  new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
  if (new_h, new_w) != (height, width):
    image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
  if flip:
    image = image[:, ::-1]
  out = np.zeros((size, size, 3), np.uint8)
  out[:new_h, :new_w] = image
  return out, scale


def load_image(path: str, size: int, flip: bool) -> tuple[np.ndarray, float]:
  """The RGB image at `path`, letterboxed (`letterbox`); for the decoding workers."""
  with Image.open(path) as im:
    return letterbox(np.asarray(im.convert("RGB")), size, flip)


def place_boxes(boxes, scale: float, width: float, flip: bool, max_boxes: int):
  """An image's boxes in the letterboxed input: scaled, mirrored when flipped (`width` the
  image's original width), and padded to `max_boxes` rows; (boxes, valid)."""
  placed = np.zeros((max_boxes, 4), np.float32)
  b = boxes * scale
  if flip:
    w = width * scale
    b = np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], -1)
  placed[: len(b)] = b
  valid = np.zeros(max_boxes, bool)
  valid[: len(b)] = True
  return placed, valid


def batch(dataset: DetectionDataset, indices, size: int, flips, max_boxes: int, decoder=None):
  """The batch of `indices`: `image`, `boxes`, `classes`, `box_valid`, `crowd`, and
  `image_index` (the dataset index of each image) and `scale` (its resize factor)."""
  if dataset.images is not None:
    out = [letterbox(dataset.images[i], size, f) for i, f in zip(indices, flips, strict=True)]
  else:
    paths = [dataset.paths[i] for i in indices]
    args = (paths, [size] * len(paths), list(flips))
    out = decoder.map(load_image, *args) if decoder is not None else list(map(load_image, *args))
  images = np.stack([image for image, _ in out])
  scales = np.asarray([scale for _, scale in out], np.float32)
  boxes, valid, classes, crowd = [], [], [], []
  for i, flip, scale in zip(indices, flips, scales, strict=True):
    b, v = place_boxes(dataset.boxes[i], float(scale), float(dataset.sizes[i][1]), flip, max_boxes)
    boxes.append(b)
    valid.append(v)
    c = np.zeros(max_boxes, np.int32)
    c[: len(dataset.classes[i])] = dataset.classes[i]
    classes.append(c)
    k = np.zeros(max_boxes, bool)
    k[: len(dataset.crowd[i])] = dataset.crowd[i]
    crowd.append(k)
  return {
    "image": images,
    "boxes": np.stack(boxes),
    "classes": np.stack(classes),
    "box_valid": np.stack(valid),
    "crowd": np.stack(crowd),
    "image_index": np.asarray(indices, np.int32),
    "scale": scales,
  }
