"""Proof that int8 reaches XLA: the contractions of a traced or lowered program, with dtypes.

`contractions` walks the jaxpr (sub-jaxprs of jit, custom_vjp, remat, scan, cond and Pallas
kernels included) and lists every convolution and dot with its operand and result dtypes and
named scope. `layer_report` groups them by quantized layer and product (forward, dgrad,
wgrad), with the implementation of each, by the scope each quantized op traces its products
in. `hlo_contractions` reads the contractions from the lowered StableHLO text, i.e. what XLA
is actually handed (a Pallas kernel's are inside its custom call there, not listed).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import jax

_PRIMITIVES = ("conv_general_dilated", "dot_general")

# The named scope of each part of a quantized op (`scope`): "daq[<layer>]/<product>/<impl>",
# and for the gradient quantizer "daq[<layer>]/wgrad/<impl>/quantize g".
_SCOPE = re.compile(r"daq\[(?P<layer>[^\]]*)\]/(?P<product>forward|dgrad|wgrad)/(?P<impl>[\w,]+)")


def scope(site, product: str, backend, part: str | None = None) -> str:
  """The named scope a quantized op computes `product` of layer `site` on `backend` in, so
  that `layer_report` can find each product's contractions in a program."""
  name = f"daq[{site.name}]/{product}/{backend.name}"
  return f"{name}/{part}" if part else name


@dataclasses.dataclass(frozen=True)
class Contraction:
  """One convolution or dot: its primitive, operand dtypes, result dtype and shapes, and the
  named scope it was traced in."""

  primitive: str
  operand_dtypes: tuple[str, ...]
  result_dtype: str
  operand_shapes: tuple[tuple[int, ...], ...]
  result_shape: tuple[int, ...]
  scope: str = ""

  @property
  def is_int8(self) -> bool:
    """int8 x int8 operands accumulated in int32."""
    return self.operand_dtypes == ("int8", "int8") and self.result_dtype == "int32"


def _sub_jaxprs(value):
  if hasattr(value, "eqns"):
    yield value
  elif hasattr(value, "jaxpr") and hasattr(value, "consts"):
    yield value.jaxpr
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _sub_jaxprs(v)


def _walk(jaxpr, found: list[Contraction], outer: str = "") -> None:
  for eqn in jaxpr.eqns:
    # A sub-jaxpr's scopes are its own: the enclosing equation's scope comes first.
    own = str(eqn.source_info.name_stack)
    scope = "/".join(part for part in (outer, own) if part)
    if eqn.primitive.name in _PRIMITIVES:
      found.append(
        Contraction(
          primitive=eqn.primitive.name,
          operand_dtypes=tuple(str(v.aval.dtype) for v in eqn.invars),
          result_dtype=str(eqn.outvars[0].aval.dtype),
          operand_shapes=tuple(tuple(v.aval.shape) for v in eqn.invars),
          result_shape=tuple(eqn.outvars[0].aval.shape),
          scope=scope,
        )
      )
    for param in eqn.params.values():
      for sub in _sub_jaxprs(param):
        _walk(sub, found, scope)


def contractions(fn: Callable, *args, **kwargs) -> list[Contraction]:
  """Every conv and dot in the jaxpr of `fn(*args, **kwargs)`, in program order."""
  found: list[Contraction] = []
  _walk(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr, found)
  return found


_HLO_OP = re.compile(r"stablehlo\.(convolution|dot_general)\b.*?:\s*\((.*?)\)\s*->\s*(\S+)")
_ELEMENT = re.compile(r"x([a-z]+\d+)>")


@dataclasses.dataclass(frozen=True)
class Product:
  """One product of one quantized layer in a program: the implementation that computes it
  and its contractions (several for some: wgrad's one dot per kernel tap on `xla`)."""

  impl: str
  contractions: tuple[Contraction, ...]

  @property
  def is_int8(self) -> bool:
    """At least one contraction, every one int8 x int8 -> int32."""
    return bool(self.contractions) and all(c.is_int8 for c in self.contractions)


@dataclasses.dataclass(frozen=True)
class LayerReport:
  """Per quantized layer, its forward, dgrad and wgrad (`Product`; a product the program does
  not compute, the dgrad of a first layer say, is absent); and the contractions outside every
  quantized layer (float layers, and products of two activations such as attention's)."""

  layers: dict[str, dict[str, Product]]
  outside: tuple[Contraction, ...]

  def table(self) -> str:
    """One line per layer: each product's implementation and whether it is int8."""
    lines = []
    for layer, products in self.layers.items():
      cells = []
      for product in ("forward", "dgrad", "wgrad"):
        p = products.get(product)
        what = "-" if p is None else f"{p.impl} {'int8' if p.is_int8 else 'NOT int8'}"
        cells.append(f"{product} {what}")
      lines.append(f"{layer}: " + ", ".join(cells))
    floats = [c for c in self.outside if not c.is_int8]
    lines.append(f"outside the quantized layers: {len(floats)} float contraction(s)")
    return "\n".join(lines)


def layer_report(fn: Callable, *args, **kwargs) -> LayerReport:
  """What the program of `fn(*args, **kwargs)` (a training step, say) computes for each
  quantized layer, whatever the number of dots an implementation uses: read off the named
  scope every quantized op traces its products in (`scope`)."""
  layers: dict[str, dict[str, list]] = {}
  impls: dict[tuple[str, str], str] = {}
  outside = []
  for c in contractions(fn, *args, **kwargs):
    match = _SCOPE.search(c.scope)
    if match is None:
      outside.append(c)
      continue
    layer, product = match["layer"], match["product"]
    layers.setdefault(layer, {}).setdefault(product, []).append(c)
    impls[layer, product] = match["impl"]
  return LayerReport(
    {
      layer: {p: Product(impls[layer, p], tuple(cs)) for p, cs in products.items()}
      for layer, products in layers.items()
    },
    tuple(outside),
  )


def hlo_contractions(fn: Callable, *args, **kwargs) -> list[tuple[str, tuple[str, ...], str]]:
  """(op, operand element types, result element type) of every StableHLO convolution and
  dot_general in the lowered `jax.jit(fn)`, e.g. ("convolution", ("i8", "i8"), "i32").

  It can list fewer than `contractions`, which walks the jaxpr: the jaxpr holds both branches
  of a platform-dependent choice (`lax.platform_dependent`: the CPU's own layout of a narrow
  int8 conv beside the plain one) and products whose results nothing reads (a first layer's
  input gradient), and lowering keeps one branch and drops the dead code (ResNet-20's step:
  219 in the jaxpr, 211 lowered, 7 narrow forward convs and the stem's dgrad)."""
  return text_contractions(jax.jit(fn).lower(*args, **kwargs).as_text())


def text_contractions(text: str) -> list[tuple[str, tuple[str, ...], str]]:
  """`hlo_contractions` of StableHLO text (a program lowered some other way: for CUDA, say)."""
  found = []
  for line in text.splitlines():
    m = _HLO_OP.search(line)
    if m:
      operands = tuple(_ELEMENT.findall(m.group(2)))
      found.append((m.group(1), operands, _ELEMENT.findall(m.group(3))[0]))
  return found
