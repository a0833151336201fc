"""Pascal VOC XML: a small VOC year folder the tests write (XML, JPEGs, split lists) read back
with its boxes moved from VOC's 1-based inclusive pixels to COCO's [x, y, w, h], `difficult`
as crowd, the splits chosen by the presence of a test list, the data config reading it whole,
and every bad file as one line naming the file and the object."""

import os

import numpy as np
import pytest
from PIL import Image

from daq_jax.data import DataConfig, sources, voc
from daq_jax.data.batches import Batches

OBJECT = """<object><name>{name}</name><difficult>{difficult}</difficult>
<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"""


def _xml(stem, width, height, objects, filename=True):
  body = "".join(OBJECT.format(**o) for o in objects)
  name = f"<filename>{stem}.jpg</filename>" if filename else ""
  return (
    f"<annotation>{name}<size><width>{width}</width><height>{height}</height>"
    f"<depth>3</depth></size>{body}</annotation>"
  )


def _obj(name="dog", x1=1, y1=1, x2=10, y2=20, difficult=0):
  return dict(name=name, x1=x1, y1=y1, x2=x2, y2=y2, difficult=difficult)


def write_voc(root, images: dict, lists: dict) -> str:
  """A VOC year folder: `images` {stem: (width, height, objects)}, `lists` {split: stems}."""
  for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
    os.makedirs(os.path.join(root, sub), exist_ok=True)
  rng = np.random.default_rng(0)
  for stem, (width, height, objects) in images.items():
    with open(os.path.join(root, "Annotations", f"{stem}.xml"), "w") as f:
      f.write(_xml(stem, width, height, objects))
    pixels = rng.integers(0, 255, (height, width, 3), np.uint8)
    Image.fromarray(pixels).save(os.path.join(root, "JPEGImages", f"{stem}.jpg"))
  for split, stems in lists.items():
    with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
      f.write("".join(f"{s}\n" for s in stems))
  return str(root)


IMAGES = {
  "000001": (40, 30, [_obj("dog", 1, 1, 10, 20), _obj("person", 5, 6, 40, 30, difficult=1)]),
  "000002": (32, 32, [_obj("car", 3, 4, 12, 16)]),
  "000003": (32, 24, []),  # no objects: kept, as COCO keeps images without boxes
}


def test_a_voc_folder_reads_back_in_coco_form(tmp_path):
  root = write_voc(tmp_path, IMAGES, {"train": ["000001", "000002"], "val": ["000003"]})
  assert voc.splits(root) == ("train", "val")
  data = voc.read_voc(root, "train")
  assert len(data) == 2 and data.class_names == voc.CLASSES
  assert data.category_ids == tuple(range(1, 21))
  # 1-based inclusive (1, 1, 10, 20) is the pixels 0..9 x 0..19: COCO [0, 0, 10, 20].
  np.testing.assert_array_equal(data.boxes[0], [[0, 0, 10, 20], [4, 5, 40, 30]])
  assert data.coco["annotations"][0]["bbox"] == [0.0, 0.0, 10.0, 20.0]
  assert [int(c) for c in data.classes[0]] == [voc.CLASSES.index(n) for n in ("dog", "person")]
  assert data.crowd[0].tolist() == [False, True]  # difficult
  assert data.paths[1].endswith(os.path.join("JPEGImages", "000002.jpg"))
  assert len(voc.read_voc(root, "val").boxes[0]) == 0


def test_with_a_test_list_training_reads_trainval_and_evaluation_test(tmp_path):
  root = write_voc(
    tmp_path, IMAGES, {"trainval": ["000001", "000002"], "test": ["000003", "000002"]}
  )
  assert voc.splits(root) == ("trainval", "test")
  cfg = DataConfig(name="voc", dir=root, image_size=48, max_boxes=4)
  train, evaluation, info = sources.load(cfg)
  assert (len(train), len(evaluation)) == (2, 2) and info.class_names == voc.CLASSES
  assert info.image_shape == (48, 48, 3) and info.is_detection
  batch = next(Batches(evaluation, info, 2).evaluation())
  assert batch["image"].shape == (2, 48, 48, 3) and batch["boxes"].shape == (2, 4, 4)


@pytest.mark.parametrize(
  "objects, message",
  [
    ([_obj("unicorn")], r"000001.xml: object 0: unknown class 'unicorn'"),
    ([_obj(), _obj(x1=9, x2=8)], r"000001.xml: object 1: zero-area box"),
    ([_obj(x2=41)], r"000001.xml: object 0: box .* lies outside its image \(40x30"),
    ([_obj(x1=0)], r"000001.xml: object 0: box .* lies outside its image"),
  ],
)
def test_a_bad_object_is_one_line_naming_the_file_and_the_object(tmp_path, objects, message):
  root = write_voc(tmp_path, {"000001": (40, 30, objects)}, {"train": ["000001"]})
  with pytest.raises(ValueError, match=message) as e:
    voc.read_voc(root, "train")
  assert "\n" not in str(e.value)


def test_broken_files_are_one_line_naming_them(tmp_path):
  root = write_voc(tmp_path, {"000001": (40, 30, [_obj()])}, {"train": ["000001", "000009"]})
  with pytest.raises(FileNotFoundError, match=r"000009.xml is missing \(listed in .*train.txt"):
    voc.read_voc(root, "train")
  with pytest.raises(FileNotFoundError, match=r"ImageSets.Main.val.txt is missing"):
    voc.read_voc(root, "val")
  with open(os.path.join(root, "ImageSets", "Main", "bad.txt"), "w") as f:
    f.write("000001\n")
  xml = os.path.join(root, "Annotations", "000001.xml")
  with open(xml, "w") as f:
    f.write("<annotation><size><width>40</width>")
  with pytest.raises(ValueError, match=r"000001.xml: not a VOC annotation \(XML: "):
    voc.read_voc(root, "bad")
  with open(xml, "w") as f:
    f.write("<annotation><filename>000001.jpg</filename></annotation>")
  with pytest.raises(ValueError, match=r"000001.xml: no <size>"):
    voc.read_voc(root, "bad")
  with open(xml, "w") as f:
    f.write(_xml("000001", 40, 30, [_obj()]))
  os.remove(os.path.join(root, "JPEGImages", "000001.jpg"))
  with pytest.raises(ValueError, match=r"image 1: file .*000001.jpg is missing"):
    voc.read_voc(root, "bad")


def test_an_entity_expansion_bomb_is_refused(tmp_path):
  root = write_voc(tmp_path, {"000001": (40, 30, [_obj()])}, {"train": ["000001"]})
  entities = '<!ENTITY a "aaaaaaaaaa">' + "".join(
    f'<!ENTITY {c} "{("&" + p + ";") * 10}">' for p, c in zip("abcdefgh", "bcdefghi")
  )
  with open(os.path.join(root, "Annotations", "000001.xml"), "w") as f:
    f.write(f'<?xml version="1.0"?><!DOCTYPE annotation [{entities}]><annotation>&i;</annotation>')
  with pytest.raises(ValueError, match=r"000001.xml: not a VOC annotation \(XML: "):
    voc.read_voc(root, "train")


def test_evaluate_reads_a_voc_folder_for_a_run_trained_on_voc(tmp_path):
  from types import SimpleNamespace

  from daq_jax.training import evaluation

  root = write_voc(tmp_path, IMAGES, {"trainval": ["000001"], "test": ["000002", "000003"]})
  cfg = SimpleNamespace(data=DataConfig(name="voc", dir=root, image_size=48))
  _, _, info = sources.load(cfg.data)
  dataset = evaluation._dataset(root, cfg, info)
  assert len(dataset) == 2 and dataset.source.endswith("test.txt")
