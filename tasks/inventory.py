"""Inventories: load YAML layers, merge them in a written order, validate
against the schema, and resolve hosts (static or discovered).

Merge order, lowest first (README "Inventory layers"):
  1. built-in defaults (the schema's defaults)
  2. inventories named in `include:` (in list order, each with its own includes)
  3. the inventory file itself
  4. inventories/NAME.local.yaml beside it (git-ignored, for local paths)
  5. command-line options (--set key.path=value, and task flags)
Mappings merge key by key; lists and scalars are replaced; the `hosts`
section is replaced as a whole (hosts from two sources never mix silently).
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .schema import INVENTORY
from .schema_types import SchemaError, dotted

REPLACE_WHOLE = {("hosts",)}
DEFAULT_DIR = "inventories"
ENV_VAR = "FABSHIP_INVENTORY"


def project_root() -> Path:
    """The directory holding inventories/: the working directory when it has
    one (a user's own project), else the fabship checkout."""
    env = os.environ.get("FABSHIP_ROOT")
    if env:
        return Path(env)
    cwd = Path.cwd()
    if (cwd / DEFAULT_DIR).is_dir():
        return cwd
    return Path(__file__).resolve().parent.parent


# -- YAML that refuses duplicate keys ------------------------------------------

class _StrictLoader(yaml.SafeLoader):
    pass


def _no_duplicates(loader, node, deep=False):
    mapping = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}'", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found") from None
    except OSError as e:
        raise ConfigError(path, "", f"cannot read: {e.strerror}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(path, where, f"invalid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, "(top level)", "expected a mapping of sections (hosts:, ssh:, app: ...)")
    return data


# -- locating files --------------------------------------------------------------

def resolve_inventory_path(name_or_path: str | None, base: Path | None = None) -> Path:
    if not name_or_path:
        name_or_path = os.environ.get(ENV_VAR)
    if not name_or_path:
        raise ConfigError("inventory", "", f"no inventory given: pass --inventory NAME_OR_PATH or set {ENV_VAR}")
    p = Path(name_or_path).expanduser()
    looks_like_path = "/" in name_or_path or p.suffix in (".yaml", ".yml")
    if looks_like_path:
        if base is not None and not p.is_absolute():
            p = base / p
        if not p.exists():
            raise ConfigError(p, "", "inventory file not found")
        return p
    root = base if base is not None else project_root() / DEFAULT_DIR
    cand = root / f"{name_or_path}.yaml"
    if not cand.exists():
        known = sorted(x.stem for x in root.glob("*.yaml") if not x.stem.endswith(".local")) if root.is_dir() else []
        hint = f"; known: {', '.join(known)}" if known else ""
        raise ConfigError(cand, "", f"inventory '{name_or_path}' not found{hint}")
    return cand


# -- merging with origins --------------------------------------------------------

def merge(base: dict, over: dict, origin: dict, source: str, path: tuple = ()) -> dict:
    """Merge `over` into a copy of `base`, recording which file set each key."""
    out = dict(base)
    for k, v in over.items():
        kp = path + (k,)
        if (isinstance(v, dict) and isinstance(out.get(k), dict) and kp not in REPLACE_WHOLE):
            out[k] = merge(out[k], v, origin, source, kp)
        else:
            out[k] = copy.deepcopy(v)
            for key in [o for o in origin if o[:len(kp)] == kp]:
                del origin[key]
            _mark(v, kp, origin, source)
        origin.setdefault(kp, source)
    return out


def _mark(value, path, origin, source):
    origin[path] = source
    if isinstance(value, dict):
        for k, v in value.items():
            _mark(v, path + (k,), origin, source)


def _origin_of(path: tuple, origin: dict, default: str) -> str:
    for i in range(len(path), 0, -1):
        if path[:i] in origin:
            return origin[path[:i]]
    return default


def parse_set(expr: str) -> tuple[tuple, Any]:
    """`--set ssh.port=2222` -> (('ssh','port'), 2222); the value is YAML."""
    if "=" not in expr:
        raise ConfigError("command line", f"--set {expr}", "expected KEY.PATH=VALUE")
    key, _, raw = expr.partition("=")
    parts = tuple(p for p in key.strip().split(".") if p)
    if not parts:
        raise ConfigError("command line", f"--set {expr}", "expected KEY.PATH=VALUE")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def _nest(parts: tuple, value) -> dict:
    d: Any = value
    for p in reversed(parts):
        d = {p: d}
    return d


# -- the inventory object -----------------------------------------------------------

@dataclass
class Host:
    name: str
    address: str
    user: str
    port: int
    source: str
    tags: dict = field(default_factory=dict)
    groups: list = field(default_factory=list)
    vars: dict = field(default_factory=dict)

    def expand(self, value):
        """Per-host placeholders in inventory strings: {host} and {address}."""
        if isinstance(value, str):
            return value.replace("{host}", self.name).replace("{address}", self.address)
        if isinstance(value, list):
            return [self.expand(v) for v in value]
        if isinstance(value, dict):
            return {k: self.expand(v) for k, v in value.items()}
        return value

    def label(self) -> str:
        return self.name


@dataclass
class Inventory:
    name: str
    path: Path
    data: dict
    files: list
    origin: dict

    def section(self, key: str):
        return self.data.get(key)

    def get(self, dotted_key: str, default=None):
        cur: Any = self.data
        for p in dotted_key.split("."):
            if not isinstance(cur, dict) or cur.get(p) is None:
                return default
            cur = cur[p]
        return cur

    def file_of(self, dotted_key: str) -> str:
        return _origin_of(tuple(dotted_key.split(".")), self.origin, str(self.path))

    def error(self, dotted_key: str, problem: str) -> ConfigError:
        """A ConfigError naming the file that set `dotted_key`."""
        return ConfigError(self.file_of(dotted_key), dotted_key, problem)

    def require(self, dotted_key: str, what: str):
        value = self.get(dotted_key)
        if value in (None, "", [], {}):
            return_path = self.file_of(dotted_key.rsplit(".", 1)[0]) if "." in dotted_key else str(self.path)
            raise ConfigError(return_path, dotted_key, f"required for {what}")
        return value

    def resolve_hosts(self, limit: str | None = None) -> list[Host]:
        from .discovery import discover

        hosts = discover(self)
        _apply_groups(self, hosts)
        if limit:
            hosts = _limit(self, hosts, limit)
        return hosts


def _apply_groups(inv: Inventory, hosts: list[Host]) -> None:
    groups = inv.data.get("groups") or {}
    known = {h.name for h in hosts}
    for gname, g in groups.items():
        for hn in g.get("hosts") or []:
            if hn not in known and inv.data["hosts"].get("static") is not None:
                raise inv.error(f"groups.{gname}.hosts", f"host '{hn}' is not in the inventory's hosts")
    base_vars = inv.data.get("vars") or {}
    for h in hosts:
        merged = copy.deepcopy(base_vars)
        for gname, g in groups.items():
            tag_match = bool(g.get("tags")) and all(h.tags.get(k) == v for k, v in g["tags"].items())
            if h.name in (g.get("hosts") or []) or tag_match or gname in h.groups:
                if gname not in h.groups:
                    h.groups.append(gname)
                merged.update(copy.deepcopy(g.get("vars") or {}))
        merged.update(h.vars)
        h.vars = merged


def _limit(inv: Inventory, hosts: list[Host], limit: str) -> list[Host]:
    wanted = [w.strip() for w in limit.split(",") if w.strip()]
    out = []
    for w in wanted:
        matched = [h for h in hosts if h.name == w or h.address == w or w in h.groups]
        if not matched:
            raise ConfigError(inv.path, f"--limit {w}", "matches no host or group in this inventory")
        out.extend(h for h in matched if h not in out)
    return out


def load_inventory(name_or_path: str | None = None, overrides: list[str] | tuple = (),
                   cli: dict | None = None) -> Inventory:
    """Load, merge and validate. Raises ConfigError before anything connects."""
    path = resolve_inventory_path(name_or_path)
    merged, origin = _load_with_includes(path, stack=())
    local = path.with_name(path.stem + ".local.yaml")
    files = [str(path)]
    if local.exists():
        merged = merge(merged, read_yaml(local), origin, str(local))
        files.append(str(local))
    cli_layer: dict = {}
    for expr in overrides or ():
        parts, value = parse_set(expr)
        cli_layer = merge(cli_layer, _nest(parts, value), {}, "")
    for dotted_key, value in (cli or {}).items():
        if value is not None:
            cli_layer = merge(cli_layer, _nest(tuple(dotted_key.split(".")), value), {}, "")
    if cli_layer:
        merged = merge(merged, cli_layer, origin, "command line")
    merged.pop("include", None)
    try:
        data = INVENTORY.check(merged, ())
    except SchemaError as e:
        raise ConfigError(_origin_of(e.path, origin, str(path)), e.key, e.problem) from None
    name = path.stem
    return Inventory(name=name, path=path, data=data, files=files, origin=origin)


def _load_with_includes(path: Path, stack: tuple) -> tuple[dict, dict]:
    rp = path.resolve()
    if rp in stack:
        chain = " -> ".join(p.name for p in stack + (rp,))
        raise ConfigError(path, "include", f"include cycle: {chain}")
    raw = read_yaml(path)
    includes = raw.get("include") or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list):
        raise ConfigError(path, "include", "expected a list of inventory names or paths")
    merged: dict = {}
    origin: dict = {}
    for i, inc in enumerate(includes):
        if not isinstance(inc, str):
            raise ConfigError(path, f"include[{i}]", "expected an inventory name or path")
        try:
            inc_path = resolve_inventory_path(inc, base=path.parent)
        except ConfigError as e:
            raise ConfigError(path, f"include[{i}]", f"{inc}: {e.problem}") from None
        inc_data, inc_origin = _load_with_includes(inc_path, stack + (rp,))
        merged = merge(merged, inc_data, origin, str(inc_path))
        origin.update(inc_origin)  # keep the deepest file that set each key
    return merge(merged, raw, origin, str(path)), origin
