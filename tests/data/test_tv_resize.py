"""torchvision's detection resize (data/tv_resize.py) against torch itself,
and ``data.resize='torchvision'`` through transforms and the loader."""
import numpy as np
import pytest

from configs import tiny_fpn
from frcnn_jax.data import loader
from frcnn_jax.data import transforms
from frcnn_jax.data import tv_resize

torch = pytest.importorskip("torch")

SIZES = [(480, 640), (427, 640), (333, 500), (1000, 700), (37, 91),
         (640, 480), (500, 500)]
LIMITS = [(800, 1333), (300, 450), (64, 128)]


@pytest.mark.parametrize("h,w", SIZES)
def test_matches_torch_interpolate(rng, h, w):
  """GeneralizedRCNNTransform's call: scale_factor, recompute_scale_factor,
  bilinear, align_corners=False; sizes equal, pixels to float32 rounding."""
  img = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
  x = torch.from_numpy(img).permute(2, 0, 1).float()[None]
  for lo, hi in LIMITS:
    s = tv_resize.torchvision_scale(h, w, lo, hi)
    want = torch.nn.functional.interpolate(
        x, scale_factor=s, mode="bilinear", recompute_scale_factor=True,
        align_corners=False)[0].permute(1, 2, 0).numpy()
    got = tv_resize.resize_bilinear(img, *tv_resize.torchvision_size(h, w, s))
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_index_rounding_is_torchs():
  """Columns where rounding ratio * (d + 0.5) before subtracting 0.5 would
  move the sample (640 -> 1066: columns 426 and 853)."""
  x = np.arange(640, dtype=np.float32)[None, :, None]
  got = tv_resize.resize_bilinear(x, 1, 1066)[0, :, 0]
  want = torch.nn.functional.interpolate(
      torch.from_numpy(x[None, None, :, :, 0]), size=(1, 1066),
      mode="bilinear", align_corners=False)[0, 0, 0].numpy()
  np.testing.assert_array_equal(got, want)


def test_transforms_and_loader_use_it(rng):
  c = tiny_fpn.get_config().data
  params = transforms.TransformParams.from_config(c)
  assert params.resize == "torchvision" and params.image_dtype == np.float32
  img = rng.integers(0, 256, (50, 77, 3)).astype(np.uint8)
  oh, ow, s = transforms.planned_size(50, 77, params, train=False)
  assert (oh, ow) == (64, 98) and s == pytest.approx(64 / 50)
  ex = transforms.make_example(img, np.array([[1, 2, 30, 40]]), np.array([1]),
                               params, (64, 128))
  assert ex["image"].dtype == np.float32 and ex["image"].shape == (64, 128, 3)
  np.testing.assert_array_equal(ex["image"][:oh, :ow],
                                tv_resize.resize_bilinear(img, oh, ow))
  assert (ex["image"][oh:] == 0).all() and (ex["image"][:, ow:] == 0).all()
  np.testing.assert_allclose(ex["im_info"], [oh, ow, s])
  resized, info = loader.prepare_image(img, c)
  np.testing.assert_array_equal(resized, ex["image"][:oh, :ow])
  np.testing.assert_allclose(info, ex["im_info"])
  (keys, batch), = list(loader.image_batches([("a", img)], c, 2))
  assert batch["image"].dtype == np.float32 and keys == ["a"]
  # The PIL mode is unchanged: uint8, the seed's rounded sizes.
  c.resize = "pil"
  p = transforms.TransformParams.from_config(c)
  assert p.image_dtype == np.uint8
  assert transforms.planned_size(50, 77, p, train=False)[:2] == (64, 99)
  c.resize = "bilinear"
  with pytest.raises(ValueError, match="data.resize"):
    transforms.TransformParams.from_config(c)
