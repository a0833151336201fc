"""COCO's box metric through pycocotools (the reference implementation; not our own mAP):
mAP@[.5:.95], mAP@.5, mAP@.75 and AP for small, medium and large objects."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np

from daq_jax.data.coco import DetectionDataset

# pycocotools' `stats` in the order COCOeval.summarize() prints them (the first six: AP).
STATS = ("mAP", "mAP50", "mAP75", "AP_small", "AP_medium", "AP_large")


def results(dataset: DetectionDataset, batches: list[dict]) -> list[dict]:
  """COCO result records ({image_id, category_id, bbox [x, y, w, h], score}) in the original
  images' pixels, from the eval step's `detections` of every batch."""
  out = []
  for b in batches:
    for i in np.flatnonzero(b["mask"]):
      index, scale = int(b["image_index"][i]), float(b["scale"][i])
      height, width = dataset.sizes[index]
      keep = b["det_valid"][i]
      boxes = b["det_boxes"][i][keep] / scale
      boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
      boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
      for box, score, cls in zip(boxes, b["det_scores"][i][keep], b["det_classes"][i][keep]):
        x1, y1, x2, y2 = (float(v) for v in box)
        out.append(
          {
            "image_id": int(dataset.image_ids[index]),
            "category_id": int(dataset.category_ids[int(cls)]),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(score),
          }
        )
  return out


def coco_map(dataset: DetectionDataset, detections: list[dict]) -> dict[str, float]:
  """COCO's box AP of `detections` (`results`' records) against the dataset's ground truth,
  from pycocotools' COCOeval; every AP is 0 when there is no detection at all."""
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval

  if not detections:
    return dict.fromkeys(STATS, 0.0)
  with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
    gt = COCO()
    gt.dataset = copy.deepcopy(dataset.coco)
    gt.dataset.setdefault("info", {})
    for ann in gt.dataset["annotations"]:  # area and iscrowd as COCOeval reads them
      ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
      ann.setdefault("iscrowd", 0)
    gt.createIndex()
    dt = gt.loadRes(detections)
    evaluator = COCOeval(gt, dt, "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  # -1 marks "no ground truth of that size": reported as 0 would mislead, so it stays NaN.
  return {k: float(v) if v >= 0 else float("nan") for k, v in zip(STATS, evaluator.stats)}
