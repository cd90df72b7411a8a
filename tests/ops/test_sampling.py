"""ops.sampling: counts, subsets, uniformity, and the seed's label rules."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ops import sampling as S


def labels_with(n_pos, n_neg, n_ign=50, seed=0):
  rng = np.random.default_rng(seed)
  lab = np.array([1] * n_pos + [0] * n_neg + [-1] * n_ign, np.int32)
  rng.shuffle(lab)
  return jnp.asarray(lab)


@pytest.mark.parametrize("n_pos,n_neg,exp_pos,exp_neg", [
    (300, 1000, 128, 128),  # both capped
    (50, 1000, 50, 206),    # few positives: negatives fill up to 256
    (0, 1000, 0, 256),
    (50, 20, 50, 20),       # not enough of either
    (0, 0, 0, 0),
])
def test_subsample_labels_counts_follow_the_seed(n_pos, n_neg, exp_pos,
                                                 exp_neg):
  lab = labels_with(n_pos, n_neg)
  out = jax.jit(S.subsample_labels, static_argnums=(2, 3))(
      jax.random.key(1), lab, 256, 0.5)
  out = np.asarray(out)
  assert (out == 1).sum() == exp_pos
  assert (out == 0).sum() == exp_neg
  # Only relabelled to -1, and only from the sampled classes.
  changed = out != np.asarray(lab)
  assert np.all(out[changed] == -1)


def test_random_subset_is_uniform():
  mask = jnp.array([True] * 6 + [False] * 4)
  keys = jax.random.split(jax.random.key(0), 3000)
  picks = jax.vmap(lambda k: S.random_subset(k, mask, 2))(keys)
  picks = np.asarray(picks)
  assert np.all(picks.sum(1) == 2)
  assert not picks[:, 6:].any()
  freq = picks[:, :6].mean(0)  # each candidate kept with prob 2/6
  np.testing.assert_allclose(freq, 1 / 3, atol=0.04)


def test_random_subset_traced_count():
  mask = jnp.ones((20,), bool)
  f = jax.jit(lambda k, n: S.random_subset(k, mask, n))
  for n in (0, 3, 20, 25):
    assert int(f(jax.random.key(0), n).sum()) == min(n, 20)


@pytest.mark.parametrize("count", [0, 1, 7, 16])
def test_random_subset_bound_is_the_full_sort(count):
  # With a static bound the subset comes from top_k of the same keys: the
  # same subset as the full sort, for every key, including when fewer
  # candidates than the count exist.
  for i, p in enumerate((0.02, 0.3, 0.9)):
    mask = jax.random.bernoulli(jax.random.key(100 + i), p, (500,))
    keys = jax.random.split(jax.random.key(i), 20)
    full = jax.vmap(lambda k: S.random_subset(k, mask, count))(keys)
    fast = jax.jit(jax.vmap(lambda k, n: S.random_subset(k, mask, n, bound=16)),
                   )(keys, jnp.full((20,), count))
    np.testing.assert_array_equal(fast, full)
    assert np.all(np.asarray(fast).sum(1) == min(count, int(mask.sum())))


def test_choose_without_replacement():
  mask = jnp.zeros((100,), bool).at[jnp.array([3, 17, 42, 99])].set(True)
  idx, valid = S.choose_without_replacement(jax.random.key(0), mask, 6)
  idx, valid = np.asarray(idx), np.asarray(valid)
  np.testing.assert_array_equal(valid, [1, 1, 1, 1, 0, 0])
  assert sorted(idx[:4]) == [3, 17, 42, 99]
  np.testing.assert_array_equal(idx[4:], -1)
  # n larger than N still works, and an empty mask gives nothing.
  idx, valid = S.choose_without_replacement(jax.random.key(0), mask[:5], 8)
  assert list(np.asarray(idx)) == [3] + [-1] * 7
  _, valid = S.choose_without_replacement(jax.random.key(0),
                                          jnp.zeros(7, bool), 3)
  assert not np.asarray(valid).any()


def test_choose_with_replacement_uniform_over_true_entries():
  mask = jnp.zeros((50,), bool).at[jnp.array([4, 8, 30])].set(True)
  idx, valid = S.choose_with_replacement(jax.random.key(3), mask, 6000)
  idx = np.asarray(idx)
  assert np.asarray(valid).all()
  vals, counts = np.unique(idx, return_counts=True)
  np.testing.assert_array_equal(vals, [4, 8, 30])
  np.testing.assert_allclose(counts / 6000, 1 / 3, atol=0.03)
  idx, valid = S.choose_with_replacement(jax.random.key(3),
                                         jnp.zeros(5, bool), 4)
  assert not np.asarray(valid).any() and np.all(np.asarray(idx) == -1)


@pytest.mark.parametrize("n_pos,n_neg,exp_pos,exp_neg", [
    (100, 500, 32, 96), (10, 500, 10, 118), (100, 20, 32, 20), (0, 0, 0, 0)])
def test_sample_positive_negative(n_pos, n_neg, exp_pos, exp_neg):
  lab = labels_with(n_pos, n_neg, seed=4)
  idx, is_pos, valid = jax.jit(
      S.sample_positive_negative, static_argnums=(3, 4))(
          jax.random.key(2), lab == 1, lab == 0, 128, 0.25)
  idx, is_pos, valid = map(np.asarray, (idx, is_pos, valid))
  assert is_pos.sum() == exp_pos and (valid & ~is_pos).sum() == exp_neg
  # Positives first, then negatives, then padding; no index twice.
  n = exp_pos + exp_neg
  assert valid[:n].all() and not valid[n:].any() and is_pos[:exp_pos].all()
  assert np.all(np.asarray(lab)[idx[:exp_pos]] == 1)
  assert np.all(np.asarray(lab)[idx[exp_pos:n]] == 0)
  assert len(set(idx[:n].tolist())) == n
  assert np.all(idx[n:] == -1)


def test_same_key_same_result_and_vmap():
  lab = labels_with(300, 1000)
  f = lambda k: S.subsample_labels(k, lab, 256, 0.5)
  k = jax.random.key(7)
  np.testing.assert_array_equal(f(k), jax.jit(f)(k))
  batched = jax.vmap(f)(jax.random.split(k, 3))
  for i, ki in enumerate(jax.random.split(k, 3)):
    np.testing.assert_array_equal(batched[i], f(ki))
