"""Config sections as frozen dataclasses: each field is a config key, its annotation the type the key takes.

`check(cls, section, where)` lists every unknown key, missing key and value of the wrong type, named by its
config path, and the class's own rules; `read(cls, section)` builds the settings (lists become tuples, ints given
for floats become floats). A settings class adds its own range and cross-field rules as `problems(self) ->
list[str]`. The validator and the runner read every section through these two functions, so the keys are declared
once, by the fields.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union


def _describe(tp) -> str:
  origin, args = typing.get_origin(tp), typing.get_args(tp)
  if origin in (Union, types.UnionType):
    return " or ".join("None" if a is type(None) else _describe(a) for a in args)
  if origin is tuple:
    return f"a list of {_describe(args[0])}"
  return {int: "an int", float: "a number", bool: "true or false", str: "a string"}.get(tp, getattr(tp, "__name__",
                                                                                                     str(tp)))


def _convert(value, tp):
  """value as type tp, or raises TypeError. Lists become tuples; an int is a float, a bool is not an int."""
  origin, args = typing.get_origin(tp), typing.get_args(tp)
  if tp is Any:
    return value
  if origin in (Union, types.UnionType):
    if value is None and type(None) in args:
      return None
    for a in (a for a in args if a is not type(None)):
      try:
        return _convert(value, a)
      except TypeError:
        pass
    raise TypeError
  if origin is tuple:
    if not isinstance(value, (list, tuple)):
      raise TypeError
    return tuple(_convert(v, args[0]) for v in value)
  if tp is bool:
    if not isinstance(value, bool):
      raise TypeError
    return value
  if tp is int:
    if isinstance(value, bool) or not isinstance(value, int):
      raise TypeError
    return int(value)
  if tp is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise TypeError
    return float(value)
  if tp is str:
    if not isinstance(value, str):
      raise TypeError
    return value
  raise TypeError


def keys(cls) -> set:
  """The config keys of a settings class: its fields."""
  return {f.name for f in dataclasses.fields(cls)}


def _given(section) -> dict:
  return dict(section) if section is not None else {}


def check(cls, section, where: str) -> tuple:
  """(the settings, or None where a key or a type is wrong; every problem: unknown keys, missing keys of fields
  without a default and values of the wrong type, each named WHERE.KEY, else the class's own problems())."""
  given, hints, out = _given(section), typing.get_type_hints(cls), []
  for k in sorted(set(given) - keys(cls)):
    out.append(f"unknown key {where}.{k} (known: {sorted(keys(cls))})")
  for f in dataclasses.fields(cls):
    if f.name not in given:
      if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        out.append(f"missing key {where}.{f.name} ({_describe(hints[f.name])})")
      continue
    try:
      _convert(given[f.name], hints[f.name])
    except TypeError:
      out.append(f"{where}.{f.name}={given[f.name]!r} must be {_describe(hints[f.name])}")
  if out:
    return None, out
  settings = read(cls, section)
  return settings, list(settings.problems()) if hasattr(settings, "problems") else []


def read(cls, section):
  """The settings in `section` (check them first: a wrong key or type raises here)."""
  given, hints = _given(section), typing.get_type_hints(cls)
  return cls(**{k: _convert(v, hints[k]) for k, v in given.items() if k in keys(cls)})

