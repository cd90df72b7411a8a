"""Import of pretrained PyTorch weights into frcnn_jax models.

What loads:

  * torchvision ImageNet ResNet-50/101/152 and VGG16 state dicts
    (resnet50-0676ba61.pth, resnet101-63fe2227.pth, vgg16-397923af.pth, any
    ``torchvision.models.*().state_dict()`` saved with torch.save) -> our
    backbones (``stride_in_1x1=False``, RGB mean/std preprocessing);
  * faster-rcnn.pytorch's caffe-converted resnet101_caffe.pth and
    vgg16_caffe.pth (torchvision module names), whose ResNet needs
    ``stride_in_1x1=True`` (BGR 0..255 minus the caffe means, no std);
  * whole faster-rcnn.pytorch detector checkpoints
    (faster_rcnn_{session}_{epoch}_{step}.pth) -> our whole FasterRCNN, so
    that eval.py / demo.py run a model trained in PyTorch.

The modules, bottom up: ``kinds`` (what each kind of file fits),
``torch_io`` (reading .pth, torch imported lazily), ``arrays`` (generic
spec -> arrays conversion), ``identify`` (what a state dict is),
``backbone`` (ImageNet backbones; converted backbone folders), ``compat``
(the config against the weights), ``frcnn_pytorch`` (whole detectors),
``init`` (``config.init_from``), ``convert`` and ``__main__`` (the command
line). The names below are the package's API.

Reading ``.pth`` needs torch, an optional dependency:
  pip install -r requirements-torch.txt
"""

from frcnn_jax.weights.arrays import assign_arrays
from frcnn_jax.weights.arrays import convert_state_dict
from frcnn_jax.weights.arrays import default_ignore
from frcnn_jax.weights.arrays import TorchSource
from frcnn_jax.weights.arrays import WeightImportError
from frcnn_jax.weights.backbone import backbone_torch_spec
from frcnn_jax.weights.backbone import check_backbone_fits_kind
from frcnn_jax.weights.backbone import load_backbone_state_dict
from frcnn_jax.weights.backbone import load_pretrained_backbone
from frcnn_jax.weights.backbone import restore_backbone_weights
from frcnn_jax.weights.backbone import save_backbone_weights
from frcnn_jax.weights.compat import ARCHITECTURE_KEYS
from frcnn_jax.weights.compat import check_config_against_checkpoint
from frcnn_jax.weights.compat import check_preprocessing
from frcnn_jax.weights.compat import config_mismatches
from frcnn_jax.weights.compat import ConfigMismatchError
from frcnn_jax.weights.compat import implied_config_from_meta
from frcnn_jax.weights.compat import MODEL_KEYS
from frcnn_jax.weights.compat import preprocessing_config_values
from frcnn_jax.weights.convert import convert_file
from frcnn_jax.weights.frcnn_pytorch import check_backbone_fits_detector
from frcnn_jax.weights.frcnn_pytorch import COCO_CLASSES
from frcnn_jax.weights.frcnn_pytorch import convert_detector_file
from frcnn_jax.weights.frcnn_pytorch import detector_for_checkpoint
from frcnn_jax.weights.frcnn_pytorch import detector_implied_config
from frcnn_jax.weights.frcnn_pytorch import detector_torch_spec
from frcnn_jax.weights.frcnn_pytorch import load_detector_state_dict
from frcnn_jax.weights.frcnn_pytorch import REINITIALIZABLE
from frcnn_jax.weights.frcnn_pytorch import resolve_class_names
from frcnn_jax.weights.frcnn_pytorch import VOC_CLASSES
from frcnn_jax.weights.identify import analyze_detector_state_dict
from frcnn_jax.weights.identify import DetectorCheckpointInfo
from frcnn_jax.weights.identify import guess_kind
from frcnn_jax.weights.identify import guess_network
from frcnn_jax.weights.init import initialize_model
from frcnn_jax.weights.init import load_model_from_checkpoint
from frcnn_jax.weights.kinds import ALL_KINDS
from frcnn_jax.weights.kinds import AUTO_DETECTOR_KIND
from frcnn_jax.weights.kinds import backbone_config_for_kind
from frcnn_jax.weights.kinds import CAFFE_PREPROCESSING
from frcnn_jax.weights.kinds import detector_backbone_config
from frcnn_jax.weights.kinds import DETECTOR_KINDS
from frcnn_jax.weights.kinds import detector_kind_for_backbone
from frcnn_jax.weights.kinds import DetectorKind
from frcnn_jax.weights.kinds import KINDS
from frcnn_jax.weights.kinds import TORCHVISION_PREPROCESSING
from frcnn_jax.weights.kinds import WeightKind
from frcnn_jax.weights.torch_io import as_state_dict
from frcnn_jax.weights.torch_io import load_torch_file
from frcnn_jax.weights.torch_io import read_state_dict
from frcnn_jax.weights.torch_io import read_torch_checkpoint
from frcnn_jax.modeling.preprocessing import Preprocessing

__all__ = [
    "ALL_KINDS",
    "analyze_detector_state_dict",
    "ARCHITECTURE_KEYS",
    "as_state_dict",
    "assign_arrays",
    "AUTO_DETECTOR_KIND",
    "backbone_config_for_kind",
    "backbone_torch_spec",
    "CAFFE_PREPROCESSING",
    "check_backbone_fits_detector",
    "check_backbone_fits_kind",
    "check_config_against_checkpoint",
    "check_preprocessing",
    "COCO_CLASSES",
    "config_mismatches",
    "ConfigMismatchError",
    "convert_detector_file",
    "convert_file",
    "convert_state_dict",
    "default_ignore",
    "detector_backbone_config",
    "detector_for_checkpoint",
    "detector_implied_config",
    "detector_kind_for_backbone",
    "DETECTOR_KINDS",
    "detector_torch_spec",
    "DetectorCheckpointInfo",
    "DetectorKind",
    "guess_kind",
    "guess_network",
    "implied_config_from_meta",
    "initialize_model",
    "KINDS",
    "load_backbone_state_dict",
    "load_detector_state_dict",
    "load_model_from_checkpoint",
    "load_pretrained_backbone",
    "load_torch_file",
    "MODEL_KEYS",
    "Preprocessing",
    "preprocessing_config_values",
    "read_state_dict",
    "read_torch_checkpoint",
    "REINITIALIZABLE",
    "resolve_class_names",
    "restore_backbone_weights",
    "save_backbone_weights",
    "TorchSource",
    "TORCHVISION_PREPROCESSING",
    "VOC_CLASSES",
    "WeightImportError",
    "WeightKind",
]
