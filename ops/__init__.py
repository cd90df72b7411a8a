"""Pure jax.numpy detection ops (boxes, anchors, NMS, RoIAlign, sampling).

Shipped by frcnn-jax as a top-level package next to ``frcnn_jax`` (README
"Installing"); ``import frcnn_jax`` checks that this is the ``ops`` Python
finds (the marker below).
"""
__frcnn_jax_sibling__ = True
