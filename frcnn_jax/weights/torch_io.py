"""Reading PyTorch ``.pth`` files (torch is optional, imported lazily).

    pip install -r requirements-torch.txt
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np


TORCH_INSTALL_HINT = (
    "Reading PyTorch .pth files needs torch (an optional dependency): "
    "pip install -r requirements-torch.txt "
    "(add --extra-index-url https://download.pytorch.org/whl/cpu for the CPU build)")

def import_torch():
  """Imports torch, or raises ImportError saying how to install it."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(TORCH_INSTALL_HINT) from e
  return torch

def to_numpy_tree(obj: Any) -> Any:
  """torch tensors -> numpy arrays, recursively through dicts/lists/tuples."""
  if hasattr(obj, "detach") and hasattr(obj, "numpy"):
    t = obj.detach().cpu()
    if str(t.dtype) == "torch.bfloat16":
      t = t.float()
    return t.numpy()
  if isinstance(obj, Mapping):
    return {k: to_numpy_tree(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(to_numpy_tree(v) for v in obj)
  return obj

def load_torch_file(path: str) -> Any:
  """Loads a .pth file with torch (weights_only) and converts it to numpy."""
  torch = import_torch()
  if not os.path.exists(path):
    raise FileNotFoundError(f"no such weights file: {path}")
  obj = torch.load(path, map_location="cpu", weights_only=True)
  return to_numpy_tree(obj)

def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A flat state dict {name: array} from a .pth file.

  Accepts a plain state dict, or a dict holding one under 'state_dict' or
  'model' (training checkpoints).
  """
  obj = load_torch_file(path)
  return as_state_dict(obj, source=path)

def as_state_dict(obj: Any, source: str = "the checkpoint") -> dict[str, np.ndarray]:
  """Picks the flat {name: array} state dict out of a loaded checkpoint."""
  if not isinstance(obj, Mapping):
    raise ValueError(f"{source} holds a {type(obj).__name__}, not a state dict")
  for key in ("state_dict", "model"):
    if key in obj and isinstance(obj[key], Mapping):
      obj = obj[key]
      break
  out = {}
  for k, v in obj.items():
    if isinstance(v, np.ndarray):
      out[str(k)] = v
    elif isinstance(v, (int, float)) and str(k).endswith("num_batches_tracked"):
      out[str(k)] = np.asarray(v)
  if not out:
    raise ValueError(f"{source} holds no arrays; keys: {sorted(map(str, obj))[:20]}")
  return out

def strip_prefix(state_dict: Mapping[str, np.ndarray],
                 prefix: str = "module.") -> dict[str, np.ndarray]:
  """Removes `prefix` (DataParallel's 'module.') when every key has it."""
  if state_dict and all(k.startswith(prefix) for k in state_dict):
    return {k[len(prefix):]: v for k, v in state_dict.items()}
  return dict(state_dict)

def read_torch_checkpoint(path: str) -> tuple[dict[str, np.ndarray],
                                              dict[str, Any]]:
  """(state dict, scalar entries) of a .pth file; only the state dict is
  converted to numpy (an optimizer state, if any, is dropped unread)."""
  torch = import_torch()
  if not os.path.exists(path):
    raise FileNotFoundError(f"no such weights file: {path}")
  obj = torch.load(path, map_location="cpu", weights_only=True)
  extras = {}
  if isinstance(obj, Mapping):
    extras = {str(k): v for k, v in obj.items()
              if isinstance(v, (str, int, float, bool))}
    for key in ("model", "state_dict"):
      if key in obj and isinstance(obj[key], Mapping):
        obj = obj[key]
        break
  sd = as_state_dict(to_numpy_tree(obj), source=path)
  return strip_prefix(sd), extras
