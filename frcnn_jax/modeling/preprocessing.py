"""Pixel normalisation: the one owner of the pixel means and stds.

Every set of pretrained weights expects its own input normalisation:
faster-rcnn.pytorch's caffe weights take BGR 0..255 minus ``PIXEL_MEANS``
(no std), torchvision's ImageNet weights RGB scaled to 0..1, minus the
ImageNet mean, divided by its std. :class:`Preprocessing` describes one of
them; the detector applies the config's ``model.bgr / pixel_mean /
pixel_std`` (0..255 inputs, network channel order), which
:meth:`Preprocessing.config_values` derives, so the config, the weight
import and the model agree by construction.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How images must be normalized for a set of pretrained weights.

  network input = (image_in_channel_order * pixel_scale - mean) / std,
  per channel, with `mean`/`std` listed in `channel_order`.
  """
  channel_order: str  # 'RGB' or 'BGR'
  pixel_scale: float  # 1/255 for 0..1 inputs, 1.0 for 0..255 inputs
  mean: tuple[float, float, float]
  std: tuple[float, float, float]

  def apply(self, images_rgb: jax.Array) -> jax.Array:
    """images [..., 3] RGB float 0..255 -> float32 network input [..., 3]."""
    x = jnp.asarray(images_rgb, jnp.float32)
    if self.channel_order == "BGR":
      x = x[..., ::-1]
    x = x * self.pixel_scale
    return (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(
        self.std, jnp.float32)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def config_values(self) -> dict[str, Any]:
    """As the config's model.bgr / pixel_mean / pixel_std (0..255 inputs).

    The detector computes (image - pixel_mean) / pixel_std on 0..255 pixels
    in the network's channel order; this scales first, so mean and std are
    divided by its pixel_scale (torchvision: 0.485 -> 123.675).
    """
    # Rounded: 0.406 * 255 is 103.53000000000002 in binary floating point.
    return {"model.bgr": self.channel_order == "BGR",
            "model.pixel_mean": [round(float(m) / self.pixel_scale, 6)
                                 for m in self.mean],
            "model.pixel_std": [round(float(s) / self.pixel_scale, 6)
                                for s in self.std]}


# torchvision's ImageNet normalization: RGB, 0..1, mean/std.
TORCHVISION = Preprocessing(
    "RGB", 1.0 / 255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# faster-rcnn.pytorch's caffe models: BGR 0..255 minus cfg.PIXEL_MEANS, no std.
CAFFE = Preprocessing(
    "BGR", 1.0, (102.9801, 115.9465, 122.7717), (1.0, 1.0, 1.0))

# The same, as config values (0..255 inputs, network channel order).
CAFFE_BGR_MEANS = tuple(CAFFE.config_values()["model.pixel_mean"])
CAFFE_BGR_STDS = tuple(CAFFE.config_values()["model.pixel_std"])
TORCHVISION_RGB_MEANS = tuple(TORCHVISION.config_values()["model.pixel_mean"])
TORCHVISION_RGB_STDS = tuple(TORCHVISION.config_values()["model.pixel_std"])


def normalize(images: jax.Array, im_info: jax.Array, *, bgr: bool,
              pixel_mean, pixel_std, dtype=jnp.float32) -> jax.Array:
  """uint8/float ``[B, Hi, Wi, 3]`` RGB -> normalised network input.

  Channels are reversed to BGR when ``bgr`` (caffe weights), then
  ``(x - pixel_mean) / pixel_std`` (mean and std in the network's channel
  order), and the canvas padding outside ``im_info``'s height and width is
  set to 0, as the seed pads after mean subtraction.
  """
  x = images.astype(jnp.float32)
  if bgr:
    x = x[..., ::-1]
  x = (x - jnp.asarray(pixel_mean, jnp.float32)) / jnp.asarray(
      pixel_std, jnp.float32)
  rows = jnp.arange(x.shape[1], dtype=jnp.float32)
  cols = jnp.arange(x.shape[2], dtype=jnp.float32)
  inside = ((rows[None, :, None] < im_info[:, 0, None, None]) &
            (cols[None, None, :] < im_info[:, 1, None, None]))
  return jnp.where(inside[..., None], x, 0.0).astype(dtype)
