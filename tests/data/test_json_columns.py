"""json_columns.read_columns against json.loads (the reference)."""

import json

import numpy as np
import pytest

from frcnn_jax.data import json_columns as jc

KINDS = {'a': 'int', 'b': 'float', 'c': 'float4', 'd': 'any'}


def project(entries, fields):
  """The reference: json.loads' entries, one list per field, with markers."""
  out = {f: [] for f in fields}
  for e in entries:
    for f in fields:
      if not isinstance(e, dict):
        out[f].append(('not an object', type(e).__name__))
      else:
        out[f].append(e.get(f, jc.MISSING))
  return out


def comparable(values):
  return [('not an object', v.type_name) if isinstance(v, jc.NotAnObject)
          else v for v in values]


def fits(values, kind):
  """Whether every value fits ``kind`` (reference for Columns.array)."""
  num = (int, float)
  if kind == 'int':
    return all(type(v) is int and -2**63 <= v < 2**63 for v in values)
  if kind == 'float':
    return all(type(v) in num and abs(v) < 1e308 for v in values)
  if kind == 'float4':
    return all(type(v) is list and len(v) == 4 and
               all(type(x) in num for x in v) for v in values)
  return False


def random_entry(rng):
  e = {}
  for f, kind in KINDS.items():
    r = rng.random()
    if r < 0.03:
      continue  # Missing.
    if r < 0.06:
      e[f] = [None, True, 'x', 1.5, {'k': 1}][rng.integers(5)]
    elif kind == 'int':
      e[f] = int(rng.integers(-2**40, 2**40))
    elif kind == 'float':
      e[f] = float(rng.normal()) if rng.random() < 0.5 else int(rng.integers(9))
    elif kind == 'float4':
      e[f] = [round(float(x), 2) for x in rng.uniform(0, 100, 4)]
    else:
      e[f] = {'nested': [1, 'é', None], 's': 'a "quoted" \\ string'}
  e['segmentation'] = [[float(x) for x in rng.uniform(0, 50, 8)]]
  e['b'] = e.get('b', 0)  # A duplicate key below overrides it.
  return e


def check(path, doc, arrays):
  got = jc.read_columns(str(path), arrays)
  want = json.loads(path.read_text(encoding='utf-8-sig')
                    if path.read_bytes()[:3] == b'\xef\xbb\xbf'
                    else path.read_bytes().decode(json.detect_encoding(
                        path.read_bytes())))
  assert set(got) == set(want)
  for key, value in want.items():
    if key in arrays and isinstance(value, list):
      cols = got[key]
      assert isinstance(cols, jc.Columns) and len(cols) == len(value)
      ref = project(value, arrays[key])
      for f, kind in arrays[key].items():
        assert comparable(cols.values(f)) == ref[f], (key, f)
        arr = cols.array(f)
        if fits(ref[f], kind):
          assert arr is not None, (key, f)
          np.testing.assert_array_equal(
              arr, np.array(ref[f], arr.dtype).reshape(arr.shape))
        else:
          assert arr is None, (key, f)
    else:
      assert got[key] == value
  return got


@pytest.mark.parametrize('dump', [
    dict(), dict(indent=2), dict(separators=(',', ':')),
    dict(separators=(' ,  ', ' :\t'))])
def test_equals_json_loads(tmp_path, rng, dump):
  entries = [random_entry(rng) for _ in range(9000)]  # Three chunks.
  entries[5] = 'not an object'
  entries[4500] = [1, 2]
  doc = {'info': {'x': [1, 2]}, 'items': entries, 'empty': [],
         'other': entries[:3], 'notarray': {'a': 1}}
  text = json.dumps(doc, **dump)
  # A duplicate key inside an entry and at the top level: the last wins.
  text = text.replace('"b"', '"b": -7, "b"', 1)
  text = text[:-1] + (', "info": 3}')
  path = tmp_path / 'f.json'
  path.write_text(text)
  arrays = {'items': KINDS, 'empty': KINDS, 'notarray': KINDS,
            'missing': KINDS}
  got = check(path, doc, arrays)
  assert got['info'] == 3 and len(got['empty']) == 0
  assert got['empty'].array('a').shape == (0,)
  assert got['empty'].array('c').shape == (0, 4)


def test_arrays_per_block_keep_exact_values(tmp_path):
  # One odd value makes its block fall back to Python values; the others
  # stay exact and whole columns still round-trip.
  n = 3 * 4096 + 5
  entries = [{'a': i, 'b': i / 7, 'c': [i, 0.1, 2, 3.5]} for i in range(n)]
  entries[5000]['a'] = 2**70       # Beyond int64.
  entries[9000]['b'] = True        # A bool is not a number.
  path = tmp_path / 'f.json'
  path.write_text(json.dumps({'x': entries}))
  cols = check(path, None, {'x': {'a': 'int', 'b': 'float', 'c': 'float4'}})
  cols = cols['x']
  assert cols.array('a') is None and cols.values('a')[5000] == 2**70
  assert cols.array('b') is None and cols.values('b')[9000] is True
  assert cols.values('b')[1:3] == [1 / 7, 2 / 7]
  np.testing.assert_array_equal(cols.array('c')[:, 0], np.arange(n))


@pytest.mark.parametrize('text', [
    '{"x": [1, 2,,]}', '{"x": [{"a": 1}, {"a": 2]}', '{"x": [1, 2]', '',
    '{"x": [1] "y": 2}', '{"x": [1]} extra', '{"x": [nul]}', '[1, 2',
    '{"x": [{"a": 1}\n,\n  {"a": }]}', '{x: 1}', '{"x" 1}'])
def test_errors_are_json_loads_errors(tmp_path, text):
  path = tmp_path / 'f.json'
  path.write_text(text)
  with pytest.raises(json.JSONDecodeError) as want:
    json.loads(text)
  with pytest.raises(json.JSONDecodeError) as got:
    jc.read_columns(str(path), {'x': {'a': 'int'}})
  assert (got.value.msg, got.value.lineno, got.value.colno) == (
      want.value.msg, want.value.lineno, want.value.colno)


def test_other_top_levels_and_encodings(tmp_path):
  path = tmp_path / 'f.json'
  path.write_text('  [1, {"x": 2}]  ')
  assert jc.read_columns(str(path), {'x': {'a': 'int'}}) == [1, {'x': 2}]
  doc = {'x': [{'a': 1, 'd': 'ünï'}, {'a': 2}]}
  for enc, bom in (('utf-8', b'\xef\xbb\xbf'), ('utf-16', b''),
                   ('utf-32-le', b'')):
    path.write_bytes(bom + json.dumps(doc, ensure_ascii=False).encode(enc))
    cols = jc.read_columns(str(path), {'x': {'a': 'int', 'd': 'any'}})['x']
    assert cols.array('a').tolist() == [1, 2]
    assert cols.values('d') == ['ünï', jc.MISSING]


def test_columns_of_equals_streaming(tmp_path, rng):
  entries = [random_entry(rng) for _ in range(5000)] + [7]
  path = tmp_path / 'f.json'
  path.write_text(json.dumps({'x': entries}))
  streamed = jc.read_columns(str(path), {'x': KINDS})['x']
  direct = jc.columns_of(json.loads(path.read_text())['x'], KINDS)
  for f in KINDS:
    assert comparable(streamed.values(f)) == comparable(direct.values(f))
    assert (streamed.array(f) is None) == (direct.array(f) is None)
  with pytest.raises(ValueError, match='kind'):
    jc.columns_of([{'a': 1}], {'a': 'int32'})
