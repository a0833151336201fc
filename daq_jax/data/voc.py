"""Pascal VOC detection data: the XML annotations of a VOC year directory, read into the COCO
form the detector, its metric and its checks use (`coco.from_coco`).

    DIR/Annotations/<id>.xml   DIR/JPEGImages/<id>.jpg   DIR/ImageSets/Main/<split>.txt

DIR is one year's folder (`VOCdevkit/VOC2007`). The splits: with an `ImageSets/Main/test.txt`
(VOC2007 with its test set), training reads `trainval` and evaluation `test`; without one
(VOC2012), `train` and `val`, which do not overlap. VOC's boxes are 1-based and inclusive
(`xmin=1` is the first pixel column); they become COCO's [x, y, w, h] as
[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]. Objects marked `difficult` become
crowd annotations: never matched in training and ignored by the metric, as VOC's own metric
ignores them. The metric is COCO's mAP (pycocotools), not VOC's 11-point AP@.5.

The XML is parsed by the standard library's expat parser, which refuses entity expansion
attacks since expat 2.4.1 (Python 3.11 ships 2.5); a file it cannot parse is a one-line
error naming it.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

from daq_jax.data.coco import DetectionDataset, from_coco

CLASSES = (
  "aeroplane",
  "bicycle",
  "bird",
  "boat",
  "bottle",
  "bus",
  "car",
  "cat",
  "chair",
  "cow",
  "diningtable",
  "dog",
  "horse",
  "motorbike",
  "person",
  "pottedplant",
  "sheep",
  "sofa",
  "train",
  "tvmonitor",
)


def splits(root: str) -> tuple[str, str]:
  """(training split, evaluation split) of a VOC year directory."""
  main = os.path.join(root, "ImageSets", "Main")
  return (
    ("trainval", "test") if os.path.isfile(os.path.join(main, "test.txt")) else ("train", "val")
  )


def _text(node, tag: str, where: str) -> str:
  child = node.find(tag)
  if child is None or child.text is None or not child.text.strip():
    raise ValueError(f"{where}: no <{tag}>")
  return child.text.strip()


def _number(node, tag: str, where: str) -> float:
  value = _text(node, tag, where)
  try:
    return float(value)
  except ValueError:
    raise ValueError(f"{where}: <{tag}> is {value!r}, not a number") from None


def _read_xml(path: str, image_id: int, first_ann: int) -> tuple[dict, list[dict]]:
  """The COCO image entry and annotations of one VOC XML file."""
  try:
    root = ET.parse(path).getroot()
  except ET.ParseError as e:
    raise ValueError(f"{path}: not a VOC annotation (XML: {e})") from None
  size = root.find("size")
  if size is None:
    raise ValueError(f"{path}: no <size>")
  width, height = int(_number(size, "width", path)), int(_number(size, "height", path))
  stem = os.path.splitext(os.path.basename(path))[0]
  filename = (root.findtext("filename") or "").strip() or f"{stem}.jpg"
  image = {"id": image_id, "file_name": filename, "width": width, "height": height}
  annotations = []
  for k, obj in enumerate(root.findall("object")):
    where = f"{path}: object {k}"
    name = _text(obj, "name", where)
    if name not in CLASSES:
      raise ValueError(f"{where}: unknown class {name!r} (VOC's are {', '.join(CLASSES)})")
    box = obj.find("bndbox")
    if box is None:
      raise ValueError(f"{where}: no <bndbox>")
    x1, y1, x2, y2 = (_number(box, t, where) for t in ("xmin", "ymin", "xmax", "ymax"))
    if x2 < x1 or y2 < y1:
      raise ValueError(f"{where}: zero-area box (xmin, ymin, xmax, ymax) {[x1, y1, x2, y2]}")
    if x1 < 1 or y1 < 1 or x2 > width or y2 > height:
      raise ValueError(
        f"{where}: box (xmin, ymin, xmax, ymax) {[x1, y1, x2, y2]} lies outside its image "
        f"({width}x{height}, 1-based pixels)"
      )
    w, h = x2 - x1 + 1, y2 - y1 + 1
    annotations.append(
      {
        "id": first_ann + k,
        "image_id": image_id,
        "category_id": CLASSES.index(name) + 1,
        "bbox": [x1 - 1, y1 - 1, w, h],
        "area": w * h,
        "iscrowd": int((obj.findtext("difficult") or "0").strip() == "1"),
      }
    )
  return image, annotations


def read_voc(root: str, split: str) -> DetectionDataset:
  """The `split` (a file of `ImageSets/Main`) of a VOC year directory.

  Raises:
    FileNotFoundError: naming the missing split list, annotation or image folder.
    ValueError: one line naming the XML file (and the object): unparseable XML, no size,
      an unknown class, a zero-area box or one outside its image; a missing image file.
  """
  listing = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
  if not os.path.isfile(listing):
    raise FileNotFoundError(f"{listing} is missing (the VOC layout: ImageSets/Main/<split>.txt)")
  with open(listing) as f:
    ids = [line.split()[0] for line in f if line.strip()]
  images, annotations = [], []
  for image_id, stem in enumerate(ids, start=1):
    path = os.path.join(root, "Annotations", f"{stem}.xml")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path} is missing (listed in {listing})")
    image, anns = _read_xml(path, image_id, len(annotations) + 1)
    images.append(image)
    annotations.extend(anns)
  categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]
  coco = {"images": images, "annotations": annotations, "categories": categories}
  return from_coco(coco, listing, os.path.join(root, "JPEGImages"))
