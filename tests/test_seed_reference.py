"""Self-tests of tests/seed_reference.py (the seed's test path in torch).

Its pieces are checked against hand-computed cases, a numpy transcription of
py-faster-rcnn's ``nms_cpu`` and torchvision's NMS (boxes shifted to its
exclusive convention); the whole path must run on small random images and
give at most 100 finite detections inside the image.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytest.importorskip("cv2")

# pylint: disable-next=g-import-not-at-top,wrong-import-position
from tests import seed_reference as sr  # noqa: E402
# pylint: disable-next=g-import-not-at-top,wrong-import-position
from tests.weights.test_frcnn_pytorch import TorchFasterRCNN  # noqa: E402


def nms_cpu_numpy(dets, thresh):
  """py-faster-rcnn's nms_cpu (shrinking score order), written independently."""
  x1, y1, x2, y2, scores = (dets[:, i] for i in range(5))
  areas = (x2 - x1 + 1) * (y2 - y1 + 1)
  order = scores.argsort(kind="stable")[::-1]
  # argsort()[::-1] reverses ties; re-sort ties by index to match a stable
  # descending order.
  order = np.array(sorted(order, key=lambda i: (-scores[i], i)))
  keep = []
  while order.size > 0:
    i = order[0]
    keep.append(i)
    xx1 = np.maximum(x1[i], x1[order[1:]])
    yy1 = np.maximum(y1[i], y1[order[1:]])
    xx2 = np.minimum(x2[i], x2[order[1:]])
    yy2 = np.minimum(y2[i], y2[order[1:]])
    w = np.maximum(0.0, xx2 - xx1 + 1)
    h = np.maximum(0.0, yy2 - yy1 + 1)
    inter = w * h
    ovr = inter / (areas[i] + areas[order[1:]] - inter)
    order = order[np.where(ovr <= thresh)[0] + 1]
  return np.array(keep, np.int64)


def random_boxes(rng, n, size=100.0, max_wh=40.0, integer=False):
  xy = rng.uniform(0, size, (n, 2))
  wh = rng.uniform(1, max_wh, (n, 2))
  b = np.concatenate([xy, xy + wh], 1)
  if integer:
    b = np.round(b)
  return b.astype(np.float32)


# --- NMS --------------------------------------------------------------------


def test_nms_hand_computed():
  # Inclusive areas: A = [0, 0, 9, 9] is 10x10 = 100; B = [0, 0, 9, 4] is 10x5
  # = 50, inside A: IoU 50 / 100 = 0.5 (torchvision's convention: 9x4 / 9x9 =
  # 0.444). C = [5, 0, 14, 9]: overlap 5x10 = 50, IoU 50 / 150 = 1/3.
  boxes = np.array([[0, 0, 9, 9], [0, 0, 9, 4], [5, 0, 14, 9]], np.float32)
  scores = np.array([0.9, 0.8, 0.7], np.float32)
  assert sr.seed_nms(boxes, scores, 0.5).tolist() == [0, 1, 2]      # 0.5 > 0.5 no
  assert sr.seed_nms(boxes, scores, 0.5, suppress_equal=True).tolist() == [0, 2]
  assert sr.seed_nms(boxes, scores, 0.4).tolist() == [0, 2]
  assert sr.seed_nms(boxes, scores, 0.3).tolist() == [0]
  # At 0.45 the +1 matters: the seed suppresses B, torchvision keeps it.
  assert sr.seed_nms(boxes, scores, 0.45).tolist() == [0, 2]
  assert torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                             0.45).tolist() == [0, 1, 2]
  # Score order, not index order: B first suppresses A (0.5), keeps C (25 / 125).
  assert sr.seed_nms(boxes, np.array([0.1, 0.8, 0.7], np.float32), 0.4).tolist() == [1, 2]
  # IoU exactly 0.3 (30 / 100) vs the threshold 0.3, compared in float32 as
  # the seed's kernels do (torchvision compares with a double threshold).
  pair = np.array([[0, 0, 9, 9], [0, 0, 9, 2]], np.float32)
  assert sr.seed_nms(pair, scores[:2], 0.3).tolist() == [0, 1]
  assert sr.seed_nms(pair, scores[:2], 0.3, suppress_equal=True).tolist() == [0]
  # Ties: a stable order, the lower index first.
  assert sr.seed_nms(boxes, np.full(3, 0.5, np.float32), 0.3).tolist() == [0]
  assert sr.seed_nms(boxes[[2, 0]], np.full(2, 0.5, np.float32), 0.3).tolist() == [0]
  assert sr.seed_nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


@pytest.mark.parametrize("thresh", [0.3, 0.5, 0.7])
def test_nms_matches_nms_cpu_and_torchvision(thresh):
  rng = np.random.default_rng(int(thresh * 10))
  for trial in range(6):
    n = int(rng.integers(1, 400))
    boxes = random_boxes(rng, n, integer=trial % 2 == 0)
    scores = rng.random(n).astype(np.float32)
    got = sr.seed_nms(torch.from_numpy(boxes), torch.from_numpy(scores), thresh)
    want = nms_cpu_numpy(np.concatenate([boxes, scores[:, None]], 1), thresh)
    np.testing.assert_array_equal(got, want)
    if trial % 2 == 0:
      # torchvision on (x1, y1, x2 + 1, y2 + 1): the same IoU, its own kernel
      # (integer boxes: no rounding difference between the two forms; the
      # threshold rounded to float32 as the seed compares).
      tv = torchvision.ops.nms(
          torch.from_numpy(boxes + np.array([0, 0, 1, 1], np.float32)),
          torch.from_numpy(scores), float(np.float32(thresh))).numpy()
      np.testing.assert_array_equal(got, tv)
    assert 0 < len(got) <= n


# --- boxes and anchors --------------------------------------------------------


def test_generate_anchors_table():
  a = sr.generate_anchors()
  np.testing.assert_array_equal(a[:3], [[-84, -40, 99, 55], [-176, -88, 191, 103],
                                        [-360, -184, 375, 199]])
  np.testing.assert_array_equal(a[3:6], [[-56, -56, 71, 71], [-120, -120, 135, 135],
                                         [-248, -248, 263, 263]])
  np.testing.assert_array_equal(a[6:], [[-36, -80, 51, 95], [-80, -168, 95, 183],
                                        [-168, -344, 183, 359]])
  assert sr.generate_anchors(scales=(4, 8, 16, 32)).shape == (12, 4)


def test_bbox_transform_inv_hand_computed():
  # Box [10, 20, 29, 59]: w = 20, h = 40, ctr = (20, 40).
  boxes = torch.tensor([[[10.0, 20.0, 29.0, 59.0]]])
  zero = sr.bbox_transform_inv(boxes, torch.zeros(1, 1, 4))
  # No "- 1": x2 = 20 + 10 = 30, one more than the box's 29.
  np.testing.assert_allclose(zero[0, 0].numpy(), [10, 20, 30, 60])
  # dx = 0.5 (ctr_x 30), dy = -0.25 (ctr_y 30), dw = log 2 (w 40), dh = 0.
  d = torch.tensor([[[0.5, -0.25, float(np.log(2.0)), 0.0,
                      0.0, 0.0, 0.0, float(np.log(0.5))]]])
  out = sr.bbox_transform_inv(boxes, d)[0, 0].numpy()
  np.testing.assert_allclose(out, [10, 10, 50, 50, 10, 30, 30, 50], rtol=1e-6)
  # clip_boxes: x to [0, W - 1], y to [0, H - 1] of im_info (H, W, s).
  clipped = sr.clip_boxes(torch.tensor([[[-5.0, -1.0, 70.0, 33.0]]]),
                          torch.tensor([[30.0, 64.0, 1.0]]))
  np.testing.assert_array_equal(clipped[0, 0].numpy(), [0, 0, 63, 29])


# --- the model tree -------------------------------------------------------------


def test_tree_is_faster_rcnn_pytorch_and_round_trips(tmp_path):
  model = sr.make_seed_detector(5, seed=1)
  want = {k: tuple(v.shape) for k, v in TorchFasterRCNN(5).state_dict().items()}
  got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
  assert got == want
  path = sr.save_seed_checkpoint(model, tmp_path / "faster_rcnn_1_1_1.pth",
                                 "cat,dog,bird,fish")
  ck = torch.load(path, map_location="cpu", weights_only=False)
  assert ck["pooling_mode"] == "align" and ck["class_agnostic"] is False
  loaded, meta = sr.load_seed_checkpoint(path)
  assert meta["pooling_mode"] == "align"
  for k, v in model.state_dict().items():
    torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
  with pytest.raises(ValueError, match="classes"):
    sr.save_seed_checkpoint(model, tmp_path / "x.pth", ["a", "b"])
  # Another architecture is read from the keys.
  other = sr.make_seed_detector(3, class_agnostic=True, layers=(1, 1, 2, 1),
                                widths=(4, 8, 12, 16), rpn_channels=8,
                                num_anchors=12)
  back, _ = sr.load_seed_checkpoint(other.state_dict())
  assert (back.n_classes, back.class_agnostic, back.num_anchors) == (3, True, 12)
  assert {k: v.shape for k, v in back.state_dict().items()} == {
      k: v.shape for k, v in other.state_dict().items()}


# --- the whole path ---------------------------------------------------------------


def check_dets(out, h, w, k):
  dets = out["dets"]
  assert len(dets) == k and dets[0].shape == (0, 5)
  assert 0 < out["num_dets"] <= 100
  s = out["im_scale"]
  assert out["im_info"][2] == np.float32(s)
  x_max = (out["im_info"][1] - 1) / out["im_info"][2]
  y_max = (out["im_info"][0] - 1) / out["im_info"][2]
  assert x_max <= w and y_max <= h
  for d in dets[1:]:
    assert d.dtype == np.float32 and d.shape[1] == 5
    assert np.all(np.isfinite(d))
    assert np.all(d[:, :4] >= 0)
    assert np.all(d[:, [0, 2]] <= x_max * (1 + 1e-6))
    assert np.all(d[:, [1, 3]] <= y_max * (1 + 1e-6))
    assert np.all(d[:, 2] >= d[:, 0]) and np.all(d[:, 3] >= d[:, 1])
    assert np.all(np.diff(d[:, 4]) <= 0)          # descending score
    assert np.all(d[:, 4] > 0)
  if out["image_thresh"] is not None:
    assert min(d[:, 4].min() for d in dets[1:] if len(d)) >= out["image_thresh"]


@pytest.fixture(scope="module")
def model():
  return sr.make_seed_detector(5, seed=3)


def test_full_path_seed_defaults(model):
  """600 short side: ~16k anchors, so pre-NMS top-6000 and post-NMS 300 bind."""
  rng = np.random.default_rng(0)
  h, w = 64, 81
  im = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  cfg = sr.SeedTestConfig()
  out = sr.seed_detect(model, im, cfg)
  assert out["blob"].shape == (1, 3, 600, 759)
  assert out["base_feat"].shape[2:] == (38, 48)
  assert out["rois"].shape == (300, 5) and out["num_proposals"] == 300
  assert out["cls_prob"].shape == (300, 5) and out["bbox_pred"].shape == (300, 20)
  # Peaked class scores: the weights make softmax far from uniform.
  assert out["cls_prob"].max(1).mean() > 0.6
  check_dets(out, h, w, 5)
  # 4 classes x <= 300 survivors > 100: the image-wide cap applied.
  assert out["image_thresh"] is not None and out["num_dets"] == 100


def test_full_path_padding_pool_and_agnostic():
  """Few anchors: fewer than 300 proposals, the zero rows go on as the seed's."""
  model = sr.make_seed_detector(4, class_agnostic=True, seed=5)
  rng = np.random.default_rng(1)
  h, w = 50, 37
  im = rng.integers(0, 256, (h, w), dtype=np.uint8)       # grey: 3 channels
  cfg = sr.SeedTestConfig(scale=100, pooling_mode="pool", max_per_image=20)
  out = sr.seed_detect(model, im, cfg)
  n = out["num_proposals"]
  assert 0 < n < 300
  assert np.all(out["rois"][n:] == 0) and np.any(out["rois"][:n, 1:] != 0)
  assert out["bbox_pred"].shape == (300, 4)
  # The padded rows all have the same scores (identical zero RoIs).
  np.testing.assert_array_equal(out["cls_prob"][n:], np.repeat(out["cls_prob"][n:n + 1], 300 - n, 0))
  check_dets(out, h, w, 4)
  assert out["num_dets"] <= 20
  with pytest.raises(NotImplementedError, match="crop_fn"):
    sr.seed_detect(model, im, sr.SeedTestConfig(scale=100, pooling_mode="crop"))
  # The crop hook: any pooling with the right shape is accepted.
  crop = lambda feat, rois: torchvision.ops.roi_align(feat, rois, (7, 7), 1 / 16, 2)
  out = sr.seed_detect(model, im, sr.SeedTestConfig(scale=100, pooling_mode="crop"),
                       crop_fn=crop)
  check_dets(out, h, w, 4)


def test_stages_agree_with_their_own_pieces(model):
  """seed_detect = prep + forward + postprocess; proposals = anchors + decode."""
  rng = np.random.default_rng(2)
  im = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
  cfg = sr.SeedTestConfig(scale=96, rpn_post_nms_top_n=50)
  blob, im_info, s = sr.seed_prep_im_for_blob(im, cfg)
  assert s == 96 / 40 and tuple(blob.shape) == (1, 3, 96, 125)
  # The seed subtracts the means before resizing: a flat image stays flat.
  flat, _, _ = sr.seed_prep_im_for_blob(np.full((40, 52, 3), 100, np.uint8), cfg)
  np.testing.assert_allclose(flat[0, :, 0, 0].numpy(),
                             100 - sr.PIXEL_MEANS[0, 0], rtol=1e-6)
  fwd = sr.seed_forward(model, blob, im_info, cfg)
  # The top proposal is the decoded, clipped anchor with the highest fg score.
  a = 9
  prob, box = fwd["rpn_cls_prob"][0], fwd["rpn_bbox_pred"][0]
  fh, fw = prob.shape[1:]
  fg = prob[a:].permute(1, 2, 0).reshape(-1)
  best = int(torch.argmax(fg))
  cell, anchor = divmod(best, a)
  y, x = divmod(cell, fw)
  anc = torch.tensor(sr.generate_anchors()[anchor] + 16 * np.array([x, y, x, y]),
                     dtype=torch.float32)
  delta = box[4 * anchor:4 * anchor + 4, y, x]
  want = sr.clip_boxes(sr.bbox_transform_inv(anc.view(1, 1, 4), delta.view(1, 1, 4)),
                       im_info)[0, 0]
  torch.testing.assert_close(fwd["rois"][0, 0, 1:], want)
  post = sr.seed_postprocess(fwd["rois"], fwd["cls_prob"], fwd["bbox_pred"],
                             im_info, False, cfg)
  whole = sr.seed_detect(model, im, cfg)
  for d1, d2 in zip(post["dets"], whole["dets"]):
    np.testing.assert_array_equal(d1, d2)
  # The class-1 detections are the NMS survivors of the decoded boxes / scale.
  sc = post["scores"][:, 1]
  bx = post["pred_boxes"][:, 4:8]
  keep = nms_cpu_numpy(np.concatenate([bx, sc[:, None]], 1)[sc > 0], 0.3)
  want = np.concatenate([bx, sc[:, None]], 1)[sc > 0][keep]
  got = post["dets"][1]
  if post["image_thresh"] is not None:
    want = want[want[:, 4] >= post["image_thresh"]]
  np.testing.assert_array_equal(got, want)
