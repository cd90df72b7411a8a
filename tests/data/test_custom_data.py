"""Your own data: COCO json + image folder anywhere, a single VOC-style
folder with its classes read from the xml, datasets registered from Python;
and evaluation never writing the synthetic dataset."""
import json
import os

import numpy as np
import pytest

from frcnn_jax.data import catalog
from frcnn_jax.data import datasets
from frcnn_jax.data import loader as loader_lib
from frcnn_jax.data import records as S
from frcnn_jax.data import testing
from frcnn_jax.data import voc


def test_coco_json_and_image_folder_anywhere(tmp_path):
  files = testing.write_user_coco(str(tmp_path / "mine"), num_train=5,
                                  num_val=3)
  c = testing.tiny_data_config(str(tmp_path / "unused"))
  c.name = "coco"
  c.train_json, c.train_images = files["train_json"], files["images"]
  c.val_json = files["val_json"]           # images default to the json's dir
  src = datasets.build_source(c, c.train_split)
  assert len(src) == 5 and src.class_names[1:] == ["red box", "blue box"]
  assert src.cat_ids == [0, 10, 20]
  assert all(r.path.startswith(files["images"]) for r in src.records)
  r = src.records[0]
  assert src.load_image(r).shape == (48, 80, 3)
  # COCO [x, y, w, h] -> inclusive corners.
  ann = json.load(open(files["train_json"]))["annotations"][0]
  x, y, w, h = ann["bbox"]
  assert [x, y, x + w - 1, y + h - 1] in r.boxes.tolist()
  with pytest.raises(S.ImageLoadError, match="val_0006.jpg"):
    datasets.build_source(c, c.val_split)   # not in mine/, the json's folder
  c.val_images = files["images"]
  assert len(datasets.build_source(c, c.val_split)) == 3
  assert not os.path.exists(c.root)        # the root layout is not touched


def _voc_folder(root, items, image_set="trainval", ext=".jpg"):
  for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
    os.makedirs(os.path.join(root, sub), exist_ok=True)
  with open(os.path.join(root, "ImageSets", "Main", f"{image_set}.txt"),
            "w") as f:
    f.write("".join(f"{n}\n" for n, _, _ in items))
  for name, size, objects in items:
    with open(os.path.join(root, "Annotations", f"{name}.xml"), "w") as f:
      f.write(testing.voc_xml(name, size, objects))
    testing.write_image(os.path.join(root, "JPEGImages", name + ext),
                        size=size)


def test_single_voc_folder_with_classes_from_its_annotations(tmp_path):
  root = str(tmp_path / "labelimg")
  _voc_folder(root, [("a1", (30, 40), [("Zebra", (2, 3, 10, 12), 0)]),
                     ("a2", (30, 40), [("apple", (1, 1, 5, 5), 0),
                                       ("zebra", (5, 5, 9, 9), 1)])],
              ext=".png")
  _voc_folder(root, [("b1", (30, 40), [("cherry", (1, 1, 8, 8), 0)])],
              image_set="test")
  assert voc.is_single_folder(root)
  c = testing.tiny_data_config(root, name="voc")
  train = datasets.build_source(c, "trainval")
  test = datasets.build_source(c, "test")
  # Every name of the folder, sorted, for every split.
  assert train.class_names[1:] == test.class_names[1:] == [
      "apple", "cherry", "zebra"]
  assert train.records[0].path.endswith("a1.png")
  assert train.records[0].boxes.tolist() == [[1, 2, 9, 11]]   # 1-based -> 0
  assert train.records[1].difficult.tolist() == [False, True]
  c.class_names = ("zebra", "apple")       # given: that order, others dropped
  src = datasets.build_source(c, "test")
  assert src.class_names[1:] == ["zebra", "apple"]
  assert len(src.records[0].boxes) == 0
  assert src.stats["box_unknown_category"] == 1


def test_registered_dataset(tmp_path):
  img = str(tmp_path / "p")
  testing.write_image(os.path.join(img, "0.png"), size=(40, 60))
  testing.write_image(os.path.join(img, "1.png"), size=(50, 30))
  records = {
      "train": [
          {"file_name": "0.png", "boxes": [[2, 3, 20, 30], [5, 5, 9, 9]],
           "labels": ["dog", 1]},
          {"file_name": "1.png", "image_id": 42, "height": 50, "width": 30,
           "boxes": [[1, 1, 10, 10], [np.nan, 0, 3, 3], [0, 0, 4, 4]],
           "labels": ["cat", "cat", "horse"], "difficult": [1, 0, 0]},
      ],
      "xywh": [{"file_name": "0.png", "boxes": [[2, 3, 10, 20]],
                "labels": [2]}],
  }
  catalog.register_dataset("pets", records, ["cat", "dog"], image_root=img)
  try:
    c = testing.tiny_data_config(str(tmp_path / "unused"), name="pets")
    src = datasets.build_source(c, "train")
    assert src.class_names == ["__background__", "cat", "dog"]
    r0, r1 = src.records
    assert (r0.image_id, r0.height, r0.width) == (0, 40, 60)  # from the file
    assert r0.classes.tolist() == [2, 1]
    assert r1.image_id == 42 and r1.classes.tolist() == [1]
    assert r1.difficult.tolist() == [True]
    assert src.stats["box_non_finite"] == 1
    assert src.stats["box_unknown_category"] == 1
    gt = src.coco_gt()
    assert len(gt.getAnnIds()) == 3 and gt.loadAnns(
        gt.getAnnIds(imgIds=[42]))[0]["iscrowd"] == 1
    assert "pets" in datasets.known_names()
    catalog.register_dataset("pets2", records, ["cat", "dog"], image_root=img,
                             box_format="xywh")
    xywh = datasets.build_source(testing.tiny_data_config("", name="pets2"),
                                 "xywh")
    assert xywh.records[0].boxes.tolist() == [[2, 3, 11, 22]]
    # It trains: one batch of the train loader.
    loader = loader_lib.build_train_loader(c, seed=0, global_batch_size=2)
    batch = next(loader)
    loader.close()
    assert batch["image"].shape[0] == 2 and batch["gt_valid"].any()
    with pytest.raises(ValueError, match="already registered"):
      catalog.register_dataset("pets", records, ["cat"])
    with pytest.raises(ValueError, match="built-in"):
      catalog.register_dataset("coco", records, ["cat"])
    with pytest.raises(S.DataError, match="no split 'val'"):
      datasets.build_source(c, "val")
  finally:
    catalog.unregister_dataset("pets")
    catalog.unregister_dataset("pets2")
  with pytest.raises(ValueError, match="registered dataset"):
    datasets.build_source(c, "train")


def test_bad_registered_records_name_the_record(tmp_path):
  testing.write_image(str(tmp_path / "a.png"), size=(10, 10))
  for bad, msg in (
      ([{"boxes": []}], "file_name"),
      ([{"file_name": "a.png", "boxes": [[1, 2, 3]], "labels": ["x"]}],
       "shape"),
      ([{"file_name": "a.png", "boxes": [[1, 1, 3, 3]], "labels": []}],
       "differ in length"),
      ([{"file_name": "a.png"}, {"file_name": "a.png", "image_id": 0}],
       "duplicate image_id"),
  ):
    catalog.register_dataset("bad", {"s": bad}, ["x"],
                             image_root=str(tmp_path), overwrite=True)
    with pytest.raises(S.DataError, match=msg):
      datasets.build_source(testing.tiny_data_config("", name="bad"), "s")
  catalog.unregister_dataset("bad")


def test_evaluation_never_writes_the_synthetic_dataset(tmp_path):
  c = testing.tiny_data_config(str(tmp_path / "shapes"))
  with pytest.raises(S.DataError, match="only training writes one"):
    loader_lib.build_eval_loader(c, "val", batch_size=2, generate=False)
  assert not os.path.exists(c.root)
  datasets.build_source(c, "train")                    # training writes it
  e = loader_lib.build_eval_loader(c, "val", batch_size=2, generate=False)
  assert e.num_images == 7
