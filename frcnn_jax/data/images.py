"""Image files: decoding as displayed (EXIF applied) into uint8 RGB, header
checks, and the verification of a dataset's files when it is opened.

An image that cannot be decoded (truncated, not an image, size differing
from the annotation) raises :class:`ImageLoadError` naming the file and the
image id; ``verify_images='header'`` or ``'full'`` finds all such files when
a source is built instead.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

from frcnn_jax.data.records import ImageLoadError
from frcnn_jax.data.records import Record


_SIXTEEN_BIT = ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I', 'F')

def _to_rgb(img: Image.Image) -> np.ndarray:
  """Any PIL mode -> uint8 ``[h, w, 3]`` RGB."""
  mode = img.mode
  if mode == 'RGB':
    return np.asarray(img, dtype=np.uint8)
  if mode in _SIXTEEN_BIT:
    a = np.asarray(img).astype(np.float64)
    top = a.max() if a.size else 0.0
    if top > 255:  # 16-bit data: map the full range to 8 bits.
      a = a * (255.0 / (65535.0 if mode.startswith('I;16') else top))
    a = np.clip(np.nan_to_num(a), 0, 255).astype(np.uint8)
    return np.repeat(a[..., None], 3, axis=2)
  if mode in ('P', 'PA'):
    img = img.convert('RGBA')
  # RGBA/LA: alpha dropped (the color channels are kept as stored); CMYK and
  # YCbCr converted by PIL; L and 1 replicated.
  return np.asarray(img.convert('RGB'), dtype=np.uint8)

def pil_to_rgb(img: Image.Image) -> np.ndarray:
  """A PIL image of any mode -> uint8 ``[h, w, 3]`` RGB (as the readers)."""
  return _to_rgb(img)

def decode_image(data: str | bytes, *, exif_transpose: bool = True,
                 where: str = '') -> np.ndarray:
  """Reads an image file (path or encoded bytes) as uint8 ``[h, w, 3]`` RGB.

  The EXIF orientation tag is applied when ``exif_transpose`` (the pixels come
  out as a viewer displays them); grayscale, 16-bit, RGBA, palette, CMYK
  images become RGB.

  Raises:
    ImageLoadError: missing, truncated or undecodable file, naming ``where``.
  """
  try:
    src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    with Image.open(src) as img:
      img.load()  # Forces a full decode: truncated files fail here.
      if exif_transpose:
        img = ImageOps.exif_transpose(img)
      return _to_rgb(img)
  except FileNotFoundError as e:
    raise ImageLoadError(f'{where}: image file not found (field file_name): '
                         f'{e}') from e
  except Exception as e:  # pylint: disable=broad-except
    raise ImageLoadError(f'{where}: cannot decode image (field file_name): '
                         f'{type(e).__name__}: {e}') from e

def image_size(data: str | bytes, *, exif_transpose: bool = True,
               where: str = '') -> tuple[int, int, int]:
  """(height, width, exif_orientation) from the file header, without decoding.

  The size is the displayed one (after the EXIF orientation) when
  ``exif_transpose``.
  """
  try:
    src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    with Image.open(src) as img:
      w, h = img.size
      orientation = 1
      try:
        orientation = int(img.getexif().get(0x0112, 1) or 1)
      except Exception:  # pylint: disable=broad-except
        pass  # An unreadable EXIF block is not an error for the pixels.
  except FileNotFoundError as e:
    raise ImageLoadError(f'{where}: image file not found (field file_name): '
                         f'{e}') from e
  except Exception as e:  # pylint: disable=broad-except
    raise ImageLoadError(f'{where}: cannot read image header (field '
                         f'file_name): {type(e).__name__}: {e}') from e
  if exif_transpose and orientation in (5, 6, 7, 8):
    w, h = h, w
  return h, w, orientation

def check_image_size(record: Record, h: int, w: int, orientation: int,
                     exif_transpose: bool) -> None:
  """Raises ``ImageLoadError`` when the pixels do not match the annotation."""
  if (h, w) == (record.height, record.width):
    return
  hint = ''
  if (w, h) == (record.height, record.width) and orientation in (5, 6, 7, 8):
    hint = (f' The file has EXIF orientation {orientation}: the annotation '
            'seems to refer to the stored (unrotated) pixels. Annotations '
            'must refer to the image as displayed (EXIF applied); set '
            'data.exif_transpose=False if the whole dataset was annotated on '
            'the stored pixels.')
  raise ImageLoadError(
      f'{record.name}: fields height/width are {record.height}x{record.width}'
      f' (h x w) but the image is {h}x{w}.{hint}')

class ImageReader:
  """Loads the image of a record (picklable; sent to grain workers)."""

  def __init__(self, exif_transpose: bool = True):
    self.exif_transpose = exif_transpose

  def read_bytes(self, record: Record) -> str | bytes:
    """The encoded image: a path for files."""
    return record.path

  def orientation(self, data: str | bytes) -> int:
    if not self.exif_transpose:
      return 1
    try:
      src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
      with Image.open(src) as img:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # pylint: disable=broad-except
      return 1

  def __call__(self, record: Record) -> np.ndarray:
    data = self.read_bytes(record)
    image = decode_image(data, exif_transpose=self.exif_transpose,
                         where=record.name)
    h, w = image.shape[:2]
    if (h, w) != (record.height, record.width):
      check_image_size(record, h, w, self.orientation(data),
                       self.exif_transpose)
    return image

def check_files(records: Sequence[Record], level: str, reader: ImageReader,
                what: str, num_threads: int = 8) -> None:
  """Checks the image files of ``records`` when a source is built.

  Args:
    level: ``'none'``; ``'exists'`` (every file exists; default);
      ``'header'`` (also reads each header: format and size, EXIF
      orientation included, must match the record); ``'full'`` (decodes
      every image).
    what: dataset description for the message.

  Raises:
    ImageLoadError: listing every bad file (the first 20) and the count.
  """
  if level in ('none', '', None):
    return
  if level not in ('exists', 'header', 'full'):
    raise ValueError(f"data.verify_images must be 'none', 'exists', 'header' "
                     f"or 'full', got {level!r}")
  file_records = [r for r in records if r.path is not None]
  if level == 'exists':
    errors = [f'{r.name}: image file not found (field file_name)'
              for r in file_records if not os.path.isfile(r.path)]
  else:
    def one(r):
      try:
        if level == 'full':
          reader(r)
        else:
          data = reader.read_bytes(r)
          h, w, o = image_size(data, exif_transpose=reader.exif_transpose,
                               where=r.name)
          check_image_size(r, h, w, o, reader.exif_transpose)
        return None
      except ImageLoadError as e:
        return str(e)
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
      errors = [e for e in pool.map(one, records) if e is not None]
  if errors:
    shown = '\n  '.join(errors[:20])
    more = f'\n  ... and {len(errors) - 20} more' if len(errors) > 20 else ''
    raise ImageLoadError(
        f'{what}: {len(errors)} bad image file(s) (verify_images={level!r}):'
        f'\n  {shown}{more}')
