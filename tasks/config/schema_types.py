"""A small declarative schema: types that validate a value, fill defaults and
explain what they expected. Errors carry the dotted key path so the inventory
loader can name the file that set the key.

Why not jsonschema: its messages name JSON pointers and regexes, not what a
human should write; and we need defaults filled and origins tracked.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable


class SchemaError(Exception):
    def __init__(self, path: tuple, problem: str):
        super().__init__(problem)
        self.path = path
        self.problem = problem

    @property
    def key(self) -> str:
        return dotted(self.path)


def dotted(path: tuple) -> str:
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "(top level)"


def show(value: Any) -> str:
    if isinstance(value, str):
        v = value if len(value) <= 40 else value[:37] + "..."
        return repr(v)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    return f"{value!r} ({type(value).__name__})"


MISSING = object()


class Type:
    expected = "a value"

    def check(self, value, path: tuple):
        return value

    def default(self):
        return MISSING


class Any_(Type):
    expected = "any value"


class Str(Type):
    def __init__(self, pattern: str | None = None, expected: str | None = None, non_empty=True):
        self._source, self._pattern = pattern, None
        self.non_empty = non_empty
        self.expected = expected or ("a non-empty string" if non_empty else "a string")

    @property
    def pattern(self):
        # compiled at first use: the schema holds ~70 patterns (~5 ms to compile at every
        # start) and a run checks only the keys its inventory sets
        if self._pattern is None and self._source:
            self._pattern = re.compile(self._source)
        return self._pattern

    def check(self, value, path):
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise SchemaError(path, f"expected {self.expected}, got {show(value)}")
        value = str(value)
        if self.non_empty and not value.strip():
            raise SchemaError(path, f"expected {self.expected}, got an empty string")
        if self.pattern and not self.pattern.fullmatch(value):
            raise SchemaError(path, f"expected {self.expected}, got {show(value)}")
        return value


class Int(Type):
    def __init__(self, min: int | None = None, max: int | None = None):
        self.min, self.max = min, max
        if min is not None and max is not None:
            self.expected = f"an integer from {min} to {max}"
        elif min is not None:
            self.expected = f"an integer >= {min}"
        else:
            self.expected = "an integer"

    def check(self, value, path):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(path, f"expected {self.expected}, got {show(value)}")
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise SchemaError(path, f"expected {self.expected}, got {value}")
        return value


class Number(Type):
    def __init__(self, min: float | None = None):
        self.min = min
        self.expected = "a number" + (f" >= {min}" if min is not None else "")

    def check(self, value, path):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(path, f"expected {self.expected}, got {show(value)}")
        if self.min is not None and value < self.min:
            raise SchemaError(path, f"expected {self.expected}, got {value}")
        return value


class Bool(Type):
    expected = "true or false"

    def check(self, value, path):
        if not isinstance(value, bool):
            raise SchemaError(path, f"expected {self.expected}, got {show(value)}")
        return value


class Enum(Type):
    def __init__(self, *choices: str):
        self.choices = choices
        self.expected = "one of " + ", ".join(choices)

    def check(self, value, path):
        if value not in self.choices:
            raise SchemaError(path, f"expected {self.expected}, got {show(value)}")
        return value


_SIZE = re.compile(r"(?i)(\d+)\s*([KMGT]?)i?B?")
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(value) -> int:
    m = _SIZE.fullmatch(str(value).strip())
    if not m:
        raise ValueError(value)
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


class Size(Type):
    """A byte size such as 2G, 512M, 100M. Kept as written; parse_size() for bytes."""

    expected = "a size such as 512M or 2G"

    def check(self, value, path):
        try:
            parse_size(value)
        except (ValueError, TypeError):
            raise SchemaError(path, f"expected {self.expected}, got {show(value)}") from None
        return str(value).strip()


class Mode(Type):
    """A file mode written as a quoted octal string ('0600'). YAML reads 0600
    unquoted as the integer 384, which is a classic trap: accept it only when it
    reads back as a valid mode, and normalise to a 4-digit string."""

    expected = "an octal file mode in quotes, such as '0600'"

    def check(self, value, path):
        if isinstance(value, bool):
            raise SchemaError(path, f"expected {self.expected}, got {show(value)}")
        if isinstance(value, int):
            # YAML 1.1 parsed 0600 as octal already; 600 (no leading 0) is ambiguous.
            if 0 <= value <= 0o7777 and value not in (600, 644, 640, 700, 755, 750, 400, 444):
                return f"{value:04o}"
            raise SchemaError(path, f"expected {self.expected}, got {value} (write it quoted, e.g. '0{value}')")
        if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3,4}", value):
            return f"{int(value, 8):04o}"
        raise SchemaError(path, f"expected {self.expected}, got {show(value)}")


class RelPath(Type):
    """A normalised path relative to a base directory (app.shared_dirs/files:
    relative to /opt/APP/shared and to the release): no leading '/', no empty,
    '.' or '..' part, no trailing '/', no control characters. Root creates,
    links and removes these paths, so one that climbs out of the base would
    make it chown or `rm -rf` outside the app root."""

    expected = "a relative path such as public/uploads (no leading '/', no '.', '..' or empty parts)"

    def check(self, value, path):
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise SchemaError(path, f"expected {self.expected}, got {show(value)}")
        value = str(value)
        problem = rel_path_problem(value)
        if problem:
            raise SchemaError(path, f"expected {self.expected}, got {show(value)}: {problem}")
        return value


def rel_path_problem(value: str) -> str:
    """Why `value` is not a normalised relative path ('' when it is one)."""
    if not value.strip():
        return "it is empty"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "it holds a control character"
    if value.startswith("/"):
        return "it is absolute"
    parts = value.split("/")
    if ".." in parts:
        return "it climbs out with '..'"
    if "." in parts or "" in parts:
        return "it is not normalised ('.', '//' or a trailing '/')"
    return ""


class List(Type):
    def __init__(self, item: Type, min_items: int = 0, default=MISSING, single_ok=False):
        self.item = item
        self.min_items = min_items
        self._default = default
        self.single_ok = single_ok
        self.expected = f"a list of {item.expected.removeprefix('a ').removeprefix('an ')}"

    def check(self, value, path):
        if self.single_ok and isinstance(value, (str, int)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise SchemaError(path, f"expected {self.expected}, got {show(value)}")
        if len(value) < self.min_items:
            raise SchemaError(path, f"expected at least {self.min_items} item(s)")
        return [self.item.check(v, path + (i,)) for i, v in enumerate(value)]

    def default(self):
        return list(self._default) if self._default is not MISSING else MISSING


class Map(Type):
    """A mapping with free keys (names chosen by the user) and typed values."""

    def __init__(self, value: Type, key_pattern: str | None = None, key_expected: str = "", default=MISSING):
        self.value = value
        self._key_source, self._key_pattern = key_pattern, None
        self.key_expected = key_expected
        self._default = default
        self.expected = "a mapping"

    @property
    def key_pattern(self):
        if self._key_pattern is None and self._key_source:  # at first use, as Str.pattern
            self._key_pattern = re.compile(self._key_source)
        return self._key_pattern

    def check(self, value, path):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise SchemaError(path, f"expected a mapping, got {show(value)}")
        out = {}
        for k, v in value.items():
            ks = str(k)
            if self.key_pattern and not self.key_pattern.fullmatch(ks):
                raise SchemaError(path + (ks,), f"invalid name: expected {self.key_expected}")
            out[ks] = self.value.check(v, path + (ks,))
        return out

    def default(self):
        return dict(self._default) if self._default is not MISSING else MISSING


@dataclass
class F:
    """A field of a Struct."""

    type: Type
    required: bool = False
    default: Any = MISSING
    doc: str = ""


class Struct(Type):
    """A mapping with a fixed set of keys. Unknown keys are errors: a typo must
    never pass silently. The message suggests the closest known key."""

    def __init__(self, fields: dict[str, F], doc: str = "", fill_default: bool = True,
                 validator: Callable[[dict, tuple], None] | None = None):
        self.fields = fields
        self.doc = doc
        self.fill_default = fill_default
        self.validator = validator
        self.expected = "a mapping"

    def check(self, value, path):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise SchemaError(path, f"expected a mapping with keys {', '.join(self.fields)}, got {show(value)}")
        for k in value:
            if str(k) not in self.fields:
                raise SchemaError(path + (str(k),), unknown_key_message(str(k), self.fields))
        out = {}
        for name, f in self.fields.items():
            if name in value and value[name] is not None:
                out[name] = f.type.check(value[name], path + (name,))
            elif f.required:
                raise SchemaError(path + (name,), f"required key is missing: expected {f.type.expected}")
            else:
                d = f.default if f.default is not MISSING else f.type.default()
                if d is not MISSING:
                    out[name] = f.type.check(d, path + (name,)) if d is not None else None
                else:
                    out[name] = None
        if self.validator:
            self.validator(out, path)
        return out

    def default(self):
        # A section with required keys is never conjured from nothing.
        if not self.fill_default or any(f.required for f in self.fields.values()):
            return MISSING
        return {}


class OneOfShapes(Type):
    """Accepts one of several shapes, tried by a selector (not by trial and
    error, so the message is about the shape the user meant)."""

    def __init__(self, selector: Callable[[Any], Type | None], expected: str):
        self.selector = selector
        self.expected = expected

    def check(self, value, path):
        t = self.selector(value)
        if t is None:
            raise SchemaError(path, f"expected {self.expected}, got {show(value)}")
        return t.check(value, path)


def unknown_key_message(key: str, known) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown key{hint}; expected one of: {', '.join(known)}"
