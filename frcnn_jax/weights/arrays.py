"""Generic conversion: a spec ``{our path: TorchSource}`` + a state dict -> arrays.

Layout conversions (torch -> ours): conv weight [O,I,kh,kw] -> kernel
[kh,kw,I,O]; linear weight [out,in] -> kernel [in,out]; BatchNorm
weight/bias/running_mean/running_var -> scale/bias/mean/var. Ignored keys:
BatchNorm's ``num_batches_tracked`` and the ImageNet classifiers; everything
else must match: missing keys, unexpected keys and shape mismatches are
reported together in one :class:`WeightImportError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

Path = tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class TorchSource:
  """Where one of our variables comes from in a torch state dict.

  Attributes:
    key: the torch state-dict key.
    torch_shape: the shape that key must have.
    to_ours: maps the torch array (of torch_shape) to our layout.
  """
  key: str
  torch_shape: tuple[int, ...]
  to_ours: Callable[[np.ndarray], np.ndarray]

class WeightImportError(ValueError):
  """A state dict does not fit the model; lists every offending key."""

  def __init__(self, missing: Sequence[str], unexpected: Sequence[str],
               mismatched: Sequence[tuple[str, tuple, tuple]], hint: str = "",
               max_listed: int = 40):
    self.missing = list(missing)
    self.unexpected = list(unexpected)
    self.mismatched = list(mismatched)
    lines = ["the state dict does not fit the model:"]

    def listing(title, items):
      if not items:
        return
      lines.append(f"  {title} ({len(items)}):")
      for it in items[:max_listed]:
        lines.append(f"    {it}")
      if len(items) > max_listed:
        lines.append(f"    ... and {len(items) - max_listed} more")

    listing("missing keys", self.missing)
    listing("unexpected keys", self.unexpected)
    listing("shape mismatches (key: checkpoint shape vs expected shape)",
            [f"{k}: {tuple(a)} vs {tuple(b)}" for k, a, b in self.mismatched])
    if hint:
      lines.append(f"  hint: {hint}")
    super().__init__("\n".join(lines))

def ignore_batch_counter(key: str) -> bool:
  """BatchNorm's ``num_batches_tracked``: in every torch file, never a
  weight (the detectors' ignore rule)."""
  return key.endswith("num_batches_tracked")


def default_ignore(key: str) -> bool:
  """Keys of a backbone file that are not weights of our backbones."""
  return (ignore_batch_counter(key) or key.startswith("fc.") or
          key.startswith("classifier.6."))


def check_spec_covers(model: nnx.Module, spec: Mapping[Path, TorchSource],
                      source: str) -> None:
  """Raises ValueError naming the model variables ``spec`` has no ``source``
  (e.g. "torchvision") name for."""
  model_paths = {tuple(p) for p, _ in nnx.to_flat_state(nnx.state(model))}
  unmapped = sorted(".".join(map(str, p)) for p in model_paths - set(spec))
  if unmapped:
    raise ValueError(f"no {source} name for {unmapped[:10]}")

def convert_state_dict(
    spec: Mapping[Path, TorchSource], state_dict: Mapping[str, np.ndarray], *,
    ignore: Callable[[str], bool] = default_ignore, hint: str = "",
) -> dict[Path, np.ndarray]:
  """Maps a torch state dict onto our variable paths, checking everything.

  Args:
    spec: {our variable path: TorchSource}.
    state_dict: {torch key: array}.
    ignore: keys that may be present without being used.
    hint: appended to the error message.

  Returns:
    {our path: array in our layout (the checkpoint's dtype)}.

  Raises:
    WeightImportError: listing all missing keys, unexpected keys and shape
      mismatches at once.
  """
  used = set()
  missing, mismatched = [], []
  out = {}
  for path, src in spec.items():
    if src.key not in state_dict:
      missing.append(src.key)
      continue
    used.add(src.key)
    arr = np.asarray(state_dict[src.key])
    if tuple(arr.shape) != tuple(src.torch_shape):
      mismatched.append((src.key, tuple(arr.shape), tuple(src.torch_shape)))
      continue
    out[path] = src.to_ours(arr)
  unexpected = sorted(k for k in state_dict if k not in used and not ignore(k))
  if missing or unexpected or mismatched:
    raise WeightImportError(missing, unexpected, mismatched, hint=hint)
  return out

def load_detector_arrays(model: nnx.Module, spec: Mapping[Path, TorchSource],
                         state_dict: Mapping[str, np.ndarray], *, hint: str,
                         reinitializable: Sequence[tuple[str, str]] = (),
                         reinit_mismatched: bool = False) -> list[str]:
  """Converts ``state_dict`` through ``spec`` and writes it into ``model``.

  With ``reinit_mismatched``, the modules of ``reinitializable`` (path
  prefixes of two names, e.g. ``('box_predictor', 'cls_score')``) whose
  torch arrays have other shapes are left as they are (fine-tuning to other
  classes) instead of failing; their keys are then ignored.

  Returns:
    the modules left as they were, dotted and sorted.

  Raises:
    WeightImportError: missing / unexpected keys and shape mismatches, all
      in one message; the model is unchanged then.
  """
  skipped: set[tuple[str, str]] = set()
  if reinit_mismatched:
    for path, src in spec.items():
      if (tuple(path[:2]) in reinitializable and src.key in state_dict and
          tuple(np.shape(state_dict[src.key])) != tuple(src.torch_shape)):
        skipped.add(tuple(path[:2]))
  skipped_keys = {src.key for p, src in spec.items()
                  if tuple(p[:2]) in skipped}
  spec = {p: v for p, v in spec.items() if tuple(p[:2]) not in skipped}
  arrays = convert_state_dict(
      spec, state_dict, hint=hint,
      ignore=lambda k: ignore_batch_counter(k) or k in skipped_keys)
  assign_arrays(model, arrays, require=lambda p: tuple(p[:2]) not in skipped)
  return sorted(".".join(p) for p in skipped)


def assign_arrays(model: nnx.Module, arrays: Mapping[Path, np.ndarray], *,
                  require: Callable[[Path], bool] | None = None) -> None:
  """Writes arrays into `model`'s variables in place (cast to their dtypes).

  Args:
    model: the module to update.
    arrays: {variable path: array of the variable's shape}.
    require: paths that must all be assigned (default: every variable);
      a path of `arrays` that the model lacks is always an error.
  """
  state = nnx.state(model)
  flat = {tuple(p): v for p, v in nnx.to_flat_state(state)}
  unknown = [p for p in arrays if tuple(p) not in flat]
  if unknown:
    raise ValueError(f"the model has no variables at {unknown[:20]}")
  require = require or (lambda p: True)
  unassigned = [p for p in flat if require(p) and p not in arrays]
  if unassigned:
    raise ValueError(
        "no value for " + ", ".join(".".join(map(str, p)) for p in unassigned[:20]))
  pure = nnx.to_pure_dict(state)
  for path, arr in arrays.items():
    var = flat[tuple(path)]
    if tuple(var.shape) != tuple(arr.shape):
      raise ValueError(f"{path}: shape {arr.shape}, the model has {var.shape}")
    node = pure
    for k in path[:-1]:
      node = node[k]
    node[path[-1]] = jnp.asarray(arr, dtype=var.dtype)
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(model, state)

LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias",
                  "mean": "running_mean", "var": "running_var"}

def _conv_to_ours(w: np.ndarray) -> np.ndarray:
  return np.transpose(w, (2, 3, 1, 0))

def _linear_to_ours(w: np.ndarray) -> np.ndarray:
  return np.transpose(w, (1, 0))

def _identity(w: np.ndarray) -> np.ndarray:
  return w

def fc6_to_ours(p: int, c: int) -> Callable[[np.ndarray], np.ndarray]:
  def f(w: np.ndarray) -> np.ndarray:
    out = w.shape[0]
    return w.reshape(out, c, p, p).transpose(2, 3, 1, 0).reshape(p * p * c, out)
  return f

def torch_source(key: str, shape: Sequence[int]) -> TorchSource:
  """Where a variable of our `shape` comes from, stored under torch `key`.

  4-D: a conv kernel (torch [O,I,kh,kw]); 2-D: a linear kernel (torch
  [out,in]); anything else (bias, BatchNorm arrays): the same layout.
  """
  shape = tuple(int(d) for d in shape)
  if len(shape) == 4:
    return TorchSource(key, (shape[3], shape[2], shape[0], shape[1]),
                       _conv_to_ours)
  if len(shape) == 2:
    return TorchSource(key, (shape[1], shape[0]), _linear_to_ours)
  return TorchSource(key, shape, _identity)
