"""The project's strict config engine: JSON objects parsed into dataclasses.

Every Caffe Python layer declares its ``param_str`` as a dataclass (``layers``) and reads it
with ``parse_config(ConfigClass, self.param_str, "LayerClassName")``; the net generator checks
every rendered ``param_str`` with the very same dataclass, so a bad key is found when the nets are
rendered, not when Caffe starts. The parser is strict, because a typo in a prototxt would
otherwise silently train with a default:

- the text must be a JSON object (empty means ``{}``);
- unknown keys, missing required keys and values of the wrong type are refused;
- ``int`` fields take JSON integers (a float with an integral value such as ``4e4`` is accepted),
  never booleans; ``float`` fields take any finite JSON number; ``bool`` only ``true``/``false``;
  ``X | None`` also takes ``null``; ``list[X]``/``tuple[X, ...]`` take JSON arrays; a nested
  dataclass takes a JSON object (parsed by the same rules); ``Literal[...]`` one of its values;
- range checks live in each dataclass's ``__post_init__`` (raise ``ValueError`` naming the key).

Every error is a ``ConfigError`` (a ``ValueError``) whose message starts with where the config
comes from (the layer name, or the prototxt and layer) and names the key, e.g.
``AMSoftmaxLossLayer: bad param_str: 'scale' must be > 0, got -1.0``. The variant files of the
generator raise the same ``ConfigError``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any, Literal, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A layer's ``param_str`` is malformed; the message names the layer and the key."""


def parse_config(cls: type[T], param_str: str | None, layer_name: str) -> T:
    """Parse ``param_str`` (JSON object) into the dataclass ``cls``; see the module docstring."""
    text = (param_str or "").strip() or "{}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{layer_name}: param_str is not valid JSON ({exc.msg} at line "
                          f"{exc.lineno} column {exc.colno}): {text!r}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{layer_name}: param_str must be a JSON object, got {text!r}")
    return _build(cls, data, layer_name, "")


def _build(cls: type[T], data: dict, layer: str, prefix: str) -> T:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"parse_config needs a dataclass, got {cls!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        names = ", ".join(repr(prefix + k) for k in unknown)
        known = ", ".join(repr(prefix + k) for k in fields)
        raise ConfigError(f"{layer}: unknown param_str key{'s' if len(unknown) > 1 else ''} "
                          f"{names} (known keys: {known})")
    missing = [name for name, f in fields.items() if name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{layer}: param_str is missing the required key"
                          f"{'s' if len(missing) > 1 else ''} "
                          + ", ".join(repr(prefix + k) for k in missing))
    values = {name: _convert(value, hints[name], layer, prefix + name)
              for name, value in data.items()}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except ValueError as exc:
        where = f" (in {prefix.rstrip('.')!r})" if prefix else ""
        raise ConfigError(f"{layer}: bad param_str{where}: {exc}") from None


def _describe(tp: Any) -> str:
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return "an array"
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "an object"
    return str(tp)


def _convert(value: Any, tp: Any, layer: str, key: str) -> Any:
    def bad() -> ConfigError:
        return ConfigError(f"{layer}: param_str key {key!r} must be {_describe(tp)}, "
                           f"got {json.dumps(value)}")

    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad()
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, layer, key)
            except ConfigError:
                # An object/array of the right kind: its own (more precise) error stands.
                if ((dataclasses.is_dataclass(arg) and isinstance(value, dict))
                        or (typing.get_origin(arg) in (list, tuple) and isinstance(value, list))):
                    raise
        raise bad()
    if tp is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if tp is int:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise bad()
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        if not math.isfinite(value):
            raise bad()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad()
        return value
    if origin is Literal:
        if not any(value == a and type(value) is type(a) for a in typing.get_args(tp)):
            raise bad()
        return value
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise bad()
        (item,) = typing.get_args(tp) or (Any,)
        return [_convert(v, item, layer, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list):
            raise bad()
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            items = [args[0]] * len(value)
        else:
            if len(args) != len(value):
                raise ConfigError(f"{layer}: param_str key {key!r} must be an array of "
                                  f"{len(args)} values, got {json.dumps(value)}")
            items = list(args)
        return tuple(_convert(v, t, layer, f"{key}[{i}]") for i, (v, t) in
                     enumerate(zip(value, items)))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad()
        return _build(tp, value, layer, key + ".")
    raise TypeError(f"parse_config: unsupported annotation {tp!r} for key {key!r}")
