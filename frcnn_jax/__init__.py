"""frcnn-jax: Faster R-CNN in JAX/Flax (model stages, training, evaluation)."""
