"""Random subsampling with static shapes.

The seed samples with ``np.random.permutation`` (anchor and proposal target
layers) and ``np.floor(np.random.rand(n) * count)`` (proposal target layer,
with replacement). Here the same distributions come from an explicit
``jax.random`` key and every output has a fixed size plus a ``valid`` mask,
so the functions work under ``jax.jit`` and ``jax.vmap``.

Padded output slots hold index ``-1`` and ``valid = False``. ``x[-1]`` in
``jax.numpy`` is the last row, so always mask with ``valid``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def random_subset(key: jax.Array, mask: jnp.ndarray, max_count,
                  bound: int | None = None) -> jnp.ndarray:
  """Keeps a uniformly random subset of at most ``max_count`` True entries.

  Equivalent to the seed's ``disable_inds = inds[permutation[:n - max]]``:
  every subset of size ``min(max_count, sum(mask))`` is equally likely.

  Args:
    key: a ``jax.random`` key.
    mask: ``[N]`` bool, the candidates.
    max_count: int or traced int32 scalar (may depend on data).
    bound: optional static int with ``max_count <= bound`` always: the
      subset is then read from the ``bound`` smallest keys (``lax.top_k``)
      instead of a full sort of ``N`` keys. Same result for the same key
      (ties in the keys are ordered by index either way); the RPN samplers
      pass their batch size (256 of ~270k anchors at 800x1333).

  Returns:
    ``[N]`` bool, a subset of ``mask`` with ``min(max_count, sum(mask))``
    True entries.
  """
  n = mask.shape[0]
  u = jax.random.uniform(key, mask.shape)
  keys = jnp.where(mask, u, 2.0)  # candidates first, in random order
  if bound is not None and bound < n:
    _, first = jax.lax.top_k(-keys, bound)
    taken = jnp.arange(bound) < max_count
    return mask & jnp.zeros((n,), bool).at[first].set(taken)
  order = jnp.argsort(keys)
  rank = jnp.zeros(mask.shape, jnp.int32).at[order].set(
      jnp.arange(n, dtype=jnp.int32))
  return mask & (rank < max_count)


def choose_without_replacement(key: jax.Array, mask: jnp.ndarray,
                               n: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Draws up to ``n`` distinct True positions of ``mask`` in random order.

  Args:
    key: a ``jax.random`` key.
    mask: ``[N]`` bool.
    n: static output size.

  Returns:
    ``(indices [n] int32, valid [n] bool)``: the first ``min(n, sum(mask))``
    slots are distinct random indices of True entries (uniform over subsets
    and orders); the rest are ``-1`` / False.
  """
  size = mask.shape[0]
  u = jax.random.uniform(key, (size,))
  keys = jnp.where(mask, u, 2.0)
  if n <= size:
    _, idx = jax.lax.top_k(-keys, n)
  else:
    idx = jnp.concatenate([jnp.argsort(keys),
                           jnp.zeros((n - size,), jnp.int32)])
  idx = idx.astype(jnp.int32)
  valid = jnp.arange(n) < jnp.sum(mask)
  return jnp.where(valid, idx, -1), valid


def choose_with_replacement(key: jax.Array, mask: jnp.ndarray,
                            n: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Draws ``n`` True positions of ``mask`` uniformly, with replacement.

  The seed's ``inds[floor(rand(n) * count)]``.

  Args:
    key: a ``jax.random`` key.
    mask: ``[N]`` bool.
    n: static output size.

  Returns:
    ``(indices [n] int32, valid [n] bool)``; all valid if ``mask`` has a True
    entry, else all ``-1`` / False.
  """
  count = jnp.sum(mask.astype(jnp.int32))
  r = jnp.floor(jax.random.uniform(key, (n,)) * count).astype(jnp.int32)
  r = jnp.clip(r, 0, jnp.maximum(count - 1, 0))
  # The r-th True entry is the first position whose running count is r + 1.
  running = jnp.cumsum(mask.astype(jnp.int32))
  idx = jnp.searchsorted(running, r + 1, side="left").astype(jnp.int32)
  valid = jnp.broadcast_to(count > 0, (n,))
  return jnp.where(valid, idx, -1), valid


def subsample_labels(key: jax.Array, labels: jnp.ndarray, num_samples: int,
                     positive_fraction: float) -> jnp.ndarray:
  """The anchor target layer's sampling of labels ``-1 / 0 / 1``.

  As the seed: at most ``int(positive_fraction * num_samples)`` positives are
  kept (the others become -1), then at most ``num_samples - kept positives``
  negatives (the others become -1). Both choices are uniform.

  Args:
    key: a ``jax.random`` key.
    labels: ``[N]`` int32 with -1 (ignore), 0 (negative), 1 (positive).
    num_samples: ``RPN_BATCHSIZE`` (256).
    positive_fraction: ``RPN_FG_FRACTION`` (0.5).

  Returns:
    ``[N]`` int32 labels with the unsampled entries set to -1.
  """
  kpos, kneg = jax.random.split(key)
  pos = labels == 1
  neg = labels == 0
  keep_pos = random_subset(kpos, pos, int(positive_fraction * num_samples),
                           bound=num_samples)
  num_neg = num_samples - jnp.sum(keep_pos.astype(jnp.int32))
  keep_neg = random_subset(kneg, neg, num_neg, bound=num_samples)
  return jnp.where((pos & ~keep_pos) | (neg & ~keep_neg), -1, labels)


def sample_positive_negative(key: jax.Array, positive: jnp.ndarray,
                             negative: jnp.ndarray, num_samples: int,
                             positive_fraction: float):
  """Chooses up to ``n`` positives and fills the rest with negatives.

  Positives are drawn without replacement, at most
  ``round(positive_fraction * num_samples)``; the remaining slots are filled
  with distinct negatives as far as there are any.

  Args:
    key: a ``jax.random`` key.
    positive: ``[N]`` bool.
    negative: ``[N]`` bool (should be disjoint from ``positive``).
    num_samples: static output size ``n``.
    positive_fraction: the positive share of ``n``.

  Returns:
    ``(indices [n] int32, is_positive [n] bool, valid [n] bool)``: the valid
    positives first, then the valid negatives, then ``-1`` padding.
  """
  kpos, kneg = jax.random.split(key)
  max_pos = int(round(positive_fraction * num_samples))
  pos_idx, pos_valid = choose_without_replacement(kpos, positive, num_samples)
  pos_valid = pos_valid & (jnp.arange(num_samples) < max_pos)
  num_pos = jnp.sum(pos_valid.astype(jnp.int32))
  neg_idx, neg_valid = choose_without_replacement(kneg, negative, num_samples)
  # Slot s holds positive s if s < num_pos, else negative s - num_pos.
  slot = jnp.arange(num_samples)
  from_neg = jnp.clip(slot - num_pos, 0, num_samples - 1)
  is_positive = slot < num_pos
  valid = jnp.where(is_positive, True, neg_valid[from_neg])
  indices = jnp.where(is_positive, pos_idx, neg_idx[from_neg])
  indices = jnp.where(valid, indices, -1)
  return indices, is_positive & valid, valid
