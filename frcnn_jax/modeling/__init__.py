"""The detector's stages, one file each (detectron2's ``modeling/`` layout).

``preprocessing`` (pixel normalisation, the one owner of the pixel means),
``backbones`` (C4 ResNets, VGG16, the tiny ResNet), ``rpn`` (RPN head and
proposals), ``targets`` (anchor and proposal target layers), ``roi_heads``
(RoI pooling, box predictor, test-time post-processing), ``losses`` and
``detector`` (``FasterRCNN``: the stages wired for training and inference;
``build_detector`` is the only reader of the config). Pure ``ops`` below,
nothing of data, training or evaluation above.
"""
