"""The seed's defaults (faster-rcnn.pytorch's config.py + cfgs/res101.yml).

Every config file builds on :func:`base_config` and changes what differs.
Sub-dicts: ``backbone, model, anchors, rpn, roi, test, data, train,
optimizer, mesh, checkpoint`` (one per stage, README "Design"); only the
builders in ``frcnn_jax/`` read them.
"""

from __future__ import annotations

import ml_collections

from frcnn_jax import data
from frcnn_jax.modeling import backbones
from frcnn_jax.modeling import preprocessing


def base_config(backbone: str = "resnet101") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 3                       # the seed's RNG_SEED
  # Starting weights of a new run (frcnn_jax.weights.initialize_model): a
  # folder written by `python -m frcnn_jax.weights convert` (backbone or whole
  # detector), a train workdir, or a .pth file (ImageNet backbone or
  # faster-rcnn.pytorch detector). '' = random initialisation. A resumed run
  # ignores it.
  c.init_from = ""
  # The kind of a .pth init_from (frcnn_jax.weights.KINDS / DETECTOR_KINDS,
  # e.g. 'caffe_resnet101'); '' = read it from the file's keys when they
  # identify it (all but ResNet-101 and VGG16 ImageNet files).
  c.init_from_kind = ""

  c.backbone = backbones.default_backbone_config(backbone)

  c.model = ml_collections.ConfigDict()
  # 'c4': the seed's C4 detector (modeling/detector.py); 'fpn': torchvision's
  # Faster R-CNN FPN (modeling/detector_fpn.py), set by fpn_config() with
  # its `fpn` sub-dict.
  c.model.arch = "c4"
  c.model.dtype = "float32"        # compute dtype: 'float32' | 'bfloat16'
  # Input normalisation, in the network's channel order: caffe weights take
  # BGR 0..255 minus the means; torchvision weights RGB (x - mean) / std.
  c.model.bgr = True
  c.model.pixel_mean = preprocessing.CAFFE_BGR_MEANS
  c.model.pixel_std = preprocessing.CAFFE_BGR_STDS
  # RPN NMS implementation (C4 and FPN; the FPN's is per level), same
  # results: 'jnp' (ops/nms.py, everywhere);
  # 'auto' = the Pallas kernel (ops/pallas_nms.py) on GPU/TPU, jnp on CPU;
  # 'pallas' (interpreted, slowly, on CPU). 'jnp' is the default until the
  # kernel has been run on real GPUs/TPUs (it is only interpret-tested).
  c.model.nms_impl = "jnp"
  # Regression deltas -> boxes: 'exact' inverts the encoding (a perfect
  # regression gives back the ground truth); 'seed' is faster-rcnn.pytorch's
  # bbox_transform_inv, one pixel wider and taller. New training uses
  # 'exact'; a converted faster-rcnn.pytorch checkpoint carries 'seed' and
  # evaluation takes it from the checkpoint.
  c.model.box_decode = "exact"
  # Zero activations outside each image before layers that read neighbours:
  # detections independent of the canvas and the batch (off: only to
  # measure the cost).
  c.model.canvas_masks = True

  c.anchors = ml_collections.ConfigDict()
  c.anchors.scales = (8, 16, 32)   # ANCHOR_SCALES (COCO: 4, 8, 16, 32)
  c.anchors.ratios = (0.5, 1.0, 2.0)
  c.anchors.stride = 16            # FEAT_STRIDE

  c.rpn = ml_collections.ConfigDict()     # TRAIN.RPN_*
  c.rpn.conv_channels = 512
  c.rpn.pre_nms_top_n = 12000
  c.rpn.post_nms_top_n = 2000
  c.rpn.nms_thresh = 0.7
  c.rpn.min_size = 0.0             # the seed's filter is commented out: off
  c.rpn.positive_overlap = 0.7
  c.rpn.negative_overlap = 0.3
  c.rpn.clobber_positives = False
  c.rpn.batch_size = 256
  c.rpn.fg_fraction = 0.5
  c.rpn.positive_weight = -1.0
  c.rpn.allowed_border = 0.0
  c.rpn.sigma = 3.0

  c.roi = ml_collections.ConfigDict()     # POOLING_* and TRAIN.* RoI sampling
  c.roi.pooling_mode = "align"     # res101.yml; 'pool' RoIPool; 'crop' RoI crop
  c.roi.pooling_size = 7
  c.roi.sampling_ratio = 0         # adaptive, as the seed's RoIAlign
  c.roi.aligned = False
  c.roi.batch_size = 128
  c.roi.fg_fraction = 0.25
  c.roi.fg_thresh = 0.5
  c.roi.bg_thresh_hi = 0.5
  c.roi.bg_thresh_lo = 0.0         # res101.yml (config.py: 0.1)
  c.roi.bbox_normalize_stds = (0.1, 0.1, 0.2, 0.2)
  c.roi.bbox_normalize_means = (0.0, 0.0, 0.0, 0.0)
  c.roi.class_agnostic = False
  c.roi.sigma = 1.0

  c.test = ml_collections.ConfigDict()    # TEST.*
  c.test.rpn_pre_nms_top_n = 6000
  c.test.rpn_post_nms_top_n = 300
  c.test.rpn_nms_thresh = 0.7
  c.test.rpn_min_size = 0.0
  c.test.nms_thresh = 0.3
  c.test.score_thresh = 0.0
  c.test.max_detections = 100
  c.test.batch_size = 8            # global, for eval.py / demo.py
  c.test.vis_score_thresh = 0.5    # what --vis and demo.py draw
  c.test.metric = "coco"           # 'coco' | 'voc' | 'both'
  # COCOeval implementation: 'pycocotools' (the reference) or
  # 'faster_coco_eval' (C++, ~10x faster on COCO val; the 12 numbers agree
  # to ~1e-16, not bit for bit: frcnn_jax/metrics.py COCO_EVALUATORS).
  c.test.coco_evaluator = "pycocotools"

  c.data = data.default_data_config()

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 1           # global images per step (the seed: --bs)
  c.train.num_epochs = 7
  c.train.num_steps = 0            # > 0 overrides num_epochs
  c.train.log_every = 20
  c.train.eval_every = 0           # steps; 0 = no periodic evaluation
  c.train.eval_max_images = 500    # periodic evaluation uses the first N
  # On a non-finite loss or parameter: 0 = stop (naming the last good
  # checkpoint); N > 0 = roll back to the last good checkpoint, skip the
  # batch that diverged and go on, at most N times per run.
  c.train.nonfinite_rollbacks = 0

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "sgd"         # 'sgd' | 'adam' (the seed's --o)
  c.optimizer.lr = 1e-3            # per 1-image batch; configs scale it
  c.optimizer.adam_lr_scale = True  # the seed uses 0.1 * lr with adam
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4  # res101.yml (config.py: 5e-4)
  c.optimizer.bias_decay = False
  c.optimizer.double_bias = False  # res101.yml (config.py: True)
  c.optimizer.warmup_steps = 0
  c.optimizer.warmup_factor = 1.0 / 3.0
  c.optimizer.lr_decay_epochs = (5,)  # the seed's --lr_decay_step
  c.optimizer.lr_decay_steps = ()  # if set, used instead (in steps)
  c.optimizer.gamma = 0.1          # --lr_decay_gamma
  c.optimizer.grad_clip_norm = 0.0

  c.mesh = ml_collections.ConfigDict()
  c.mesh.num_devices = -1          # -1: every device of every process

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 2000
  c.checkpoint.max_to_keep = 3
  c.checkpoint.async_save = True
  # With train.eval_every > 0: also keep the N best evaluated states in
  # <workdir>/best (a model folder for eval.py / demo.py); 0 = off.
  c.checkpoint.keep_best = 1
  # The evaluation number that ranks them (higher is better): 'AP', 'AP50',
  # 'AP75' (COCO metric), 'voc07_mAP', 'voc_area_mAP' (VOC); '' = the
  # first one test.metric gives (AP, or voc07_mAP).
  c.checkpoint.best_metric = ""
  return c


def seed_input(c: ml_collections.ConfigDict, scale: int = 600) -> None:
  """The seed's input rule: short side ``scale``, no long-side cap (its
  ``MAX_SIZE`` cap is commented out), OpenCV float32 bilinear resize, and
  canvases up to 2 x ``scale`` (training crops w / h to [0.5, 2])."""
  c.data.scale = scale
  c.data.max_size = 0
  c.data.resize = "cv2"
  short = -(-scale // 16) * 16
  longs = sorted({-(-int(scale * r) // 16) * 16 for r in (4 / 3, 5 / 3, 2)})
  c.data.buckets = tuple(b for long in longs
                         for b in ((short, long), (long, short)))


def torchvision_preprocessing(c: ml_collections.ConfigDict) -> None:
  """RGB mean/std inputs, for torchvision ImageNet weights."""
  c.model.bgr = False
  c.model.pixel_mean = preprocessing.TORCHVISION_RGB_MEANS
  c.model.pixel_std = preprocessing.TORCHVISION_RGB_STDS


def fpn_config(backbone: str = "resnet50",
               variant: str = "v1") -> ml_collections.ConfigDict:
  """torchvision's fasterrcnn_resnet50_fpn (v1) / _v2 settings.

  The C4 keys keep their meaning where torchvision has the same knob, with
  torchvision's values (FasterRCNN's defaults); the rest is in ``fpn``.
  Data: torchvision's resize (min 800 / max 1333, bilinear on floats) and
  canvases that are multiples of 32 (its batch padding).
  """
  c = base_config(backbone)
  torchvision_preprocessing(c)
  c.model.arch = "fpn"
  # torchvision's detection ResNet: stride on the 3x3 conv, frozen BN,
  # trainable_layers=3 (conv1 and layer1 frozen).
  c.backbone.stride_in_1x1 = False
  c.backbone.norm = "frozen_bn"
  c.backbone.fixed_blocks = 1

  c.fpn = ml_collections.ConfigDict()
  c.fpn.variant = variant          # 'v1': no norm, 1-conv RPN, TwoMLPHead;
  #                                 'v2': BatchNorm in FPN and box head,
  #                                 2-conv RPN head, 4conv-1fc box head
  c.fpn.out_channels = 256         # FPN channels F
  c.fpn.anchor_sizes = (32, 64, 128, 256, 512)   # one per level P2..P6
  c.fpn.representation_size = 1024               # box head fc width
  c.fpn.head_convs = (256, 256, 256, 256)        # v2 box head convs
  c.fpn.rpn_score_thresh = 0.0     # proposals need sigmoid >= this
  c.fpn.box_min_size = 1e-2        # detections with a side below are removed
  # Everything outside an image's size rounded up to 32 behaves as
  # torchvision's zero padding (detections independent of the canvas).
  # False: the whole canvas is the padded image, as torchvision's batch.
  c.fpn.mask_canvas = True

  c.anchors.ratios = (0.5, 1.0, 2.0)   # per level; anchors.scales unused
  c.rpn.conv_channels = 256        # = fpn.out_channels (torchvision's head)
  c.rpn.pre_nms_top_n = 2000       # PER LEVEL (training)
  c.rpn.post_nms_top_n = 2000
  c.rpn.nms_thresh = 0.7
  c.rpn.min_size = 1e-3            # torchvision's remove_small_boxes
  c.rpn.positive_overlap = 0.7
  c.rpn.negative_overlap = 0.3
  c.rpn.batch_size = 256
  c.rpn.fg_fraction = 0.5
  c.rpn.sigma = 3.0                # smooth-L1 beta = 1 / sigma^2 = 1/9
  c.roi.pooling_size = 7           # MultiScaleRoIAlign(P2..P5, 7, 2)
  c.roi.sampling_ratio = 2
  c.roi.batch_size = 512
  c.roi.fg_fraction = 0.25
  c.roi.fg_thresh = 0.5
  c.roi.bg_thresh_hi = 0.5
  c.roi.bg_thresh_lo = 0.0
  c.roi.bbox_normalize_stds = (0.1, 0.1, 0.2, 0.2)   # weights (10, 10, 5, 5)
  c.roi.sigma = 3.0                # beta 1/9
  c.test.rpn_pre_nms_top_n = 1000  # PER LEVEL
  c.test.rpn_post_nms_top_n = 1000
  c.test.rpn_nms_thresh = 0.7
  c.test.nms_thresh = 0.5
  c.test.score_thresh = 0.05
  c.test.max_detections = 100

  c.data.resize = "torchvision"
  c.data.scale = 800
  c.data.max_size = 1333
  c.data.crop_extreme_ratios = False   # torchvision does not crop
  c.data.buckets = ((800, 1344), (1344, 800), (800, 1088), (1088, 800),
                    (800, 800))
  c.optimizer.weight_decay = 1e-4
  c.optimizer.bias_decay = True    # torchvision decays every parameter
  return c
