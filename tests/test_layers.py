"""The floors of the house: every import of project code points down.

Every module of the project is parsed with ``ast`` (nothing is imported) and
mapped to a floor. A module may import project code from its own floor or
below, never above; the import graph has no circle (on any floor); project
code is imported at the top of a module only (a function-local import is
how circles hide); inference never reaches training code, not even
indirectly; and a package's modules never import names from their own
package's ``__init__`` (which re-exports them: a circle).
"""
from __future__ import annotations

import ast
import os

import pytest

from tests.conftest import REPO

# Bottom up. A module's floor is that of the longest matching prefix.
FLOORS = [
    ("ops", "pure jax.numpy ops"),
    ("frcnn_jax.compiler_options frcnn_jax.metrics frcnn_jax.vis "
     "frcnn_jax.metric_writers frcnn_jax.run_lock frcnn_jax.parallel "
     "frcnn_jax.console frcnn_jax.analysis frcnn_jax.paths frcnn_jax.siblings "
     "frcnn_jax.run_config frcnn_jax.voc_metrics",
     "leaves"),
    ("frcnn_jax.data", "data: records, readers, transforms, loaders"),
    ("frcnn_jax.modeling", "the detector's stages"),
    ("frcnn_jax.checkpoints frcnn_jax.optimizer",
     "checkpoint layout, optimizer"),
    ("frcnn_jax.weights", "pretrained weights"),
    ("frcnn_jax.eval_lib frcnn_jax.exported frcnn_jax.detections",
     "inference over datasets, metrics; exported models"),
    ("frcnn_jax.demo_lib frcnn_jax.train_lib", "demo, training"),
    ("frcnn_jax.config_lib frcnn_jax.cli frcnn_jax.inference "
     "frcnn_jax.exporting",
     "configs, command lines, the Python API, export"),
    ("train eval demo configs frcnn_jax.weights.__main__ frcnn_jax.train "
     "frcnn_jax.eval frcnn_jax.demo frcnn_jax.export frcnn_jax.browse",
     "entry points"),
]
FLOOR_OF = {prefix: i for i, (names, _) in enumerate(FLOORS)
            for prefix in names.split()}
# The package's root __init__ (matched exactly, not as a prefix): the top.
ROOTS = {"frcnn_jax": len(FLOORS) - 1}
# Inference (evaluation, demo, the model, the data) must work without
# anything that only training needs.
TRAINING = ("frcnn_jax.train_lib", "frcnn_jax.optimizer")
INFERENCE = ("frcnn_jax.eval_lib", "frcnn_jax.demo_lib", "frcnn_jax.modeling",
             "frcnn_jax.data", "frcnn_jax.checkpoints", "frcnn_jax.weights",
             "frcnn_jax.inference", "frcnn_jax.exporting",
             "frcnn_jax.exported", "frcnn_jax.export", "frcnn_jax.eval",
             "frcnn_jax.demo", "frcnn_jax.config_lib",
             "frcnn_jax.detections")
PROJECT_ROOTS = ("ops", "frcnn_jax", "configs", "train", "eval", "demo")


def _module_files() -> dict[str, str]:
  """Module name -> file, for every module of the project (not tests/bench)."""
  out = {}
  for top in ("ops", "frcnn_jax", "configs"):
    for root, dirs, files in os.walk(os.path.join(REPO, top)):
      dirs[:] = [d for d in dirs if not d.startswith((".", "__pycache__"))]
      for f in files:
        if not f.endswith(".py"):
          continue
        rel = os.path.relpath(os.path.join(root, f), REPO)[:-3]
        name = rel.replace(os.sep, ".")
        if name.endswith(".__init__"):
          name = name[:-len(".__init__")]
        out[name] = os.path.join(root, f)
  for script in ("train", "eval", "demo"):
    out[script] = os.path.join(REPO, f"{script}.py")
  return out


MODULES = _module_files()


def floor(module: str) -> int:
  if module in ROOTS:
    return ROOTS[module]
  parts = module.split(".")
  for n in range(len(parts), 0, -1):
    key = ".".join(parts[:n])
    if key in FLOOR_OF:
      return FLOOR_OF[key]
  raise AssertionError(f"{module} has no floor: add it to FLOORS")


def _is_package(module: str) -> bool:
  return MODULES[module].endswith("__init__.py")


def _imports(module: str):
  """(imported module, line, is top level) for each import of project code.

  ``from pkg import name`` is an import of ``pkg.name`` when that is a
  module, else of ``pkg`` (a name its ``__init__`` defines).
  """
  path = MODULES[module]
  tree = ast.parse(open(path).read(), path)
  top = {id(n) for n in tree.body}
  package = module if _is_package(module) else module.rpartition(".")[0]
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parent = package.split(".")
        parent = parent[:len(parent) - node.level + 1]
        base = ".".join(parent + ([base] if base else []))
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                 for a in node.names]
    else:
      continue
    for t in targets:
      if t.split(".")[0] not in PROJECT_ROOTS:
        continue
      while t not in MODULES and "." in t:   # import pkg.mod.attr
        t = t.rpartition(".")[0]
      assert t in MODULES, f"{module}:{node.lineno}: unknown project module {t}"
      out.append((t, node.lineno, id(node) in top))
  return out


GRAPH = {m: _imports(m) for m in MODULES}


def test_every_module_has_a_floor():
  for m in MODULES:
    floor(m)


def test_no_import_points_up():
  bad = []
  for m, imports in GRAPH.items():
    for t, line, _ in imports:
      if floor(t) > floor(m):
        bad.append(f"{MODULES[m]}:{line}: {m} (floor {floor(m)}, "
                   f"{FLOORS[floor(m)][1]}) imports {t} (floor {floor(t)}, "
                   f"{FLOORS[floor(t)][1]})")
  assert not bad, "imports that point up:\n" + "\n".join(bad)


def test_project_code_is_imported_at_the_top_of_modules():
  bad = [f"{MODULES[m]}:{line}: function-local import of {t}"
         for m, imports in GRAPH.items() for t, line, top in imports
         if not top]
  assert not bad, "\n".join(bad)


def test_no_import_circle():
  state, stack, circles = {}, [], []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for t, _, _ in GRAPH[m]:
      if t == m:
        continue
      if state.get(t) == "open":
        circles.append(stack[stack.index(t):] + [t])
      elif t not in state:
        visit(t)
    stack.pop()
    state[m] = "done"

  for m in sorted(GRAPH):
    if m not in state:
      visit(m)
  assert not circles, "import circles:\n" + "\n".join(
      " -> ".join(c) for c in circles)


def test_modules_do_not_import_their_own_package_init():
  bad = []
  for m, imports in GRAPH.items():
    for t, line, _ in imports:
      if t != m and _is_package(t) and m.startswith(t + "."):
        bad.append(f"{MODULES[m]}:{line}: {m} imports from {t}/__init__.py, "
                   f"which re-exports it; import the defining module")
  assert not bad, "\n".join(bad)


def _reachable(start: str) -> set[str]:
  seen, todo = set(), [start]
  while todo:
    m = todo.pop()
    for t, _, _ in GRAPH[m]:
      if t not in seen:
        seen.add(t)
        todo.append(t)
  return seen


@pytest.mark.parametrize("module", sorted(
    m for m in MODULES if m.startswith(INFERENCE)))
def test_inference_never_imports_training(module):
  reached = sorted(t for t in _reachable(module) if t.startswith(TRAINING))
  assert not reached, f"{module} reaches training code: {reached}"


def test_ops_is_pure():
  """ops/ imports nothing of the project above it and no flax / config."""
  for m in MODULES:
    if not m.startswith("ops"):
      continue
    src = open(MODULES[m]).read()
    for banned in ("import flax", "from flax", "ml_collections"):
      assert banned not in src, f"{MODULES[m]}: {banned}"


def test_files_stay_readable():
  """No file over ~600 lines outside ops/roi_align.py (split by concern)."""
  long = {MODULES[m]: n for m in MODULES
          if (n := sum(1 for _ in open(MODULES[m]))) > 620
          and not MODULES[m].endswith(os.path.join("ops", "roi_align.py"))}
  assert not long, long


def _tool_imports(top: str) -> list[tuple[str, int, str]]:
  """(file, line, imported top-level name) of every import in ``top``/."""
  out = []
  for root, dirs, files in os.walk(os.path.join(REPO, top)):
    dirs[:] = [d for d in dirs if not d.startswith((".", "__pycache__"))]
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(root, f)
        for node in ast.walk(ast.parse(open(path).read(), path)):
          if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
          elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
          else:
            continue
          out += [(path, node.lineno, n.split(".")[0]) for n in names]
  return out


def test_tools_above_the_library_point_down():
  """The library never imports bench/ or tests/; bench/ never imports tests/
  (tests import bench to test its tools: the other way would be a circle)."""
  bad = [f"{path}:{line}: the library imports {name}"
         for top in ("ops", "frcnn_jax", "configs")
         for path, line, name in _tool_imports(top)
         if name in ("bench", "tests")]
  bad += [f"{path}:{line}: bench imports tests"
          for path, line, name in _tool_imports("bench") if name == "tests"]
  assert not bad, "\n".join(bad)


def test_the_rules_catch_violations(tmp_path, monkeypatch):
  """The checks above fail on an upward import and on a circle."""
  fake = dict(GRAPH)
  fake["ops.boxes"] = GRAPH["ops.boxes"] + [("frcnn_jax.train_lib", 1, True)]
  monkeypatch.setattr(__import__(__name__, fromlist=["x"]), "GRAPH", fake)
  with pytest.raises(AssertionError, match="imports that point up"):
    test_no_import_points_up()
  with pytest.raises(AssertionError, match="import circles"):
    test_no_import_circle()
  fake["frcnn_jax.data.records"] = GRAPH["frcnn_jax.data.records"] + [
      ("frcnn_jax.data", 3, False)]
  with pytest.raises(AssertionError, match="function-local"):
    test_project_code_is_imported_at_the_top_of_modules()
  with pytest.raises(AssertionError, match="re-exports it"):
    test_modules_do_not_import_their_own_package_init()
