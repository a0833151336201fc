"""The embedded detection data: circles, squares and triangles on textured backgrounds,
generated deterministically in COCO format (no download).

Each image (96x96 by default) holds 1 to 5 objects of 3 classes, of sides 12 to 44 pixels,
in random colours, squares and triangles rotated; an object may overlap earlier ones (up to an
IoU of 0.4 between boxes), drawn over them. The backgrounds are a smooth random colour field
with pixel noise. A box is the object's tight bounding box. The train and test splits are
fixed: the same seed always draws the same images.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw

from daq_jax.data import coco

CLASSES = ("circle", "square", "triangle")
SPLITS = {"train": (0, 2048), "test": (1, 512)}  # (seed, images)
IMAGE_SIZE = 96


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
  coarse = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
  field = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), np.float32)
  noise = rng.normal(0, 12, (size, size, 3))
  return np.clip(field * 0.6 + 50 + noise, 0, 255).astype(np.uint8)


def _vertices(kind: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
  corners = 4 if kind == "square" else 3
  t = angle + 2 * math.pi * np.arange(corners) / corners
  return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], -1)


def _box_iou(a, b) -> float:
  w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = w * h
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union


def draw_image(seed: int, index: int, size: int = IMAGE_SIZE):
  """Image `index` of the split seeded `seed`: (image (size, size, 3) uint8, boxes (n, 4)
  x1 y1 x2 y2, classes (n,))."""
  rng = np.random.default_rng([seed, index])
  image = Image.fromarray(_background(rng, size))
  draw = ImageDraw.Draw(image)
  boxes, classes = [], []
  for _ in range(int(rng.integers(1, 6))):
    for _attempt in range(20):
      kind = int(rng.integers(len(CLASSES)))
      side = rng.uniform(12, 44) * size / 96
      r = side / 2 if CLASSES[kind] == "circle" else side / math.sqrt(2)
      if CLASSES[kind] == "triangle":
        r = side / math.sqrt(3)
      cx, cy = rng.uniform(r, size - r, 2)
      if CLASSES[kind] == "circle":
        box = (cx - r, cy - r, cx + r, cy + r)
      else:
        points = _vertices(CLASSES[kind], cx, cy, r, rng.uniform(0, 2 * math.pi))
        box = (*points.min(0), *points.max(0))
      box = tuple(float(np.clip(v, 0, size)) for v in box)
      if all(_box_iou(box, other) <= 0.4 for other in boxes):
        break
    else:
      continue
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    if CLASSES[kind] == "circle":
      draw.ellipse(box, fill=colour)
    else:
      draw.polygon([tuple(p) for p in points], fill=colour)
    boxes.append(box)
    classes.append(kind)
  return np.asarray(image), np.asarray(boxes, np.float32), np.asarray(classes, np.int32)


@functools.lru_cache(maxsize=4)
def shapes(split: str, size: int = IMAGE_SIZE) -> coco.DetectionDataset:
  """The `split` ("train": 2,048 images, "test": 512) as a `DetectionDataset` with its COCO
  annotation dict (category ids 1..3, image ids 1..N)."""
  seed, count = SPLITS[split]
  images, anns = [], []
  coco_images = []
  for i in range(count):
    image, boxes, classes = draw_image(seed, i, size)
    images.append(image)
    coco_images.append(
      {"id": i + 1, "file_name": f"{i + 1:06d}.png", "height": size, "width": size}
    )
    for box, cls in zip(boxes, classes, strict=True):
      x1, y1, x2, y2 = (float(v) for v in box)
      anns.append(
        {
          "id": len(anns) + 1,
          "image_id": i + 1,
          "category_id": int(cls) + 1,
          "bbox": [x1, y1, x2 - x1, y2 - y1],
          "area": (x2 - x1) * (y2 - y1),
          "iscrowd": 0,
        }
      )
  categories = [{"id": k + 1, "name": name} for k, name in enumerate(CLASSES)]
  data = {"images": coco_images, "annotations": anns, "categories": categories}
  return coco.from_coco(data, f"the embedded shapes ({split})", images=np.stack(images))
