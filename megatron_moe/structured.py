"""The one reader of structured files (JSON, JSON lines, YAML): everything we parse goes through here.

    obj = read_json(path, expect=dict, error=CheckpointError)      # config.json, indexes, trainer state, ...
    obj = parse_json(line, where="data.jsonl:12", expect=dict)     # one JSON-lines record
    obj = read_yaml(path, error=ConfigError)                       # training configs
    val = parse_yaml_scalar(text, where="override a.b")            # key=value overrides

A file that parses is not yet a file we can use. Each reader refuses, with one line naming the file:
  - more than `max_bytes` (checked before reading), bytes that are not UTF-8 (with their offset);
  - syntax errors (with line and column);
  - nesting deeper than MAX_DEPTH (a 100 000-deep `[[[[...` would otherwise be a RecursionError);
  - YAML aliases whose expansion exceeds MAX_NODES nodes (the "billion laughs" bomb: tiny on disk, and
    exponential once anything walks it), and YAML tags other than the safe loader's;
  - non-finite numbers (NaN, Infinity, 1e400, YAML .nan/.inf) and integers too long to convert;
  - a top-level value of the wrong type (`expect`).
Range checks of individual fields belong to whoever gives them meaning (the config dataclasses' validate()).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional, Type

import yaml

from .errors import UserError

MAX_DEPTH = 64            # deepest nesting of lists/objects any of our files needs is < 10
MAX_NODES = 1_000_000     # values in a document once YAML aliases are expanded
MAX_BYTES = 64 << 20      # config.json, index files, trainer state, YAML configs: all far smaller


class StructuredFileError(UserError):
    """A structured file (JSON/YAML) that cannot be used as what it claims to be."""


def _type_name(kind) -> str:
    if isinstance(kind, tuple):
        return " or ".join(_type_name(k) for k in kind)
    return {dict: "an object (mapping)", list: "a list", str: "a string", int: "an integer",
            float: "a number"}.get(kind, getattr(kind, "__name__", str(kind)))


def check_value(obj: Any, where: str, error: Type[Exception] = StructuredFileError, max_nodes: int = MAX_NODES) -> Any:
    """Depth, size and finiteness of a parsed value (iterative: a deep value cannot overflow the stack here)."""
    stack = [(obj, 1)]
    seen_nodes = 0
    while stack:
        value, depth = stack.pop()
        seen_nodes += 1
        if seen_nodes > max_nodes:
            raise error(f"{where}: more than {max_nodes} values; refusing to process it")
        if isinstance(value, float) and not math.isfinite(value):
            raise error(f"{where}: non-finite number {value!r}")
        if isinstance(value, (dict, list)):
            if depth > MAX_DEPTH:
                raise error(f"{where}: nested more than {MAX_DEPTH} levels deep")
            children = value.values() if isinstance(value, dict) else value
            stack.extend((c, depth + 1) for c in children)
            if isinstance(value, dict):
                bad = next((k for k in value if not isinstance(k, (str, int, float, bool)) and k is not None), None)
                if bad is not None:
                    raise error(f"{where}: unsupported key type {type(bad).__name__}")
    return obj


def _expect(obj: Any, expect, where: str, error) -> Any:
    if expect is not None and not (isinstance(obj, expect) and not (isinstance(obj, bool) and expect in (int, float))):
        raise error(f"{where}: expected {_type_name(expect)} at top level, got {type(obj).__name__}")
    return obj


def read_text(path: str | Path, error: Type[Exception] = StructuredFileError, max_bytes: int = MAX_BYTES,
              what: str = "file") -> str:
    """A UTF-8 text file of bounded size, or one line saying why not."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise error(f"{p}: {what} missing") from None
    if not p.is_file():
        raise error(f"{p}: not a regular file")
    if size > max_bytes:
        raise error(f"{p}: {size} bytes, more than the {max_bytes} a {what} of this kind may have")
    data = p.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{p}: not UTF-8 text (byte {err.start}: {data[err.start:err.start + 1]!r})") from None


def _refuse_constant(name: str):
    raise ValueError(f"non-finite number {name}")


def parse_json(text: str, where: str, expect=dict, error: Type[Exception] = StructuredFileError,
               max_nodes: int = MAX_NODES) -> Any:
    """One JSON document from text (a file's content or one JSON-lines record)."""
    try:
        obj = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as err:
        raise error(f"{where}: invalid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except RecursionError:
        raise error(f"{where}: nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as err:  # parse_constant, or an integer longer than Python converts
        raise error(f"{where}: invalid JSON ({str(err).splitlines()[0]})") from None
    check_value(obj, where, error, max_nodes)
    return _expect(obj, expect, where, error)


def read_json(path: str | Path, expect=dict, error: Type[Exception] = StructuredFileError,
              max_bytes: int = MAX_BYTES, what: str = "JSON file", max_nodes: int = MAX_NODES) -> Any:
    """A JSON file, checked (see the module docstring)."""
    return parse_json(read_text(path, error, max_bytes, what), str(path), expect, error, max_nodes)


class _Loader(yaml.SafeLoader):
    """SafeLoader (no Python tags) that measures the document before constructing it."""


def _expanded_size(node, limit: int) -> int:
    """Number of values `node` stands for with every alias expanded; stops counting past `limit`.
    Iterative with memoisation on shared nodes, so a bomb costs time linear in its size on disk."""
    sizes: dict[int, int] = {}
    order, stack = [], [node]
    while stack:  # post-order over the node graph (aliases are shared node objects)
        n = stack.pop()
        if id(n) in sizes:
            continue
        sizes[id(n)] = -1
        order.append(n)
        if isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)
        elif isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                stack.extend((k, v))
    for n in reversed(order):
        if isinstance(n, yaml.SequenceNode):
            total = 1 + sum(sizes[id(c)] for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            total = 1 + sum(sizes[id(k)] + sizes[id(v)] for k, v in n.value)
        else:
            total = 1
        sizes[id(n)] = min(total, limit + 1)
    return sizes[id(node)]


def _yaml_depth(node) -> int:
    depth, stack = 0, [(node, 1)]
    seen = set()
    while stack:
        n, d = stack.pop()
        if (id(n), d) in seen:
            continue
        seen.add((id(n), d))
        depth = max(depth, d)
        if d > MAX_DEPTH:
            return d
        if isinstance(n, yaml.SequenceNode):
            stack.extend((c, d + 1) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            stack.extend((v, d + 1) for _, v in n.value)
    return depth


def parse_yaml(text: str, where: str, expect=dict, error: Type[Exception] = StructuredFileError,
               allow_empty: bool = True) -> Any:
    """One YAML document, safely: no tags beyond the safe loader's, bounded depth and alias expansion."""
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise error(f"{where}: nested more than {MAX_DEPTH} levels deep") from None
        except yaml.YAMLError as err:
            raise error(f"{where}: not valid YAML: {str(err).splitlines()[0]}") from None
        if node is None:
            if allow_empty:
                return {} if expect is dict else None
            raise error(f"{where}: empty YAML document")
        if _yaml_depth(node) > MAX_DEPTH:
            raise error(f"{where}: nested more than {MAX_DEPTH} levels deep")
        if _expanded_size(node, MAX_NODES) > MAX_NODES:
            raise error(f"{where}: YAML aliases expand to more than {MAX_NODES} values; refusing it")
        try:
            obj = loader.construct_document(node)
        except yaml.YAMLError as err:
            raise error(f"{where}: not valid YAML: {str(err).splitlines()[0]}") from None
        except (ValueError, OverflowError) as err:
            raise error(f"{where}: invalid value ({str(err).splitlines()[0]})") from None
    finally:
        loader.dispose()
    check_value(obj, where, error)
    return _expect(obj, expect, where, error)


def read_yaml(path: str | Path, expect=dict, error: Type[Exception] = StructuredFileError,
              max_bytes: int = MAX_BYTES, what: str = "config file") -> Any:
    """A YAML file, checked (see the module docstring)."""
    return parse_yaml(read_text(path, error, max_bytes, what), str(path), expect, error)


def parse_yaml_scalar(text: str, where: str, error: Type[Exception] = StructuredFileError) -> Optional[Any]:
    """The value of a `key=value` override, parsed as YAML (so `[a, b]` and `{k: v}` work too)."""
    return parse_yaml(text, where, expect=None, error=error, allow_empty=True) if text else None


_MISSING = object()


def field_int(obj: dict, key: str, where: str, error: Type[Exception] = StructuredFileError, default=_MISSING) -> int:
    """obj[key] as exactly an integer (int() would pass 3.7, "12" or true silently); `default` when absent/null."""
    value = obj.get(key)
    if value is None:
        if default is _MISSING:
            raise error(f"{where}: missing key {key!r}")
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{where}: {key}={value!r} must be an integer")
    return value


def field_number(obj: dict, key: str, where: str, error: Type[Exception] = StructuredFileError,
                 default=_MISSING) -> float:
    """obj[key] as a finite number (int or float, not a string or bool); `default` when absent/null."""
    value = obj.get(key)
    if value is None:
        if default is _MISSING:
            raise error(f"{where}: missing key {key!r}")
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise error(f"{where}: {key}={value!r} must be a finite number")
    return float(value)
