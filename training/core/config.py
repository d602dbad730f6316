"""Training configuration: dataclass trees loaded from YAML/TOML, overridden from the CLI.

Every trainer declares its settings as nested dataclasses with defaults. ``load_config``
merges a file (optional) and ``key.sub=value`` overrides into them, converting each value to
the field's declared type, and rejects unknown keys by naming the valid ones, so a typo in a
config never silently trains with a default.

The coercion is our own rather than a typed-config library's (pydantic, dacite): YAML's
readings need overrides kept as text for string fields (``name=no`` is "no", not false),
and the errors must name the dotted key, suggest the closest valid one, and let the
trainers' own ``__post_init__`` messages through unchanged (pydantic wraps them in its
ValidationError).
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar

from ...nodes.core import json_digest
from ...nodes.errors import ScienceT2IError

T = TypeVar("T")


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ScienceT2IError(f"config file not found: {path}; pass an existing .yaml/.toml "
                              "file to --config (or leave --config out to use the defaults).")
    from .readers import read_text
    text = read_text(path, "config file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml", ".json"):
            import yaml
            data = yaml.safe_load(text)
        else:
            raise ScienceT2IError(f"config file {path} has an unknown extension; use .yaml, "
                                  ".yml, .toml or .json.")
    except ScienceT2IError:
        raise
    except RecursionError:
        raise ScienceT2IError(f"config file {path} is nested too deeply to read (lists or "
                              "mappings inside each other beyond what the parser can follow); "
                              "a config is a few levels of sections: fix or rewrite it.") from None
    except Exception as exc:
        raise ScienceT2IError(f"cannot parse config file {path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ScienceT2IError(f"config file {path} must hold a mapping of settings at the top "
                              f"level, not a {type(data).__name__}.")
    return data


def _unknown_key(key: str, where: str, valid: list[str]) -> ScienceT2IError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ScienceT2IError(f"unknown config key {where + key!r}.{hint} Valid keys here: "
                           f"{', '.join(valid)}.")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


class _Override:
    """A command-line value: its YAML reading for typed fields, its raw text for strings
    (so ``name=no`` stays the string "no" instead of YAML's false)."""

    def __init__(self, raw: str, parsed: Any):
        self.raw, self.parsed = raw.strip(), parsed


def _wants_text(tp: Any) -> bool:
    if tp is str:
        return True
    if typing.get_origin(tp) is typing.Literal:
        return all(isinstance(a, str) for a in typing.get_args(tp))
    return False


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert a parsed YAML/TOML value (or an override string) to the declared type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(value, _Override):
        if origin in (typing.Union, types.UnionType):
            if value.parsed is None and type(None) in args:
                return None
            text_arm = next((a for a in args if _wants_text(a)), None)
            if text_arm is not None:
                return _coerce(value.raw, text_arm, name)
        value = value.raw if _wants_text(tp) else value.parsed
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, name)
    if origin is typing.Literal:
        if value in args:
            return value
        raise ScienceT2IError(f"config key {name!r} must be one of {', '.join(map(repr, args))}; "
                              f"got {value!r}.")
    if origin in (list, tuple):
        return _coerce_sequence(value, origin, args, name)
    if origin is dict:
        if not isinstance(value, dict):
            raise ScienceT2IError(f"config key {name!r} must be a mapping; got {value!r}.")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ScienceT2IError(f"config section {name!r} must be a mapping; got {value!r}.")
        return _build(tp, value, prefix=f"{name}.")
    if tp in _SCALARS:
        return _SCALARS[tp](value, name)
    raise ScienceT2IError(f"config key {name!r} has an unsupported type {_type_name(tp)}.")


def _coerce_union(value: Any, args: tuple, name: str) -> Any:
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
        if type(None) in args:
            return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, name)
        except ScienceT2IError as exc:
            errors.append(str(exc))
    raise ScienceT2IError(errors[0] if errors else f"{name}: cannot be {value!r}")


def _coerce_sequence(value: Any, origin: Any, args: tuple, name: str) -> list | tuple:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()] if value.strip() else []
    if not isinstance(value, (list, tuple)):
        raise ScienceT2IError(f"config key {name!r} must be a list; got {value!r}.")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise ScienceT2IError(f"config key {name!r} needs {len(args)} values; got "
                                  f"{len(value)} ({value!r}).")
        return tuple(_coerce(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    inner = args[0] if args else Any
    items = [_coerce(v, inner, f"{name}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _to_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no",
                                                    "off", "0"):
        return value.lower() in ("true", "yes", "on", "1")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ScienceT2IError(f"config key {name!r} must be true or false; got {value!r}.")


def _to_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise ScienceT2IError(f"config key {name!r} must be an integer; got {value!r}.")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise ScienceT2IError(f"config key {name!r} must be an integer; got {value!r}.")


def _to_float(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise ScienceT2IError(f"config key {name!r} must be a number; got {value!r}.")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "2e-5" as a string
        except ValueError:
            pass
    raise ScienceT2IError(f"config key {name!r} must be a number; got {value!r}.")


def _to_str(value: Any, name: str) -> str:
    if isinstance(value, (dict, list)):
        raise ScienceT2IError(f"config key {name!r} must be a string; got {value!r}.")
    return str(value)


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str,
            Path: lambda value, name: Path(str(value)).expanduser()}


def _build(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key(str(key), prefix, sorted(fields))
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    try:
        return cls(**kwargs)
    except ScienceT2IError:
        raise
    except (TypeError, ValueError) as exc:
        raise ScienceT2IError(f"invalid config {prefix.rstrip('.') or cls.__name__}: {exc}") from exc


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ScienceT2IError(f"override {text!r} is not of the form key.sub=value "
                              "(e.g. optim.lr=1e-4).")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ScienceT2IError(f"override {text!r} has an empty key; write key.sub=value.")
    import yaml
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # a plain string that happens to contain YAML syntax
    except RecursionError:
        raise ScienceT2IError(f"override {key!r} has a value nested too deeply to read; give "
                              "a plain value or a short list.") from None
    return key.split("."), _Override(raw, value)


def _set_path(tree: dict[str, Any], cls: type, path: list[str], value: Any) -> None:
    """Put an override into the nested dict, checking each key against the dataclass tree."""
    node, node_cls = tree, cls
    for i, part in enumerate(path):
        hints = typing.get_type_hints(node_cls)
        names = sorted(f.name for f in dataclasses.fields(node_cls) if f.init)
        if part not in names:
            raise _unknown_key(part, ".".join(path[:i]) + ("." if i else ""), names)
        if i == len(path) - 1:
            node[part] = value
            return
        sub = hints[part]
        if not dataclasses.is_dataclass(sub):
            raise ScienceT2IError(f"config key {'.'.join(path[:i + 1])!r} is a value, not a "
                                  f"section; it has no sub-key {path[i + 1]!r}.")
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node, node_cls = child, sub


def _dotted_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k, v in tree.items():
        keys.append(prefix + str(k))
        if isinstance(v, dict):
            keys += _dotted_keys(v, f"{prefix}{k}.")
    return keys


def _check_renamed(cls: type, keys: list[str]) -> None:
    """Point a key of an earlier version at its new name (``cls.RENAMED_KEYS``)."""
    renamed = getattr(cls, "RENAMED_KEYS", {})
    for key in keys:
        if key in renamed:
            raise ScienceT2IError(f"config key {key!r} is now {renamed[key]!r}; rename it in "
                                  "the config file or override.")


def load_config(cls: type[T], path: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Build ``cls`` from its defaults, then a YAML/TOML file, then ``key.sub=value`` overrides."""
    data: dict[str, Any] = _read_file(Path(path)) if path else {}
    _check_renamed(cls, _dotted_keys(data))
    for text in overrides:
        keys, value = _parse_override(text)
        _check_renamed(cls, [".".join(keys)])
        _set_path(data, cls, keys, value)
    fill = getattr(cls, "fill_defaults", None)   # e.g. a memory tier's settings
    if fill is not None:
        fill(data)
    return _build(cls, data)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain JSON-able dict of a config tree (paths as strings, tuples as lists)."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return v
    return plain(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomic), so a run records what it trained with."""
    import yaml

    from ...nodes.core import write_bytes_atomic
    write_bytes_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False).encode("utf-8"))


# ----------------------------------------------------------------------------- settings digests

def _pop(tree: dict[str, Any], key: str) -> Any:
    """Remove the dotted ``key`` from a nested dict; returns what was there (None if absent)."""
    *sections, name = key.split(".")
    for section in sections:
        tree = tree.get(section, {})
    return tree.pop(name, None)


def resume_digest(cfg: Any, may_change: Iterable[str],
                  added: dict[str, Any] | None = None) -> str:
    """The one settings digest: the config without the keys a resume may change, nor the keys
    of ``added`` (key -> default) that later versions added, while they hold their default
    (so a run started before a key existed resumes)."""
    tree = config_to_dict(cfg)   # a fresh tree: popping from it leaves cfg alone
    for key in may_change:
        _pop(tree, key)
    for key, default in (added or {}).items():
        value = _pop(tree, key)
        if value != default:
            put_dotted(tree, key, value)
    return json_digest(tree, 16)


def put_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted ``key`` of a nested dict, making the sections on the way."""
    *sections, name = key.split(".")
    for section in sections:
        tree = tree.setdefault(section, {})
    tree[name] = value


def has_dotted(tree: dict[str, Any], key: str) -> bool:
    """Whether a nested dict holds the dotted ``key``."""
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def flat_config(cfg: Any) -> dict[str, Any]:
    """The config as ``section/key: scalar`` for trackers (lists written as text)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)
        elif value is None or isinstance(value, (list, tuple)):
            out[prefix] = str(value)
        else:
            out[prefix] = value
    walk("", config_to_dict(cfg))
    return out


def describe_keys(cfg: Any, keys: Iterable[str]) -> str:
    """``train.max_steps, checkpoint.* and log.*``: the keys, sections marked with ``.*``."""
    tree = config_to_dict(cfg)
    names = [f"{k}.*" if isinstance(_pop(tree, k), dict) else k for k in keys]
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else "".join(names)
