"""Dependencies inside daq_jax run one way.

Strategy: read every module's imports (top-level and lazy ones inside functions) with `ast`
and check (1) the module graph has no cycle and (2) the layers: numerics and geometry at the
bottom, then the implementations of the int8 products (quant.backends, pallas), then the ops,
then the Flax layers, then models, data and the detection task, then analysis and training,
then the command-line tools. Every module must be given a layer: a new one that is not is an
error, not a silent top layer.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "daq_jax"


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str) -> set[str]:
  """The daq_jax modules `name` imports (a `from pkg import mod` counts as pkg.mod)."""
  found = set()
  for node in ast.walk(ast.parse(MODULES[name].read_text())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith("daq_jax")}
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("daq_jax"):
      for alias in node.names:
        sub = f"{node.module}.{alias.name}"
        found.add(sub if sub in MODULES else node.module)
  return found & set(MODULES)


GRAPH = {name: _imports(name) for name in MODULES}

# Layer of each module, by prefix (the longest matching prefix wins; "daq_jax" is the package's
# own __init__ only); a module may import only modules of its own layer or below.
LAYERS = {
  "daq_jax.quant.numerics": 0,
  "daq_jax.quant.geometry": 0,
  "daq_jax.quant.config": 0,
  "daq_jax.quant.gradient": 1,
  "daq_jax.quant.contract": 1,
  "daq_jax.quant.residuals": 1,
  "daq_jax.quant.lowering": 1,
  "daq_jax.quant.memory": 1,
  "daq_jax.quant.rules": 1,
  "daq_jax.quant.backends": 2,
  "daq_jax.pallas": 2,
  "daq_jax.quant": 3,  # the ops (conv_op, dense_op, state) and the package's re-exports
  "daq_jax.nn": 4,
  "daq_jax.nnx": 4,
  "daq_jax.models": 5,
  "daq_jax.data": 5,
  "daq_jax.detection": 5,  # boxes, losses, NMS, COCO's metric: the detection task's pieces
  "daq_jax.analysis": 6,
  "daq_jax.training": 6,
  "daq_jax.cli": 7,
  "daq_jax.evaluate": 7,
  "daq_jax.analyze": 7,
  "daq_jax.compare": 7,
  "daq_jax": 7,
}


def _layer(name: str) -> int | None:
  """The layer of module `name`, or None if LAYERS gives it none."""
  prefixes = [p for p in LAYERS if name == p or (p != "daq_jax" and name.startswith(p + "."))]
  return LAYERS[max(prefixes, key=len)] if prefixes else None


def test_every_module_has_a_layer():
  assert [name for name in sorted(MODULES) if _layer(name) is None] == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name):
  upward = {dep for dep in GRAPH[name] if _layer(dep) > _layer(name)}
  assert not upward, f"{name} (layer {_layer(name)}) imports {upward}"


def test_the_module_graph_has_no_cycle():
  state: dict[str, str] = {}

  def visit(name, trail):
    state[name] = "open"
    for dep in GRAPH[name]:
      if state.get(dep) == "open":
        raise AssertionError("import cycle: " + " -> ".join([*trail, name, dep]))
      if dep not in state:
        visit(dep, [*trail, name])
    state[name] = "done"

  for name in sorted(MODULES):
    if name not in state:
      visit(name, [])


def test_pallas_is_loaded_only_on_demand():
  # The registry names the Pallas implementation as a string, imported when asked for.
  importers = {
    name for name, deps in GRAPH.items() if any(d.startswith("daq_jax.pallas") for d in deps)
  }
  assert all(name.startswith("daq_jax.pallas") for name in importers), importers
