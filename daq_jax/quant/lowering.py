"""Proof that int8 reaches XLA: the contractions of a traced or lowered program, with dtypes.

`contractions` walks the jaxpr (sub-jaxprs of jit, custom_vjp, remat, scan and cond included)
and lists every convolution and dot with its operand and result dtypes. `hlo_contractions`
reads the same from the lowered StableHLO text, i.e. what XLA is actually handed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import jax

_PRIMITIVES = ("conv_general_dilated", "dot_general")


@dataclasses.dataclass(frozen=True)
class Contraction:
  """One convolution or dot: its primitive, operand dtypes, result dtype and shapes."""

  primitive: str
  operand_dtypes: tuple[str, ...]
  result_dtype: str
  operand_shapes: tuple[tuple[int, ...], ...]
  result_shape: tuple[int, ...]

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


def _walk(jaxpr, found: list[Contraction]) -> None:
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in _PRIMITIVES:
      found.append(
        Contraction(
          primitive=eqn.primitive.name,
          operand_dtypes=tuple(str(v.aval.dtype) for v in eqn.invars),
          result_dtype=str(eqn.outvars[0].aval.dtype),
          operand_shapes=tuple(tuple(v.aval.shape) for v in eqn.invars),
          result_shape=tuple(eqn.outvars[0].aval.shape),
        )
      )
    for param in eqn.params.values():
      for sub in _sub_jaxprs(param):
        _walk(sub, found)


def contractions(fn: Callable, *args, **kwargs) -> list[Contraction]:
  """Every conv and dot in the jaxpr of `fn(*args, **kwargs)`, in program order."""
  found: list[Contraction] = []
  _walk(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr, found)
  return found


_HLO_OP = re.compile(r"stablehlo\.(convolution|dot_general)\b.*?:\s*\((.*?)\)\s*->\s*(\S+)")
_ELEMENT = re.compile(r"x([a-z]+\d+)>")


def hlo_contractions(fn: Callable, *args, **kwargs) -> list[tuple[str, tuple[str, ...], str]]:
  """(op, operand element types, result element type) of every StableHLO convolution and
  dot_general in the lowered `jax.jit(fn)`, e.g. ("convolution", ("i8", "i8"), "i32")."""
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
