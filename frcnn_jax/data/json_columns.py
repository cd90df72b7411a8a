"""Reading big JSON files by columns: chosen fields of the entries of arrays.

A COCO ``instances_train2017.json`` is a few hundred MB of text that
``json.load`` turns into several GB of Python objects, most of them
segmentation polygons that a box detector never reads. :func:`read_columns`
parses the same text with the standard library's own decoder
(``json.JSONDecoder.raw_decode``, the C scanner), one entry at a time for
the top-level arrays it is asked about, and keeps only the requested fields
of each entry, as one list per field (a *column*). Each entry's objects are
freed as soon as its fields are copied, so the peak memory is the text plus
the columns instead of the text plus every object of the file; and since
fewer objects are kept alive, it is also faster than ``json.load``.

The result is exactly what ``json.loads`` would give, restricted to the
chosen fields: values are the decoder's own (same numbers, same strings,
the last of duplicate keys). An entry without a field has :data:`MISSING`
in that column; an entry that is not an object has a :class:`NotAnObject`
in every column, so a reader can report both precisely.

Each field has a *kind* that says how its values are stored, a few thousand
entries at a time: ``'int'`` (every value a JSON integer: an int64 array),
``'float'`` (integers or floats: float64), ``'float4'`` (lists of 4
integers or floats, like COCO's ``bbox``: float64 ``[n, 4]``), ``'any'``
(the Python values). A block whose values do not all fit the kind (a
string, ``null``, ``true``, a missing field, an integer beyond int64) keeps
its Python values, so nothing is lost or coerced: :meth:`Columns.array`
gives the whole column as one array only when every value fitted, and
:meth:`Columns.values` always gives the Python values (``int64`` and
``float64`` round-trip ints and floats exactly). Converting per block also
matters for speed: keeping the decoder's small objects alive among the
freed ones (the rest of each entry) makes the parse itself ~15% slower. Anything the
streaming scanner does not expect (malformed text, extra data, a top level
that is not an object) is handed to ``json.loads`` of the whole text, so
errors are ``json.JSONDecodeError`` s with the usual line and column, and
unusual but valid files give the same columns.
"""

from __future__ import annotations

import gc
import json
import json.decoder
import json.scanner
import itertools
import operator
from typing import Any, Sequence

import numpy as np

_WHITESPACE = json.decoder.WHITESPACE.match
_CHUNK = 4096  # Entries decoded before their fields are copied out.
_WS_CHARS = ' \t\n\r'


class _Missing:
  """The value of a field that an entry does not have."""

  def __repr__(self) -> str:
    return 'MISSING'


MISSING = _Missing()


class NotAnObject:
  """Stands for an array entry that is not a JSON object."""

  def __init__(self, value: Any):
    self.type_name = type(value).__name__

  def __repr__(self) -> str:
    return f'NotAnObject({self.type_name})'


KINDS = ('int', 'float', 'float4', 'any')


def _block(values: list, kind: str):
  """``values`` as an array of ``kind`` when every value fits, else as is."""
  if kind == 'any' or not values:
    return values
  types = set(map(type, values))
  try:
    if kind == 'int' and types <= {int}:
      return np.array(values, np.int64)
    if kind == 'float' and types <= {int, float}:
      return np.array(values, np.float64)
    if (kind == 'float4' and types <= {list} and set(map(len, values)) <= {4}
        and set(map(type, itertools.chain.from_iterable(values)))
        <= {int, float}):
      return np.array(values, np.float64).reshape(len(values), 4)
  except OverflowError:  # An integer beyond int64 / float64.
    pass
  if kind not in KINDS:
    raise ValueError(f'unknown column kind {kind!r}; one of {KINDS}')
  return values


class Columns:
  """Chosen fields of the entries of one JSON array, stored by kind.

  ``len(columns)`` is the number of entries; :meth:`values` gives a field's
  Python values (with :data:`MISSING` / :class:`NotAnObject` markers),
  :meth:`array` the field as one numpy array when every value fitted its
  kind (else None).
  """

  def __init__(self, n: int, kinds: dict[str, str],
               blocks: dict[str, list]):
    self.n = n
    self.kinds = dict(kinds)
    self._blocks = blocks

  def __len__(self) -> int:
    return self.n

  def array(self, field: str) -> np.ndarray | None:
    """The field as one array (int64 / float64 / float64 ``[n, 4]``), or
    None when some value did not fit its kind (or the kind is 'any')."""
    blocks = self._blocks[field]
    if self.kinds[field] == 'any' or not all(
        isinstance(b, np.ndarray) for b in blocks):
      return None
    if not blocks:
      shape = (0, 4) if self.kinds[field] == 'float4' else (0,)
      return np.zeros(shape, np.int64 if self.kinds[field] == 'int'
                      else np.float64)
    return np.concatenate(blocks) if len(blocks) > 1 else blocks[0]

  def values(self, field: str) -> list:
    """The field's Python values, one per entry."""
    out = []
    for b in self._blocks[field]:
      out.extend(b.tolist() if isinstance(b, np.ndarray) else b)
    return out

  __getitem__ = values

  def __repr__(self) -> str:
    return f'Columns({self.n} entries: {self.kinds})'


def columns_of(entries: Sequence[Any], fields: dict[str, str]) -> Columns:
  """The :class:`Columns` of already parsed array entries."""
  blocks = {f: [] for f in fields}
  for s in range(0, len(entries), _CHUNK):
    _copy_fields(entries[s:s + _CHUNK], fields, blocks)
  return Columns(len(entries), fields, blocks)


def _copy_fields(entries: Sequence[Any], kinds: dict[str, str],
                 blocks: dict[str, list]) -> None:
  """Appends one block per field for ``entries``."""
  if not entries or not kinds:
    return
  cols = {f: [] for f in kinds}
  if set(map(type, entries)) <= {dict}:
    try:  # Every entry has every field (the usual case): one C call each.
      rows = list(map(operator.itemgetter(*kinds), entries))
      if len(kinds) == 1:
        rows = [(r,) for r in rows]
      cols = dict(zip(kinds, map(list, zip(*rows))))
    except KeyError:
      for f in kinds:
        cols[f] = [e.get(f, MISSING) for e in entries]
  else:
    for e in entries:
      if isinstance(e, dict):
        for f, col in cols.items():
          col.append(e.get(f, MISSING))
      else:
        marker = NotAnObject(e)
        for col in cols.values():
          col.append(marker)
  for f, kind in kinds.items():
    blocks[f].append(_block(cols[f], kind))


class _Unexpected(Exception):
  """The streaming scanner met something it leaves to ``json.loads``."""


def _array(s: str, i: int, kinds: dict[str, str],
           raw) -> tuple[Columns, int]:
  """Columns of the array starting at ``s[i] == '['``; index after it.

  The loop runs once per entry, so the separator is read by hand in the
  common cases (``,``, ``, ``) and the whitespace regex only otherwise; the
  end of the text raises ``IndexError`` (handed to ``json.loads``).
  """
  blocks = {f: [] for f in kinds}
  n = 0
  chunk = []
  append = chunk.append
  i = _WHITESPACE(s, i + 1).end()
  if s[i] == ']':
    return Columns(0, kinds, blocks), i + 1
  while True:
    value, i = raw(s, i)
    append(value)
    if len(chunk) == _CHUNK:
      _copy_fields(chunk, kinds, blocks)
      n += _CHUNK
      chunk.clear()
    c = s[i]
    if c in _WS_CHARS:
      i = _WHITESPACE(s, i).end()
      c = s[i]
    if c == ',':
      i += 1
      c = s[i]
      if c == ' ':
        i += 1
        c = s[i]
      if c in _WS_CHARS:
        i = _WHITESPACE(s, i).end()
    elif c == ']':
      break
    else:
      raise _Unexpected
  _copy_fields(chunk, kinds, blocks)
  return Columns(n + len(chunk), kinds, blocks), i + 1


def _scan(s: str, arrays: dict[str, dict[str, str]]) -> dict[str, Any]:
  # The C scanner of json.loads, called directly (no Python frame per entry);
  # it raises StopIteration where no value starts.
  raw = json.scanner.make_scanner(json.JSONDecoder())
  i = _WHITESPACE(s, 0).end()
  if s[i:i + 1] != '{':
    raise _Unexpected
  out = {}
  i = _WHITESPACE(s, i + 1).end()
  if s[i:i + 1] == '}':
    i += 1
  else:
    while True:
      if s[i:i + 1] != '"':
        raise _Unexpected
      key, i = raw(s, i)
      i = _WHITESPACE(s, i).end()
      if s[i:i + 1] != ':':
        raise _Unexpected
      i = _WHITESPACE(s, i + 1).end()
      if key in arrays and s[i:i + 1] == '[':
        out[key], i = _array(s, i, arrays[key], raw)
      else:
        out[key], i = raw(s, i)
      i = _WHITESPACE(s, i).end()
      c = s[i:i + 1]
      if c == ',':
        i = _WHITESPACE(s, i + 1).end()
      elif c == '}':
        i += 1
        break
      else:
        raise _Unexpected
  if _WHITESPACE(s, i).end() != len(s):
    raise _Unexpected
  return out


def read_text(path: str) -> str:
  """The text of a JSON file, its encoding (UTF-8/16/32, with or without a
  BOM) detected from the first bytes as ``json.loads`` does for bytes."""
  with open(path, 'rb') as f:
    head = f.read(4)
  encoding = json.detect_encoding(head)
  if encoding == 'utf-8' and head.startswith(b'\xef\xbb\xbf'):
    encoding = 'utf-8-sig'
  with open(path, encoding=encoding) as f:
    return f.read()


def read_columns(path: str, arrays: dict[str, dict[str, str]]) -> Any:
  """Parses a JSON file, keeping only chosen fields of top-level arrays.

  Args:
    path: the file.
    arrays: top-level key -> {field: kind} to keep of each entry of its
      array (kinds: ``'int'``, ``'float'``, ``'float4'``, ``'any'``).

  Returns:
    When the top level is an object: a dict of its keys; the value of a key
    named in ``arrays`` is a :class:`Columns` when it is an array, every
    other value is as ``json.loads`` gives it. Any other top level: the
    value ``json.loads`` gives.

  Raises:
    OSError, UnicodeDecodeError: the file cannot be read.
    json.JSONDecodeError: malformed JSON (position as ``json.loads``).
  """
  s = read_text(path)
  # Parsing allocates millions of containers and frees none of them in
  # cycles: the cyclic garbage collector's passes over them would cost as
  # much as the parse itself (measured: 1.6x the time). Paused meanwhile.
  gc_was_enabled = gc.isenabled()
  gc.disable()
  try:
    try:
      return _scan(s, arrays)
    except (_Unexpected, StopIteration, IndexError, json.JSONDecodeError):
      pass
    value = json.loads(s)  # Raises the decoder's error, or parses.
  finally:
    if gc_was_enabled:
      gc.enable()
  del s
  if isinstance(value, dict):
    for key, fields in arrays.items():
      if isinstance(value.get(key), list):
        value[key] = columns_of(value[key], fields)
  return value
