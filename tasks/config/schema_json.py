"""The inventory format as a JSON Schema (draft 2020-12), for editors: YAML language
servers validate and complete inventories against it (`fab config --schema > x.json`,
then `# yaml-language-server: $schema=x.json` at the top of an inventory).

Generated from tasks/config/schema.py's types, so it cannot drift from what fabship
checks. It is the shape of one layer: required keys are not required here (an
include may set them), and cross-key rules (validators) and the checks after
{host}/{address} expansion stay fabship's own, so an editor may accept a file that
`fab config` still refuses (never the other way round for the keys it knows).
"""
from __future__ import annotations

import json

from .schema_types import (
    MISSING, Any_, Bool, Enum, Int, List, Map, Mode, Number, OneOfShapes, RelPath, Size, Str, Struct, Type,
)

DIALECT = "https://json-schema.org/draft/2020-12/schema"

# sample values a OneOfShapes selector is asked about: each shape it knows answers one of them
_PROBES = ("x", 1, 1.5, True, [], {}, {"k": "v"}, ["x"])


def _pattern(source: str) -> str:
    return f"^(?:{source})$"  # fabship matches whole values; JSON Schema searches


def to_json_schema(t: Type, _seen: frozenset = frozenset()) -> dict:
    if id(t) in _seen:  # a recursive shape: leave it open
        return {}
    seen = _seen | {id(t)}
    desc = {"description": t.expected} if getattr(t, "expected", "") else {}
    if isinstance(t, Struct):
        props = {}
        for name, f in t.fields.items():
            p = to_json_schema(f.type, seen)
            if f.doc:
                p["description"] = f.doc
            if f.default is not MISSING and _jsonable(f.default):
                p["default"] = f.default
            if not f.required:
                p = _nullable(p)  # `key:` with no value (null) means unset, as in fabship's check
            else:  # not "required": a layer may leave the key to an include; the merged check is fabship's
                p.setdefault("description", "required (here or in an included inventory)")
            props[name] = p
        out = {"type": "object", "properties": props, "additionalProperties": False}
        if t.doc:
            out["description"] = t.doc
        return out
    if isinstance(t, Map):
        out = {"type": "object", "additionalProperties": to_json_schema(t.value, seen)}
        src = getattr(t, "_key_source", None)
        if src:
            out["propertyNames"] = {"pattern": _pattern(src)}
        return out
    if isinstance(t, List):
        out = {"type": "array", "items": to_json_schema(t.item, seen)}
        if t.min_items:
            out["minItems"] = t.min_items
        if getattr(t, "single_ok", False):  # one value may stand for a list of one
            return {"anyOf": [out, to_json_schema(t.item, seen)], **desc}
        return out
    if isinstance(t, Enum):
        return {"enum": list(t.choices), **desc}
    if isinstance(t, Bool):
        return {"type": "boolean"}
    if isinstance(t, Int):
        out = {"type": "integer"}
        if t.min is not None:
            out["minimum"] = t.min
        if t.max is not None:
            out["maximum"] = t.max
        return out
    if isinstance(t, Number):
        return {"type": "number", **({"minimum": t.min} if t.min is not None else {})}
    if isinstance(t, Mode):
        return {"anyOf": [{"type": "string", "pattern": "^0?[0-7]{3,4}$"}, {"type": "integer"}], **desc}
    if isinstance(t, Size):
        return {"type": ["string", "integer"], "pattern": r"^\d+\s*[KkMmGgTt]?[Ii]?[Bb]?$", **desc}
    if isinstance(t, RelPath):
        return {"type": "string", "pattern": r"^(?!/)(?!.*(^|/)\.\.?(/|$))(?!.*//)[^\x00-\x1f\x7f]+(?<!/)$", **desc}
    if isinstance(t, Str):
        out = {"type": "string", **desc}
        src = getattr(t, "_source", None)
        if src:
            out["pattern"] = _pattern(src)
        elif t.non_empty:
            out["minLength"] = 1
        return out
    if isinstance(t, OneOfShapes):
        shapes, seen_ids = [], set()
        for probe in _PROBES:
            try:
                s = t.selector(probe)
            except Exception:  # a selector that looks inside its value
                s = None
            if s is not None and id(s) not in seen_ids:
                seen_ids.add(id(s))
                shapes.append(to_json_schema(s, seen))
        return {"anyOf": shapes, **desc} if shapes else desc
    if isinstance(t, Any_):
        return {}
    return desc  # a type this export does not know: open, described


def _nullable(p: dict) -> dict:
    t = p.get("type")
    if isinstance(t, str):
        return {**p, "type": [t, "null"]}
    if isinstance(t, list):
        return {**p, "type": [*t, "null"]} if "null" not in t else p
    if not p:
        return p
    return {"anyOf": [p, {"type": "null"}]}


def _jsonable(v) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def inventory_schema() -> dict:
    from .schema import INVENTORY

    out = to_json_schema(INVENTORY)
    # `include:` is read before validation (tasks/config/inventory.py), so INVENTORY has no field for it
    out["properties"] = {"include": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                                     "description": "inventories merged below this one (names or paths)"},
                         **out["properties"]}
    return {"$schema": DIALECT, "$id": "https://fabship.invalid/schema/inventory.json",
            "title": "fabship inventory", **out}
