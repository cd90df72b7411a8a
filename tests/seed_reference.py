"""faster-rcnn.pytorch's test path, transcribed in plain PyTorch (ResNet C4).

The reference our converted detector is compared with: one image in, the
seed's detections out, computed the way its ``test_net.py`` (pytorch-1.0 /
master branch) and its model's ``forward`` in eval mode compute them, on a
module tree with the seed's parameter names (``RCNN_base``, ``RCNN_top``,
``RCNN_rpn.RPN_Conv`` / ``RPN_cls_score`` / ``RPN_bbox_pred``,
``RCNN_cls_score``, ``RCNN_bbox_pred``), so its ``state_dict`` is a
faster-rcnn.pytorch checkpoint and a real checkpoint loads into it
(``load_seed_checkpoint``). The tree reuses ``TorchResNet`` (caffe variant:
stride in the 1x1, max pool without padding, ceil mode) and ``TorchRPN``
(the seed's reshape-softmax) of tests/test_weights_*.py.

The path, stage by stage (functions of the same names below):

1. ``seed_prep_im_for_blob``: ``float32`` BGR, ``im -= PIXEL_MEANS`` (a
   float64 array, in place, as the seed), ``cv2.resize(fx=fy=im_scale,
   INTER_LINEAR)`` with ``im_scale = scale / min(h, w)`` (no ``MAX_SIZE`` cap:
   it is commented out in the seed; ``max_size`` gives py-faster-rcnn's cap);
   ``im_info = float32 (H, W, im_scale)`` of the resized image; NCHW blob.
2. ``RCNN_base`` -> RPN: 3x3 conv + ReLU, cls score with the reshape-softmax
   (channels ``0..A-1`` background, ``A..2A-1`` foreground of anchor ``a``),
   bbox pred (channels ``4a..4a+3``).
3. ``seed_proposals`` (``_ProposalLayer``, TEST keys): anchors
   ``generate_anchors(16, ratios, scales)`` shifted over the feature map
   (shift-major: index ``(y * W + x) * A + a``), ``bbox_transform_inv``
   (the seed's: ``x2 = ctr + 0.5 w``, no ``- 1``; no clamp of ``dw, dh``),
   ``clip_boxes`` to ``[0, W - 1] x [0, H - 1]``, sort by foreground score,
   top ``RPN_PRE_NMS_TOP_N`` (6000), NMS 0.7, top ``RPN_POST_NMS_TOP_N`` (300);
   no min-size filter (commented out in the seed). The RoIs are
   ``[post_nms_top_n, 5]`` (batch index, box), the rows after the kept
   proposals are all zero -- and they go on through the head like the others.
4. RoI pooling of every row: ``'align'`` is ``torchvision.ops.roi_align``
   (7x7, 1/16, ``sampling_ratio=0``, ``aligned=False``: the seed's
   pytorch-1.0 ``ROIAlign``, copied from maskrcnn-benchmark), ``'pool'`` is
   ``torchvision.ops.roi_pool``; ``'crop'`` needs ``crop_fn(base_feat, rois)
   -> [R, C, 7, 7]`` (the seed's affine grid + bilinear crop at 14x14 + 2x2 max
   pool), which is not written here.
5. ``RCNN_top`` (layer4), mean over H and W, ``RCNN_cls_score`` -> softmax,
   ``RCNN_bbox_pred``.
6. ``seed_postprocess`` (``test_net.py``): deltas ``* BBOX_NORMALIZE_STDS +
   BBOX_NORMALIZE_MEANS`` (``(0.1, 0.1, 0.2, 0.2)``, 0), decoded on the RoIs
   with the same ``bbox_transform_inv``, clipped to the resized image, divided
   by ``im_info[2]`` (the float32 ``im_scale``); per class ``j >= 1``: scores
   ``> thresh`` (0.0 in test_net's evaluation; 0.05 only with ``--vis``),
   sorted, NMS 0.3 -- on the boxes in original pixels --; then
   ``max_per_image = 100`` over all classes: when there are more than 100,
   ``image_thresh`` is the 100th largest score and every detection with
   ``score >= image_thresh`` is kept (more than 100 on ties, as the seed).

NMS (``seed_nms``) is the seed's greedy NMS with the inclusive-pixel areas
(``(x2 - x1 + 1) * (y2 - y1 + 1)``, intersection ``max(0, min - max + 1)``),
in float32 and in the order of its CUDA kernel's IoU. A box is suppressed
when its IoU with a kept box is ``> thresh`` (the seed's GPU NMS and the
numpy ``nms_cpu``); ``suppress_equal=True`` gives ``>=``, which is what the
pytorch-1.0 branch's CPU NMS (from maskrcnn-benchmark) does.

Choices where the seed is not deterministic: its sorts (``torch.sort`` on
CUDA, inside its NMS too) do not define the order of equal scores; here every
sort is stable (equal scores keep the lower index first). ``torchvision`` is
not used for NMS (no ``+ 1``).

How to compare with our converted model (see also the tests)::

  model, meta = load_seed_checkpoint('faster_rcnn_1_7_10021.pth')  # or
  model = make_seed_detector(5); save_seed_checkpoint(model, path, classes)
  out = seed_detect(model, im_bgr, SeedTestConfig(anchor_scales=(8, 16, 32)))
  out['dets'][j]        # [n, 5] float32 (x1, y1, x2, y2, score), original pixels
  out['rois'], out['cls_prob'], out['bbox_pred'], out['im_scale'], ...
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
nn = torch.nn
F = torch.nn.functional

# pylint: disable=g-import-not-at-top,wrong-import-position
from tests.weights.test_backbone import TorchResNet, randomize  # noqa: E402
from tests.weights.test_frcnn_pytorch import RPN_CHANNELS, TorchRPN, WIDTHS, save_frcnn  # noqa: E402

# cfg.PIXEL_MEANS: float64, BGR, shape [1, 1, 3] as in the seed's config.
PIXEL_MEANS = np.array([[[102.9801, 115.9465, 122.7717]]])


@dataclasses.dataclass(frozen=True)
class SeedTestConfig:
  """The seed's TEST-time settings (its config.py defaults and test_net.py)."""
  scale: int = 600                        # TEST.SCALES[0] (TRAIN.SCALES used by the loader: same)
  max_size: float | None = None           # the seed's cap is commented out
  pixel_means: np.ndarray = dataclasses.field(
      default_factory=lambda: PIXEL_MEANS.copy())
  anchor_scales: Sequence[float] = (8, 16, 32)  # VOC; COCO: (4, 8, 16, 32)
  anchor_ratios: Sequence[float] = (0.5, 1, 2)
  feat_stride: int = 16
  rpn_pre_nms_top_n: int = 6000
  rpn_post_nms_top_n: int = 300
  rpn_nms_thresh: float = 0.7
  pooling_mode: str = "align"             # 'align' | 'pool' | 'crop' (crop_fn)
  pooling_size: int = 7
  bbox_normalize_stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2)
  bbox_normalize_means: Sequence[float] = (0.0, 0.0, 0.0, 0.0)
  thresh: float = 0.0                     # test_net: 0.0 (0.05 with --vis)
  test_nms: float = 0.3                   # TEST.NMS
  max_per_image: int = 100
  nms_suppress_equal: bool = False        # True: the pytorch-1.0 CPU NMS (>=)


# ----------------------------------------------------------------------------
# The detector tree
# ----------------------------------------------------------------------------


class SeedFasterRCNN(nn.Module):
  """faster-rcnn.pytorch's ResNet detector at any widths (its parameter names).

  With the default widths the keys and shapes are those of
  ``tests.weights.test_frcnn_pytorch.TorchFasterRCNN``; with
  ``layers=(3, 4, 23, 3), widths=(64, 128, 256, 512), rpn_channels=512`` it is
  the seed's ResNet-101 (``load_seed_checkpoint`` infers these).
  """

  def __init__(self, n_classes: int, class_agnostic: bool = False,
               layers: Sequence[int] = (1, 2, 1, 2),
               widths: Sequence[int] = WIDTHS,
               rpn_channels: int = RPN_CHANNELS, num_anchors: int = 9):
    super().__init__()
    r = TorchResNet(tuple(layers), tuple(widths), caffe=True)
    self.RCNN_base = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool,
                                   r.layer1, r.layer2, r.layer3)
    self.RCNN_top = nn.Sequential(r.layer4)
    self.RCNN_rpn = TorchRPN(widths[2] * 4, rpn_channels, num_anchors)
    d = widths[3] * 4
    self.RCNN_cls_score = nn.Linear(d, n_classes)
    self.RCNN_bbox_pred = nn.Linear(d, 4 if class_agnostic else 4 * n_classes)
    self.n_classes = n_classes
    self.class_agnostic = class_agnostic
    self.num_anchors = num_anchors

  def head_to_tail(self, pooled):
    """``_head_to_tail``: ``RCNN_top`` then the mean over H and W."""
    return self.RCNN_top(pooled).mean(3).mean(2)


def _rescale_(layer: nn.Module, out, target_std: float):
  k = target_std / max(float(out.std()), 1e-12)
  layer.weight.mul_(k)
  layer.bias.mul_(k)


def make_seed_detector(n_classes: int = 5, *, class_agnostic: bool = False,
                       layers: Sequence[int] = (1, 2, 1, 2),
                       widths: Sequence[int] = WIDTHS,
                       rpn_channels: int = RPN_CHANNELS, num_anchors: int = 9,
                       seed: int = 0, rpn_logit_std: float = 2.0,
                       rpn_delta_std: float = 0.2, cls_logit_std: float = 4.0,
                       bbox_delta_std: float = 1.0) -> SeedFasterRCNN:
  """A small seed detector with random weights, in eval mode.

  Weights: ``randomize`` of tests/test_weights_backbone.py (He-scaled normal
  weights, BatchNorm with non-trivial running statistics and affine
  parameters). Then the four output layers are rescaled on a probe (a random
  128x160 image of std 50 and random RoIs in it) so that their outputs have
  the given standard deviations: peaked RPN and class scores (far from
  uniform, so sorting and thresholds matter) and moderate box deltas (the
  RCNN ones are multiplied by the stds (0.1, 0.1, 0.2, 0.2) afterwards).
  Deterministic in ``seed``.

  Returns:
    ``SeedFasterRCNN`` (eval mode); the default widths are those of
    tests/test_weights_detector.py (trunk 96 channels, head 128, RPN 16), which
    our converter reads with ``backbones.RESNET_WIDTHS`` / ``
    RESNET_STAGE_BLOCKS`` patched as there (``layers=(1, 2, 1, 2)`` is its
    "resnet101").
  """
  torch.manual_seed(seed)
  model = SeedFasterRCNN(n_classes, class_agnostic, layers, widths,
                         rpn_channels, num_anchors)
  randomize(model, seed)
  g = torch.Generator().manual_seed(seed + 7919)
  with torch.no_grad():
    x = torch.randn(1, 3, 128, 160, generator=g) * 50
    feat = model.RCNN_base(x)
    rpn = model.RCNN_rpn
    conv = F.relu(rpn.RPN_Conv(feat))
    score = rpn.RPN_cls_score(conv)
    a = num_anchors
    _rescale_(rpn.RPN_cls_score, score[:, a:] - score[:, :a], rpn_logit_std)
    _rescale_(rpn.RPN_bbox_pred, rpn.RPN_bbox_pred(conv), rpn_delta_std)
    xy = torch.rand(32, 2, generator=g) * torch.tensor([120.0, 90.0])
    wh = torch.rand(32, 2, generator=g) * 100 + 8
    rois = torch.cat([torch.zeros(32, 1), xy, xy + wh], 1)
    pooled = torchvision.ops.roi_align(feat, rois, (7, 7), 1.0 / 16.0, 0, False)
    fc7 = model.head_to_tail(pooled)
    _rescale_(model.RCNN_cls_score, model.RCNN_cls_score(fc7), cls_logit_std)
    _rescale_(model.RCNN_bbox_pred, model.RCNN_bbox_pred(fc7), bbox_delta_std)
  return model.eval()


def _class_names(classes, n_classes):
  names = list(classes.split(",") if isinstance(classes, str) else classes)
  if names and names[0] == "__background__":
    names = names[1:]
  if len(names) + 1 != n_classes:
    raise ValueError(f"{len(names)} class names + background != the model's "
                     f"{n_classes} classes")
  return names


def save_seed_checkpoint(model: SeedFasterRCNN, path, classes,
                         pooling_mode: str = "align") -> str:
  """Writes a faster-rcnn.pytorch ``faster_rcnn_S_E_I.pth``-style dict.

  ``{'session', 'epoch', 'model': state_dict, 'optimizer', 'pooling_mode',
  'class_agnostic'}`` (``save_frcnn`` of tests/test_weights_detector.py).
  The seed's checkpoints hold no class names: ``classes`` (names without
  background, a list or a comma-separated string; a leading
  ``'__background__'`` is dropped) is only checked against the model, and
  our converter takes it as ``--classes=<','.join(classes)>``.

  Returns:
    ``str(path)``.
  """
  _class_names(classes, model.n_classes)
  return save_frcnn(model, path, pooling_mode=pooling_mode,
                    class_agnostic=model.class_agnostic)


def load_seed_checkpoint(path_or_state_dict) -> tuple[SeedFasterRCNN, dict]:
  """A faster-rcnn.pytorch ResNet checkpoint (or state dict) -> the reference.

  The architecture (blocks per stage, widths, RPN channels, anchors, classes,
  class-agnostic) is read from the keys and shapes.

  Returns:
    ``(model in eval mode, meta)``; ``meta`` holds the checkpoint's other
    entries (``pooling_mode``, ``class_agnostic``, ...) when a file is given.
  """
  meta = {}
  sd = path_or_state_dict
  if not isinstance(sd, dict) or "model" in sd:
    ck = (torch.load(sd, map_location="cpu", weights_only=False)
          if not isinstance(sd, dict) else sd)
    sd = ck["model"]
    meta = {k: v for k, v in ck.items() if k not in ("model", "optimizer")}

  def blocks(prefix):
    return 1 + max(int(k[len(prefix):].split(".")[0]) for k in sd
                   if k.startswith(prefix) and k.endswith("conv1.weight"))

  layers = (blocks("RCNN_base.4."), blocks("RCNN_base.5."),
            blocks("RCNN_base.6."), blocks("RCNN_top.0."))
  widths = tuple(int(sd[p + "0.conv1.weight"].shape[0]) for p in
                 ("RCNN_base.4.", "RCNN_base.5.", "RCNN_base.6.", "RCNN_top.0."))
  n_classes = int(sd["RCNN_cls_score.weight"].shape[0])
  agnostic = int(sd["RCNN_bbox_pred.weight"].shape[0]) == 4 and n_classes != 1
  model = SeedFasterRCNN(
      n_classes, agnostic, layers, widths,
      rpn_channels=int(sd["RCNN_rpn.RPN_Conv.weight"].shape[0]),
      num_anchors=int(sd["RCNN_rpn.RPN_cls_score.weight"].shape[0]) // 2)
  model.load_state_dict(sd)
  return model.eval(), meta


# ----------------------------------------------------------------------------
# Box and anchor functions (the seed's, in its arithmetic order)
# ----------------------------------------------------------------------------


def generate_anchors(base_size: int = 16, ratios=(0.5, 1, 2),
                     scales=(8, 16, 32)) -> np.ndarray:
  """The seed's (py-faster-rcnn's) ``generate_anchors``: float64 ``[A, 4]``.

  Ratio-major: rows ``r * len(scales) + s``. ``(16, (0.5, 1, 2), (8, 16, 32))``
  starts ``[-84, -40, 99, 55]``.
  """
  ratios = np.asarray(ratios, np.float64)
  scales = np.asarray(scales, np.float64)

  def whctrs(a):
    w, h = a[2] - a[0] + 1, a[3] - a[1] + 1
    return w, h, a[0] + 0.5 * (w - 1), a[1] + 0.5 * (h - 1)

  def mk(ws, hs, xc, yc):
    ws, hs = ws[:, None], hs[:, None]
    return np.hstack((xc - 0.5 * (ws - 1), yc - 0.5 * (hs - 1),
                      xc + 0.5 * (ws - 1), yc + 0.5 * (hs - 1)))

  base = np.array([1, 1, base_size, base_size], np.float64) - 1
  w, h, xc, yc = whctrs(base)
  ws = np.round(np.sqrt(w * h / ratios))
  hs = np.round(ws * ratios)
  ratio_anchors = mk(ws, hs, xc, yc)
  out = []
  for a in ratio_anchors:
    w, h, xc, yc = whctrs(a)
    out.append(mk(w * scales, h * scales, xc, yc))
  return np.vstack(out)


def bbox_transform_inv(boxes, deltas):
  """The seed's ``bbox_transform_inv``, batched as there.

  Args:
    boxes: ``[B, N, 4]`` float32 tensor, inclusive pixels.
    deltas: ``[B, N, 4k]`` (``k`` boxes per row: 1, or one per class).

  Returns:
    ``[B, N, 4k]``: ``ctr = x1 + 0.5 w`` (``w = x2 - x1 + 1``),
    ``x1' = ctr' - 0.5 w'``, ``x2' = ctr' + 0.5 w'`` (no ``- 1``: one pixel
    wider than the inverse of the encoding), ``w' = exp(dw) w`` unclamped.
  """
  widths = boxes[:, :, 2] - boxes[:, :, 0] + 1.0
  heights = boxes[:, :, 3] - boxes[:, :, 1] + 1.0
  ctr_x = boxes[:, :, 0] + 0.5 * widths
  ctr_y = boxes[:, :, 1] + 0.5 * heights
  dx, dy = deltas[:, :, 0::4], deltas[:, :, 1::4]
  dw, dh = deltas[:, :, 2::4], deltas[:, :, 3::4]
  pred_ctr_x = dx * widths.unsqueeze(2) + ctr_x.unsqueeze(2)
  pred_ctr_y = dy * heights.unsqueeze(2) + ctr_y.unsqueeze(2)
  pred_w = torch.exp(dw) * widths.unsqueeze(2)
  pred_h = torch.exp(dh) * heights.unsqueeze(2)
  pred = deltas.clone()
  pred[:, :, 0::4] = pred_ctr_x - 0.5 * pred_w
  pred[:, :, 1::4] = pred_ctr_y - 0.5 * pred_h
  pred[:, :, 2::4] = pred_ctr_x + 0.5 * pred_w
  pred[:, :, 3::4] = pred_ctr_y + 0.5 * pred_h
  return pred


def clip_boxes(boxes, im_info):
  """The seed's ``clip_boxes``: ``[B, N, 4k]`` x to ``[0, W-1]``, y to ``[0, H-1]``.

  ``im_info`` is ``[B, 3]`` float32 ``(H, W, scale)``. In place, returned.
  """
  for i in range(boxes.shape[0]):
    w1 = float(im_info[i, 1] - 1)
    h1 = float(im_info[i, 0] - 1)
    boxes[i, :, 0::4].clamp_(0, w1)
    boxes[i, :, 1::4].clamp_(0, h1)
    boxes[i, :, 2::4].clamp_(0, w1)
    boxes[i, :, 3::4].clamp_(0, h1)
  return boxes


def seed_nms(boxes, scores, thresh: float,
             suppress_equal: bool = False) -> np.ndarray:
  """The seed's greedy NMS, inclusive-pixel areas, float32.

  Args:
    boxes: ``[N, 4]`` (tensor or array), ``(x1, y1, x2, y2)`` inclusive.
    scores: ``[N]``.
    thresh: IoU threshold.
    suppress_equal: ``False``: suppressed when ``IoU > thresh`` (the seed's
      GPU NMS, numpy ``nms_cpu``); ``True``: ``IoU >= thresh`` (its
      pytorch-1.0 CPU NMS).

  Returns:
    int64 ``[n_keep]`` indices into ``boxes``, in descending score order
    (a stable sort: equal scores keep index order).
  """
  b = np.asarray(boxes.detach().cpu().numpy() if torch.is_tensor(boxes)
                 else boxes, np.float32).reshape(-1, 4)
  s = np.asarray(scores.detach().cpu().numpy() if torch.is_tensor(scores)
                 else scores, np.float32).reshape(-1)
  order = np.argsort(-s, kind="stable")
  b = b[order]
  x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
  one, zero = np.float32(1), np.float32(0)
  areas = (x2 - x1 + one) * (y2 - y1 + one)
  n = b.shape[0]
  suppressed = np.zeros(n, bool)
  keep = []
  thresh = np.float32(thresh)
  for i in range(n):
    if suppressed[i]:
      continue
    keep.append(i)
    j = slice(i + 1, n)
    w = np.maximum(np.minimum(x2[i], x2[j]) - np.maximum(x1[i], x1[j]) + one, zero)
    h = np.maximum(np.minimum(y2[i], y2[j]) - np.maximum(y1[i], y1[j]) + one, zero)
    inter = w * h
    iou = inter / (areas[i] + areas[j] - inter)
    suppressed[j] |= (iou >= thresh) if suppress_equal else (iou > thresh)
  return order[np.asarray(keep, np.int64)].astype(np.int64)


# ----------------------------------------------------------------------------
# The test path
# ----------------------------------------------------------------------------


def seed_prep_im_for_blob(im_bgr: np.ndarray, cfg: SeedTestConfig = SeedTestConfig()):
  """``_get_image_blob`` + ``prep_im_for_blob`` + ``im_list_to_blob``, one image.

  Args:
    im_bgr: ``[h, w, 3]`` BGR (``cv2.imread``; the seed's loader reads RGB and
      flips it) or ``[h, w]`` grey (repeated to 3 channels), any dtype.

  Returns:
    ``(blob [1, 3, H, W] float32 tensor, im_info [1, 3] float32 tensor
    (H, W, im_scale), im_scale: float)``; ``im_scale`` is the double passed
    to ``cv2.resize``, ``im_info[0, 2]`` its float32 rounding (what the seed
    divides the boxes by).
  """
  import cv2  # pylint: disable=import-outside-toplevel
  im = np.asarray(im_bgr)
  if im.ndim == 2:
    im = np.concatenate([im[:, :, None]] * 3, axis=2)
  im = im.astype(np.float32, copy=True)
  im -= cfg.pixel_means
  h, w = im.shape[:2]
  im_scale = float(cfg.scale) / float(min(h, w))
  if cfg.max_size is not None and np.round(im_scale * max(h, w)) > cfg.max_size:
    im_scale = float(cfg.max_size) / float(max(h, w))
  im = cv2.resize(im, None, None, fx=im_scale, fy=im_scale,
                  interpolation=cv2.INTER_LINEAR)
  blob = np.zeros((1,) + im.shape, np.float32)
  blob[0] = im
  im_info = np.array([[im.shape[0], im.shape[1], im_scale]], np.float32)
  return (torch.from_numpy(blob.transpose(0, 3, 1, 2).copy()),
          torch.from_numpy(im_info), im_scale)


def seed_proposals(rpn_cls_prob, rpn_bbox_pred, im_info,
                   cfg: SeedTestConfig = SeedTestConfig()):
  """``_ProposalLayer.forward`` with the TEST keys, batch of one.

  Args:
    rpn_cls_prob: ``[1, 2A, H, W]`` (the reshape-softmax output).
    rpn_bbox_pred: ``[1, 4A, H, W]``.
    im_info: ``[1, 3]`` float32.

  Returns:
    ``(rois [1, post_nms_top_n, 5], num_kept: int)``; rows ``>= num_kept``
    are zeros (batch index 0, box ``(0, 0, 0, 0)``), as the seed's output.
  """
  anchors0 = torch.from_numpy(generate_anchors(
      16, np.array(cfg.anchor_ratios), np.array(cfg.anchor_scales))).float()
  a = anchors0.shape[0]
  scores = rpn_cls_prob[:, a:, :, :]
  fh, fw = scores.shape[2], scores.shape[3]
  shift_x = np.arange(0, fw) * cfg.feat_stride
  shift_y = np.arange(0, fh) * cfg.feat_stride
  shift_x, shift_y = np.meshgrid(shift_x, shift_y)
  shifts = torch.from_numpy(np.vstack((shift_x.ravel(), shift_y.ravel(),
                                       shift_x.ravel(), shift_y.ravel())
                                      ).transpose()).contiguous().float()
  k = shifts.shape[0]
  anchors = (anchors0.view(1, a, 4) + shifts.view(k, 1, 4)).view(1, k * a, 4)
  deltas = rpn_bbox_pred.permute(0, 2, 3, 1).contiguous().view(1, -1, 4)
  scores = scores.permute(0, 2, 3, 1).contiguous().view(1, -1)
  proposals = clip_boxes(bbox_transform_inv(anchors, deltas), im_info)
  _, order = torch.sort(scores, dim=1, descending=True, stable=True)
  order = order[0]
  if 0 < cfg.rpn_pre_nms_top_n < scores.numel():
    order = order[:cfg.rpn_pre_nms_top_n]
  props = proposals[0][order, :]
  sc = scores[0][order]
  keep = torch.from_numpy(seed_nms(props, sc, cfg.rpn_nms_thresh,
                                   cfg.nms_suppress_equal))
  if cfg.rpn_post_nms_top_n > 0:
    keep = keep[:cfg.rpn_post_nms_top_n]
  props = props[keep, :]
  out = scores.new_zeros(1, cfg.rpn_post_nms_top_n, 5)
  out[0, :, 0] = 0
  out[0, :props.shape[0], 1:] = props
  return out, int(props.shape[0])


CropFn = Callable[..., "torch.Tensor"]


@torch.no_grad()
def seed_forward(model: SeedFasterRCNN, blob, im_info,
                 cfg: SeedTestConfig = SeedTestConfig(),
                 crop_fn: CropFn | None = None) -> dict:
  """``_fasterRCNN.forward`` in eval mode, batch of one.

  Args:
    model: the seed tree (eval mode).
    blob: ``[1, 3, H, W]`` float32 (BGR minus means, resized).
    im_info: ``[1, 3]`` float32 ``(H, W, im_scale)``.
    crop_fn: for ``cfg.pooling_mode == 'crop'``:
      ``crop_fn(base_feat [1, C, h, w], rois [R, 5]) -> [R, C, 7, 7]``.

  Returns:
    dict of tensors: ``base_feat [1, C, h, w]``, ``rpn_cls_prob [1, 2A, h,
    w]``, ``rpn_bbox_pred [1, 4A, h, w]``, ``rois [1, R, 5]``,
    ``num_proposals`` (int), ``pooled [R, C, 7, 7]``, ``cls_score [1, R, K]``,
    ``cls_prob [1, R, K]``, ``bbox_pred [1, R, 4K]`` (``4`` if agnostic).
  """
  model.eval()
  base_feat = model.RCNN_base(blob)
  rpn_cls_prob, rpn_bbox_pred = model.RCNN_rpn(base_feat)
  rois, num = seed_proposals(rpn_cls_prob, rpn_bbox_pred, im_info, cfg)
  flat = rois.view(-1, 5)
  size = (cfg.pooling_size, cfg.pooling_size)
  if cfg.pooling_mode == "align":
    pooled = torchvision.ops.roi_align(base_feat, flat, size, 1.0 / 16.0, 0,
                                       aligned=False)
  elif cfg.pooling_mode == "pool":
    pooled = torchvision.ops.roi_pool(base_feat, flat, size, 1.0 / 16.0)
  elif cfg.pooling_mode == "crop":
    if crop_fn is None:
      raise NotImplementedError(
          "pooling_mode='crop' needs crop_fn(base_feat, rois) -> [R, C, 7, 7] "
          "(the seed's _affine_grid_gen + RoICrop + 2x2 max pool)")
    pooled = crop_fn(base_feat, flat)
  else:
    raise ValueError(f"unknown pooling_mode {cfg.pooling_mode!r}")
  fc7 = model.head_to_tail(pooled)
  bbox_pred = model.RCNN_bbox_pred(fc7)
  cls_score = model.RCNN_cls_score(fc7)
  cls_prob = F.softmax(cls_score, 1)
  r = rois.shape[1]
  return dict(base_feat=base_feat, rpn_cls_prob=rpn_cls_prob,
              rpn_bbox_pred=rpn_bbox_pred, rois=rois, num_proposals=num,
              pooled=pooled, cls_score=cls_score.view(1, r, -1),
              cls_prob=cls_prob.view(1, r, -1),
              bbox_pred=bbox_pred.view(1, r, -1))


@torch.no_grad()
def seed_postprocess(rois, cls_prob, bbox_pred, im_info, class_agnostic: bool,
                     cfg: SeedTestConfig = SeedTestConfig()) -> dict:
  """test_net.py's decoding, per-class NMS and ``max_per_image``.

  Args:
    rois: ``[1, R, 5]``; cls_prob: ``[1, R, K]``; bbox_pred: ``[1, R, 4K]``
    (``[1, R, 4]`` class-agnostic); im_info: ``[1, 3]`` float32.

  Returns:
    dict: ``dets``: list of ``K`` float32 numpy ``[n_j, 5]`` (``x1, y1, x2, y2,
    score``, original pixels, descending score; ``dets[0]`` is empty: the seed
    never fills the background); ``pred_boxes [R, 4K]`` (or ``[R, 4]``) and
    ``scores [R, K]`` numpy, before the per-class step; ``image_thresh`` (the
    ``max_per_image`` threshold, ``None`` when not applied).
  """
  scores = cls_prob
  boxes = rois[:, :, 1:5]
  k = scores.shape[2]
  stds = torch.tensor(cfg.bbox_normalize_stds, dtype=torch.float32)
  means = torch.tensor(cfg.bbox_normalize_means, dtype=torch.float32)
  deltas = bbox_pred.reshape(-1, 4) * stds + means
  deltas = deltas.view(1, -1, 4 if class_agnostic else 4 * k)
  pred_boxes = clip_boxes(bbox_transform_inv(boxes, deltas), im_info)
  pred_boxes /= im_info[0][2].item()
  scores = scores.squeeze(0)
  pred_boxes = pred_boxes.squeeze(0)
  empty = np.zeros((0, 5), np.float32)
  dets = [empty]
  for j in range(1, k):
    inds = torch.nonzero(scores[:, j] > cfg.thresh).view(-1)
    if inds.numel() == 0:
      dets.append(empty)
      continue
    cls_scores = scores[:, j][inds]
    _, order = torch.sort(cls_scores, dim=0, descending=True, stable=True)
    if class_agnostic:
      cls_boxes = pred_boxes[inds, :]
    else:
      cls_boxes = pred_boxes[inds][:, j * 4:(j + 1) * 4]
    cls_dets = torch.cat((cls_boxes, cls_scores.unsqueeze(1)), 1)[order]
    keep = seed_nms(cls_boxes[order, :], cls_scores[order], cfg.test_nms,
                    cfg.nms_suppress_equal)
    dets.append(cls_dets[torch.from_numpy(keep)].numpy())
  image_thresh = None
  if cfg.max_per_image > 0:
    image_scores = np.hstack([dets[j][:, -1] for j in range(1, k)])
    if len(image_scores) > cfg.max_per_image:
      image_thresh = np.sort(image_scores)[-cfg.max_per_image]
      for j in range(1, k):
        dets[j] = dets[j][np.where(dets[j][:, -1] >= image_thresh)[0], :]
  return dict(dets=dets, pred_boxes=pred_boxes.numpy(), scores=scores.numpy(),
              image_thresh=image_thresh)


def seed_detect(model: SeedFasterRCNN, im_bgr: np.ndarray,
                cfg: SeedTestConfig = SeedTestConfig(),
                crop_fn: CropFn | None = None) -> dict:
  """One image through the seed's whole test path.

  Args:
    model: ``SeedFasterRCNN`` (``make_seed_detector`` / ``load_seed_checkpoint``).
    im_bgr: ``[h, w, 3]`` BGR image (``rgb[..., ::-1]``), uint8 or float.
    cfg: the seed's test settings (``anchor_scales=(4, 8, 16, 32)`` for COCO).
    crop_fn: see ``seed_forward``.

  Returns:
    dict: ``dets`` (list of ``K`` numpy ``[n_j, 5]``, original pixels),
    ``num_dets``, ``im_scale`` (double), ``im_info`` ``[3]`` float32, ``blob``
    ``[1, 3, H, W]``, ``rois [R, 5]``, ``num_proposals``, ``cls_prob [R, K]``,
    ``bbox_pred [R, 4K]``, ``pred_boxes``, ``scores``, ``image_thresh``,
    ``base_feat [1, C, h, w]`` (numpy, float32).
  """
  blob, im_info, im_scale = seed_prep_im_for_blob(im_bgr, cfg)
  fwd = seed_forward(model, blob, im_info, cfg, crop_fn)
  post = seed_postprocess(fwd["rois"], fwd["cls_prob"], fwd["bbox_pred"],
                          im_info, model.class_agnostic, cfg)
  return dict(
      dets=post["dets"], num_dets=sum(len(d) for d in post["dets"]),
      im_scale=im_scale, im_info=im_info[0].numpy(), blob=blob.numpy(),
      rois=fwd["rois"][0].numpy(), num_proposals=fwd["num_proposals"],
      cls_prob=fwd["cls_prob"][0].numpy(), bbox_pred=fwd["bbox_pred"][0].numpy(),
      pred_boxes=post["pred_boxes"], scores=post["scores"],
      image_thresh=post["image_thresh"], base_feat=fwd["base_feat"].numpy())
