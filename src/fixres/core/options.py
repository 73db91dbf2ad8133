"""Typed configuration: frozen dataclasses, their CLI flags, and YAML in and out.

Every setting is declared once, as a dataclass field with a help string. The CLI flags
are generated from the fields (defaults ``None`` = "not given", so the dataclass default
stays the only default), a YAML file given with ``--config`` is validated against the same
fields (unknown key or wrong type: one clear error), and the resolved configuration is
written into every run directory. Library code receives the dataclass, never argv.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import FixresError


def option(default: Any = dataclasses.MISSING, help: str = "", *, parse: Any = None, **cli: Any) -> Any:
    """A dataclass field with a help string (and optional extra argparse keywords).

    ``parse``: the field's own reader of what a user writes (a flag's strings, a YAML value, a
    Python value), returning the typed value or raising FixresError; it replaces the type check
    (e.g. test resolutions given as ``32:128:16`` ranges). :func:`parse_fields` applies it to a
    constructed object, so the typed value is the same whichever way the setting arrived."""
    if isinstance(default, (list, dict)):
        raise TypeError("use immutable (tuple) defaults")
    return dataclasses.field(default=default, metadata={"help": help, "cli": cli, "parse": parse})


def parse_fields(obj: Any) -> None:
    """Apply every field's ``parse`` hook to a (frozen) dataclass instance, in its ``__post_init__``."""
    for f in dataclasses.fields(obj):
        hook, value = f.metadata.get("parse"), getattr(obj, f.name)
        if hook is not None and value is not None:
            object.__setattr__(obj, f.name, hook(value))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def coerce(value: Any, tp: Any, name: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (converting int->float, list->tuple)."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise FixresError(f"{name}: a value is required")
    origin = typing.get_origin(inner)
    if origin is Literal:
        choices = typing.get_args(inner)
        if value not in choices:
            raise FixresError(f"{name}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin in (tuple, list):
        args = typing.get_args(inner)
        if not isinstance(value, (list, tuple)):
            value = [value] if origin is list else value
            if not isinstance(value, list):
                raise FixresError(f"{name}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise FixresError(f"{name}: expected {len(args)} values, got {len(value)}")
            return tuple(coerce(v, a, name) for v, a in zip(value, args))
        return tuple(coerce(v, args[0], name) for v in value)
    if inner is bool:
        if not isinstance(value, bool):
            raise FixresError(f"{name}: expected true or false, got {value!r}")
        return value
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise FixresError(f"{name}: expected an integer, got {value!r}")
        return value
    if inner is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FixresError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if inner is str:
        if not isinstance(value, (str, Path)):
            raise FixresError(f"{name}: expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported annotation {inner!r} for {name}")


def ordered_fields(cls_or_obj: Any) -> list[dataclasses.Field]:
    """The fields in the order a reader wants them: the class's own (re)declarations first, in
    their order, then the ones it inherits (a command's settings before the shared compute ones)."""
    cls = cls_or_obj if isinstance(cls_or_obj, type) else type(cls_or_obj)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    own = [n for n in vars(cls).get("__annotations__", {}) if n in fields]
    return [fields[n] for n in own] + [f for n, f in fields.items() if n not in own]


def add_arguments(parser: argparse.ArgumentParser, cls: type, exclude: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per field of ``cls`` (default None: not given)."""
    hints = typing.get_type_hints(cls, include_extras=False)
    for f in ordered_fields(cls):
        if f.name in exclude:
            continue
        tp, _ = _unwrap_optional(hints[f.name])
        kw: dict[str, Any] = dict(default=None, help=f.metadata.get("help", "").replace("%", "%%"))
        if f.default is not dataclasses.MISSING and f.default is not None:
            kw["help"] += f" (default: {_show(f.default)})"
        origin = typing.get_origin(tp)
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin is Literal:
            kw["choices"] = typing.get_args(tp)
        elif origin in (tuple, list):
            args = typing.get_args(tp)
            kw["type"] = args[0]
            kw["nargs"] = len(args) if origin is tuple and args[-1] is not Ellipsis else "+"
        else:
            kw["type"] = tp
        kw.update(f.metadata.get("cli", {}))
        parser.add_argument(_flag(f.name), dest=f.name, **kw)


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def check_keys(cls: type, values: dict[str, Any], where: str) -> None:
    """Refuse settings that ``cls`` does not have, naming the first one."""
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            alt = key.replace("-", "_")
            hint = f" (did you mean {alt!r}?)" if alt in names else ""
            raise FixresError(f"{where}: unknown setting {key!r}{hint}")


def build(cls: type, *sources: dict[str, Any], where: str = "settings"):
    """Merge ``sources`` (later wins, ``None`` values ignored), check types, construct ``cls``."""
    hints = typing.get_type_hints(cls)
    hooks = {f.name: f.metadata.get("parse") for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for source in sources:
        check_keys(cls, source, where)
        for key, value in source.items():
            if value is not None:
                values[key] = (hooks[key](value) if hooks[key] is not None
                               else coerce(value, hints[key], f"{where}: {key}" if where != "settings" else key))
    missing = [f.name for f in dataclasses.fields(cls)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in values]
    if missing:
        raise FixresError(f"missing required setting{'s' if len(missing) > 1 else ''}: "
                          + ", ".join(_flag(m) for m in missing))
    return cls(**values)


def from_namespace(ns: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The values of ``ns`` that belong to ``cls`` and were given."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(ns).items() if k in names and v is not None}


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FixresError(f"config file {path} does not exist") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise FixresError(f"{path}: invalid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FixresError(f"{path}: expected a mapping of setting: value at the top level")
    return data


def to_dict(cfg: Any) -> dict[str, Any]:
    out = {}
    for f in ordered_fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
