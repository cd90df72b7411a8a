"""Tests for ops/pallas_nms.py (Pallas kernel in interpret mode on the CPU).

References: the numpy transcription of the seed's ``nms_cpu`` from
tests/test_nms.py and ``ops.nms.nms``. Interpret mode is slow to compile, so
most cases share one compiled shape (``N_PAD`` inputs, ``block_rows = 256``:
two mask blocks, so suppression across blocks and the early stop are
exercised everywhere).
"""

import functools
import re

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
import numpy as np
import pytest

from ops import nms as nms_lib
from ops import pallas_nms
from tests.ops.test_nms import class_boxes, random_boxes, reference

THRESHOLDS = (0.0, 0.3, 0.5, 0.7, 1.0)
N_PAD = 300  # Sorted list padded to 512 = two blocks of 256 rows.


@functools.partial(jax.jit, static_argnames=("max_output", "block_rows"))
def jit_pallas(boxes, scores, thresh, max_output, block_rows=256):
  return pallas_nms.nms(boxes, scores, thresh, max_output, interpret=True,
                        block_rows=block_rows)


jit_ref = jax.jit(nms_lib.nms, static_argnums=3)


def padded(boxes, scores, thresh, max_output, block_rows=256):
  """jit_pallas on inputs padded to N_PAD rows (score -inf).

  Returns ``(pallas_out, ops_nms_out)`` cut to ``max_output`` slots; the
  padding rows are absent entries and must never show up.
  """
  n = len(scores)
  assert n <= N_PAD and max_output <= N_PAD
  boxes = np.concatenate([boxes, np.zeros((N_PAD - n, 4), np.float32)])
  scores = np.concatenate([scores, np.full(N_PAD - n, -np.inf, np.float32)])
  thresh = np.float32(thresh)
  got = jit_pallas(boxes, scores, thresh, max_output=N_PAD,
                   block_rows=block_rows)
  ref = jit_ref(boxes, scores, thresh, N_PAD)
  assert (np.asarray(got[0])[np.asarray(got[1])] < n).all()
  return ([o[:max_output] for o in got], [o[:max_output] for o in ref])


def kept(out):
  idx, valid = (np.asarray(o) for o in out)
  n = int(valid.sum())
  assert valid[:n].all() and not valid[n:].any(), "valid must be a prefix"
  assert (idx[n:] == -1).all()
  return idx[:n]


def check(boxes, scores, thresh, max_output, want=None, block_rows=256):
  """Pallas == ops.nms == nms_cpu reference (or ``want``); returns kept."""
  got, ref = padded(boxes, scores, thresh, max_output, block_rows)
  if want is None:
    want = reference(boxes, scores, thresh, max_output)
  np.testing.assert_array_equal(kept(got), want, err_msg=f"thr {thresh}")
  np.testing.assert_array_equal(kept(ref), want, err_msg=f"ops.nms {thresh}")
  return kept(got)


# ----------------------------------------------------------------------------
# The kernel alone: the packed bit layout.
# ----------------------------------------------------------------------------
def numpy_mask(rows, cols, thresh, offset=1.0, row_labels=None,
               col_labels=None):
  """Packed mask from numpy: word w, row r, bit b <-> column 32 w + b
  (with labels: only boxes of equal labels suppress each other)."""
  one = np.float32(offset)

  def area(b):
    return (np.maximum(b[:, 2] - b[:, 0] + one, 0)
            * np.maximum(b[:, 3] - b[:, 1] + one, 0))
  r, c = rows[:, None, :], cols[None, :, :]
  iw = np.maximum(np.minimum(r[..., 2], c[..., 2])
                  - np.maximum(r[..., 0], c[..., 0]) + one, 0)
  ih = np.maximum(np.minimum(r[..., 3], c[..., 3])
                  - np.maximum(r[..., 1], c[..., 1]) + one, 0)
  inter = iw * ih
  union = area(rows)[:, None] + area(cols)[None, :] - inter
  with np.errstate(divide="ignore", invalid="ignore"):
    sup = (union > 0) & (inter / np.where(union > 0, union, 1)
                         > np.float32(thresh))
  sup &= np.arange(len(cols))[None, :] > np.arange(len(rows))[:, None]
  if row_labels is not None:
    sup &= row_labels[:, None] == col_labels[None, :]
  bits = sup.reshape(len(rows), -1, 32).astype(np.uint64)
  words = (bits << np.arange(32, dtype=np.uint64)).sum(-1).astype(np.uint32)
  return words.T.view(np.int32)  # [C / 32, R]


def test_mask_kernel_bits(rng):
  boxes = random_boxes(rng, 512, size=150)
  boxes[40:110] = [10, 10, 60, 60]  # Identical boxes: full words, bit 31.
  rows, cols = boxes[:128], boxes
  for thresh in (0.0, 0.5):
    got = np.asarray(pallas_nms.suppression_mask(
        jnp.asarray(rows.T), jnp.asarray(cols), thresh, interpret=True))
    want = numpy_mask(rows, cols, thresh)
    assert got.shape == (16, 128) and got.dtype == np.int32
    np.testing.assert_array_equal(got, want)
  assert (got == -1).any() and (got < 0).any()  # All 32 bits / sign bit.
  # Column 0 is never after a row; row 127 only suppresses columns >= 128.
  assert (got[0] & 1 == 0).all() and (got[:4, 127] == 0).all()
  # Tile pairs entirely below the diagonal are zero (rows 128.. vs col tile 0).
  got = np.asarray(pallas_nms.suppression_mask(
      jnp.asarray(cols[:384].T), jnp.asarray(cols), 0.0, interpret=True))
  np.testing.assert_array_equal(got, numpy_mask(cols[:384], cols, 0.0))
  assert (got[:8, 256:] == 0).all()


def test_mask_kernel_labels_and_offset(rng):
  # torchvision's IoU (no +1) and a fifth coordinate, the class label.
  boxes = random_boxes(rng, 256, size=60)
  boxes[10:50] = [5, 5, 25, 25]     # Identical boxes, mixed labels.
  labels = rng.integers(0, 3, 256)
  rows = np.concatenate([boxes[:128], labels[:128, None]], 1)
  cols = np.concatenate([boxes, labels[:, None]], 1).astype(np.float32)
  for thresh in (0.0, 0.5):
    got = np.asarray(pallas_nms.suppression_mask(
        jnp.asarray(rows.T), jnp.asarray(cols), thresh, interpret=True,
        pixel_offset=0.0))
    want = numpy_mask(boxes[:128], boxes, thresh, 0.0, labels[:128], labels)
    np.testing.assert_array_equal(got, want)
    # The labels and the offset both change the mask (the check can fail).
    assert not np.array_equal(got, numpy_mask(boxes[:128], boxes, thresh,
                                              0.0))
  assert not np.array_equal(
      numpy_mask(boxes[:128], boxes, 0.5, 0.0, labels[:128], labels),
      numpy_mask(boxes[:128], boxes, 0.5, 1.0, labels[:128], labels))


def test_mask_rejects_bad_tiles():
  with pytest.raises(ValueError):
    pallas_nms.suppression_mask(jnp.zeros((4, 100)), jnp.zeros((256, 4)), 0.5,
                                interpret=True)
  with pytest.raises(ValueError):   # Labels on one side only.
    pallas_nms.suppression_mask(jnp.zeros((5, 128)), jnp.zeros((256, 4)), 0.5,
                                interpret=True)


# ----------------------------------------------------------------------------
# nms
# ----------------------------------------------------------------------------
def test_random_matches_nms_cpu_and_ops_nms(rng):
  for trial in range(3):
    n = N_PAD if trial else 290  # 290: padding inside the second block.
    boxes = random_boxes(rng, n)
    scores = rng.random(n).astype(np.float32)
    counts = [len(check(boxes, scores, t, n)) for t in THRESHOLDS]
    assert len(set(counts)) == len(THRESHOLDS), counts
    assert counts[-1] == n  # IoU <= 1: threshold 1.0 suppresses nothing.
  # One block (block_rows >= P) gives the same.
  check(boxes, scores, 0.5, n, block_rows=2048)


def hand_three_boxes():
  # IoU(A,B) = IoU(B,C) = 0.4, IoU(A,C) = 0.08 (see tests/test_nms.py).
  return np.float32([[0, 0, 80, 9], [35, 0, 114, 9], [69, 0, 149, 9]])


def test_hand_computed_three_boxes():
  boxes = hand_three_boxes()
  s = np.float32([0.9, 0.8, 0.7])
  check(boxes, s, 0.3, 3, want=[0, 2])  # Greedy, not one-shot suppression.
  check(boxes, np.float32([0.8, 0.9, 0.7]), 0.3, 3, want=[1])
  check(boxes, s, np.float32(0.4), 3, want=[0, 1, 2])  # IoU == thr: kept.
  check(boxes, s, 0.07, 3, want=[0])


def test_identical_and_nested_boxes():
  boxes = np.tile(np.float32([[5, 5, 20, 30]]), (40, 1))
  scores = np.linspace(0.1, 0.9, 40).astype(np.float32)
  for t in (0.0, 0.5, 0.99):
    check(boxes, scores, t, 10, want=[39])
  check(boxes, scores, 1.0, 40, want=np.arange(40)[::-1])
  # [0,99]^2 holds [0,49]^2: IoU = 0.25.
  boxes = np.float32([[0, 0, 99, 99], [0, 0, 49, 49]])
  check(boxes, np.float32([0.8, 0.9]), 0.2, 2, want=[1])
  check(boxes, np.float32([0.8, 0.9]), 0.25, 2, want=[1, 0])
  r = np.arange(1, 60, dtype=np.float32)
  rings = np.stack([50 - r, 50 - r, 50 + r, 50 + r], 1)
  scores = np.float32(np.random.default_rng(3).random(len(r)))
  for t in THRESHOLDS:
    check(rings, scores, t, len(r))


def test_score_ties_lower_index_first(rng):
  boxes = random_boxes(rng, 280)
  scores = np.float32(rng.integers(0, 4, 280) / 4.0)  # Many ties, incl. 0.
  scores[::7] = -0.0  # -0.0 ties with 0.0.
  for t in (0.3, 0.7):
    check(boxes, scores, t, 280)
  disjoint = np.float32([[10 * i, 0, 10 * i + 5, 5] for i in range(6)])
  check(disjoint, np.ones(6, np.float32), 0.5, 6, want=np.arange(6))


def test_non_finite_entries_absent(rng):
  boxes = np.float32([[0, 0, 10, 10]] * 6)
  scores = np.float32([np.nan, np.inf, 0.5, 0.9, 0.8, 0.7])
  boxes[3, 0] = np.nan
  boxes[4, 2] = np.inf
  check(boxes, scores, 0.5, 6, want=[5])
  boxes = random_boxes(rng, 280)
  scores = rng.random(280).astype(np.float32)
  scores[rng.choice(280, 25, replace=False)] = np.nan
  scores[rng.choice(280, 25, replace=False)] = -np.inf
  scores[rng.choice(280, 5, replace=False)] = np.inf
  boxes[rng.choice(280, 20, replace=False), rng.integers(0, 4)] = np.nan
  boxes[rng.choice(280, 10, replace=False), rng.integers(0, 4)] = -np.inf
  for t in (0.0, 0.5):
    check(boxes, scores, t, 280)
  got, _ = padded(boxes, np.full(280, np.nan, np.float32), 0.5, 280)
  assert not np.asarray(got[1]).any() and (np.asarray(got[0]) == -1).all()


def test_inverted_boxes_and_negative_threshold():
  boxes = np.float32([[20, 20, 5, 40], [20, 20, 5, 40], [5, 20, 20, 40],
                      [5, 40, 20, 20], [6, 21, 20, 40]])
  scores = np.float32([0.9, 0.8, 0.7, 0.6, 0.5])
  check(boxes, scores, 0.0, 5, want=[0, 1, 2, 3])
  check(boxes, scores, 0.9, 5, want=[0, 1, 2, 3, 4])
  # Negative threshold: every pair with a positive union suppresses (IoU 0 >
  # -0.5); pairs of two empty boxes (union 0) never do (ops.nms contract;
  # the numpy reference would suppress them, so no nms_cpu comparison here).
  # 0 removes 2 and 4; 1 and 3 are empty like 0 and survive.
  check(boxes, scores, -0.5, 5, want=[0, 1, 3])


def test_chain_across_greedy_tiles_and_blocks():
  # Neighbours overlap (IoU 0.82), next-but-one less (0.68): greedy keeps
  # every other box; the chain crosses greedy tiles and mask blocks.
  x = np.arange(N_PAD, dtype=np.float32) * 2.0
  boxes = np.stack([x, 0 * x, x + 19, 0 * x + 19], 1)
  scores = np.float32(1 - np.arange(N_PAD) / N_PAD)
  got = check(boxes, scores, 0.75, N_PAD)
  np.testing.assert_array_equal(got, np.arange(0, N_PAD, 2))


def test_small_n_and_max_output(rng):
  # N = 1 and N < one tile, native shapes; max_output > N pads.
  for n in (1, 5):
    boxes = random_boxes(rng, n, size=20)
    scores = rng.random(n).astype(np.float32)
    idx, valid = jit_pallas(boxes, scores, np.float32(0.3), max_output=12)
    assert idx.shape == (12,) and idx.dtype == jnp.int32
    assert valid.shape == (12,) and valid.dtype == jnp.bool_
    want = reference(boxes, scores, 0.3, 12)
    np.testing.assert_array_equal(kept((idx, valid)), want)
    np.testing.assert_array_equal(
        kept(jit_ref(boxes, scores, np.float32(0.3), 12)), want)
  # max_output smaller than what is kept: the first ones; the second mask
  # block is skipped (early stop), the result is unchanged.
  boxes = random_boxes(rng, N_PAD, size=300)
  scores = rng.random(N_PAD).astype(np.float32)
  full = reference(boxes, scores, 0.5, N_PAD)
  assert len(full) > 40
  np.testing.assert_array_equal(
      kept(jit_pallas(boxes, scores, np.float32(0.5), max_output=20)),
      full[:20])
  # Empty input and max_output = 0 (no kernel call at all).
  idx, valid = pallas_nms.nms(np.zeros((0, 4), np.float32),
                              np.zeros((0,), np.float32), 0.5, 7)
  assert idx.shape == (7,) and not valid.any() and (idx == -1).all()
  idx, valid = pallas_nms.nms(boxes, scores, 0.5, 0)
  assert idx.shape == (0,) and valid.shape == (0,)


def test_jit_equals_eager(rng):
  boxes = random_boxes(rng, 30, size=30)
  scores = rng.random(30).astype(np.float32)
  a = pallas_nms.nms(jnp.asarray(boxes), jnp.asarray(scores), 0.4, 20,
                     interpret=True)
  b = jit_pallas(boxes, scores, np.float32(0.4), max_output=20,
                 block_rows=pallas_nms.BLOCK_ROWS)
  assert 1 < int(b[1].sum()) < 20, int(b[1].sum())
  np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
  np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))
  np.testing.assert_array_equal(kept(a), reference(boxes, scores, 0.4, 20))


def test_vmap_over_batch_and_thresholds(rng):
  b, n = 3, 80
  boxes = np.stack([random_boxes(rng, n) for _ in range(b)])
  scores = rng.random((b, n)).astype(np.float32)
  scores[1] = -np.inf  # One image with nothing.
  thr = np.float32([0.3, 0.5, 0.0])
  f = jax.jit(jax.vmap(lambda bb, ss, tt: pallas_nms.nms(
      bb, ss, tt, 60, interpret=True)))
  idx, valid = f(boxes, scores, thr)
  for i in range(b):
    np.testing.assert_array_equal(kept((idx[i], valid[i])),
                                  reference(boxes[i], scores[i], thr[i], 60))


# ----------------------------------------------------------------------------
# Memory, lowering, selection.
# ----------------------------------------------------------------------------
def test_mask_memory_is_blocked():
  # N = 12000 -> 2000: no N x N/32 mask; each block at most 2048 rows.
  n = 12000
  jaxpr = jax.make_jaxpr(functools.partial(
      pallas_nms.nms, max_output=2000, interpret=True))(
          jax.ShapeDtypeStruct((n, 4), jnp.float32),
          jax.ShapeDtypeStruct((n,), jnp.float32), jnp.float32(0.7))
  sizes = [int(np.prod(v.aval.shape)) * 4
           for v in _pallas_outputs(jaxpr.jaxpr)]
  p = 12032
  assert len(sizes) == 6, sizes  # ceil(12032 / 2048) blocks.
  assert max(sizes) == 2048 * p // 32 * 4  # 3.1 MB.
  assert sum(sizes) < p * p // 32 * 4 * 0.6  # Upper triangle, by blocks.


def _pallas_outputs(jaxpr):
  out = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "pallas_call":
      out += eqn.outvars
    for sub in jex_core.jaxprs_in_params(eqn.params):
      out += _pallas_outputs(sub)
  return out


@pytest.mark.parametrize("platform,target", [
    ("cuda", "__gpu$xla.gpu.triton"), ("tpu", "tpu_custom_call")])
def test_lowers_for_device(platform, target):
  # Lowering only (no device here): Pallas -> Triton IR / Mosaic MLIR must
  # succeed for the kernel's ops and block shapes, also under vmap.
  f = jax.vmap(functools.partial(pallas_nms.nms, max_output=100,
                                 backend=platform, block_rows=512),
               in_axes=(0, 0, None))
  text = jax.jit(f).trace(
      jax.ShapeDtypeStruct((2, 1000, 4), jnp.float32),
      jax.ShapeDtypeStruct((2, 1000), jnp.float32),
      jax.ShapeDtypeStruct((), jnp.float32)).lower(
          lowering_platforms=(platform,)).as_text()
  calls = re.findall(r"custom_call @([\w$.]+)", text)
  assert calls.count(target) == 2, calls  # 1024 rows = two blocks.


def test_select_nms():
  assert pallas_nms.select_nms("auto", "cpu") is nms_lib.nms
  assert pallas_nms.select_nms("cpu") is nms_lib.nms
  assert pallas_nms.select_nms("jnp", "gpu") is nms_lib.nms
  assert pallas_nms.nms_for_backend("cpu") is nms_lib.nms
  # No platform: decided when lowering (test_follows_lowering_platform).
  assert pallas_nms.nms_for_backend() is pallas_nms.auto_nms
  assert pallas_nms.select_nms("pallas") is pallas_nms.nms
  for choice, platform in (("auto", "gpu"), ("AUTO", "tpu"), ("cuda", None),
                           ("pallas", "gpu"), ("pallas", "cpu")):
    fn = pallas_nms.select_nms(choice, platform)
    assert fn.func is pallas_nms.nms, (choice, platform)
    assert fn.keywords["backend"] == (platform or choice)
  # The per-class variants.
  assert pallas_nms.select_nms("jnp", batched=True) is nms_lib.batched_nms
  assert pallas_nms.select_nms("auto", "cpu",
                               batched=True) is nms_lib.batched_nms
  assert pallas_nms.select_nms(batched=True) is pallas_nms.auto_batched_nms
  assert pallas_nms.select_nms("pallas",
                               batched=True) is pallas_nms.batched_nms
  fn = pallas_nms.select_nms("auto", "tpu", batched=True)
  assert fn.func is pallas_nms.batched_nms and fn.keywords["backend"] == "tpu"
  with pytest.raises(ValueError):
    pallas_nms.select_nms("triton")
  with pytest.raises(ValueError):
    pallas_nms.nms(np.zeros((3, 4), np.float32), np.ones(3, np.float32), 0.5,
                   2, block_rows=100)
  # 'pallas' on CPU runs the kernel in interpret mode.
  boxes = hand_three_boxes()
  fn = pallas_nms.select_nms("pallas", "cpu")
  np.testing.assert_array_equal(
      kept(fn(boxes, np.float32([0.9, 0.8, 0.7]), 0.3, 3)), [0, 2])


# ----------------------------------------------------------------------------
# batched_nms (per class / per FPN level)
# ----------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("max_det", "offset"))
def jit_batched(boxes, scores, thresh, max_det, offset):
  return pallas_nms.batched_nms(boxes, scores, thresh, max_det, -1.0,
                                pixel_offset=offset, interpret=True,
                                block_rows=512)


def test_batched_matches_torchvision_and_ops_nms(rng):
  """torchvision's batched_nms (an independent reference) and
  ops.nms.batched_nms; 4 x 150 entries sort into 768 rows: two mask
  blocks, so suppression across blocks is exercised."""
  torch = pytest.importorskip("torch")
  tv_ops = pytest.importorskip("torchvision.ops")
  n, k = 150, 4
  boxes, scores, cls, per_cls = class_boxes(rng, n, k, 40)
  for thr in (0.3, 0.7):
    want = tv_ops.batched_nms(torch.from_numpy(boxes),
                              torch.from_numpy(scores),
                              torch.from_numpy(cls), thr).numpy()
    for offset in (0.0, 1.0):
      got = jit_batched(boxes, per_cls, np.float32(thr), max_det=n,
                        offset=offset)
      ref = nms_lib.batched_nms(boxes, per_cls, thr, n, -1.0,
                                pixel_offset=offset)
      for g, r in zip(got, ref):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(r))
      if offset == 0.0:
        v = np.asarray(got[4])
        np.testing.assert_array_equal(np.asarray(got[3])[v], want)
        np.testing.assert_array_equal(np.asarray(got[2])[v], cls[want])
  # Per-class boxes [K, N, 4]: the same box in every class is kept in each.
  same = np.repeat(np.float32([[0, 0, 10, 10], [1, 1, 11, 11]])[None], 3, 0)
  got = pallas_nms.batched_nms(same, np.float32([[0.9, 0.8]] * 3), 0.5, 6,
                               interpret=True)
  assert np.asarray(got[4]).sum() == 3
  np.testing.assert_array_equal(np.asarray(got[2])[:3], [0, 1, 2])


def _custom_calls(fn, platform):
  text = jax.jit(jax.vmap(fn)).trace(
      jax.ShapeDtypeStruct((2, 600, 4), jnp.float32),
      jax.ShapeDtypeStruct((2, 600), jnp.float32)).lower(
          lowering_platforms=(platform,)).as_text(debug_info=True)
  # Interpret mode lowers the kernel's grid loop under the kernel's name.
  interpreted = bool(re.search(r"nms_suppression_mask/(?!pallas_call)", text))
  return re.findall(r"custom_call @([\w$.]+)", text), interpreted


@pytest.mark.parametrize("choice", ["auto", "pallas"])
def test_follows_lowering_platform(choice, rng):
  # One traced function; the kernel is chosen by the platform lowered for,
  # not by this host's default backend (CPU).
  fn = pallas_nms.select_nms(choice)
  f = lambda b, s: fn(b, s, 0.5, 50)  # noqa: E731
  assert _custom_calls(f, "cuda") == (["__gpu$xla.gpu.triton"], False)
  assert _custom_calls(f, "tpu") == (["tpu_custom_call"], False)
  # CPU: 'auto' is the jnp NMS, 'pallas' the kernel in interpret mode.
  assert _custom_calls(f, "cpu") == ([], choice == "pallas")
  boxes = np.stack([random_boxes(rng, 600) for _ in range(2)])
  scores = rng.random((2, 600)).astype(np.float32)
  got = jax.jit(jax.vmap(f))(boxes, scores)
  want = jax.jit(jax.vmap(lambda b, s: nms_lib.nms(b, s, 0.5, 50)))(
      boxes, scores)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)
