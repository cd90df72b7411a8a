"""frcnn-jax's built-in configs (``--config=shapes``, ``--config=voc07_res101``).

Shipped by frcnn-jax as a top-level package next to ``frcnn_jax``; the config
files import each other as ``from configs import common``. Where the
built-in configs are used, frcnn-jax checks that this is the ``configs``
Python finds (the marker below).
"""
__frcnn_jax_sibling__ = True
