"""`fab config`: the merged inventory as fabship sees it, each value with the file it
came from (a default when no file set it), secrets masked; `--host H` shows it for
one host ({host}/{address} expanded, the host's own fields and group vars); `--schema`
prints the inventory format as a JSON Schema for editors. Connects to nothing."""
from __future__ import annotations

import json
import re

from ..config.inventory import load_inventory
from ..core.errors import ConfigError
from ..core.output import report

MASK = "***"
# keys whose values are secrets wherever they are (header values, tokens in hooks' URLs, ...)
_SECRET_KEY = re.compile(r"(?i)(^|[_-])(pass(word|wd)?|secret|token|authorization|cookie|credentials?|api[_-]?key|"
                         r"private[_-]?key)($|[_-])")
_SECRET_PARENT = {"headers"}  # health.headers, verify.checks[].headers: every value
_SECRET_LEAF = {("notify", "url")}  # a webhook URL holds its token
_URL_PASSWORD = re.compile(r"(?i)^([a-z][a-z0-9+.-]*://[^/@:\s]*:)[^/@\s]+@")


def _is_secret(path: tuple) -> bool:
    keys = [p for p in path if isinstance(p, str)]
    if not keys:
        return False
    last = keys[-1]
    if len(keys) >= 2 and keys[-2] in _SECRET_PARENT:
        return True
    if (keys[0], last) in _SECRET_LEAF:
        return True
    if last.endswith(("_file", "_path", "_env", "_id", "_arn", "_name")) or last in ("known_hosts", "path", "file"):
        return False  # names of files or variables, not their contents
    return bool(_SECRET_KEY.search(last))


def masked(path: tuple, value):
    if _is_secret(path) and value not in (None, "", [], {}):
        return MASK
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1***@", value)
    return value


def flatten(data, origin: dict, path: tuple = ()) -> list[tuple[str, object, str]]:
    """(dotted key, masked value, where it came from) for every leaf."""
    rows = []
    if isinstance(data, dict) and data:
        for k, v in data.items():
            rows += flatten(v, origin, path + (k,))
        return rows
    if isinstance(data, list) and data and any(isinstance(x, (dict, list)) for x in data):
        for i, v in enumerate(data):
            rows += flatten(v, origin, path + (i,))
        return rows
    keys = tuple(p for p in path if isinstance(p, str))
    src = origin.get(path)  # a key no file set is the schema's default
    if src is None and any(isinstance(p, int) for p in path):  # a list item: the file that set the list
        for n in range(len(path), 0, -1):
            if path[:n] in origin:
                src = origin[path[:n]]
                break
    dotted = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p) for i, p in enumerate(path))
    value = masked(path, data) if not isinstance(data, list) else [masked(keys, x) for x in data] \
        if not _is_secret(keys) else MASK
    return [(dotted, value, src or "default")]


def host_fields(h) -> dict:
    return {"name": h.name, "address": h.address, "user": h.user, "port": h.port, "source": h.source,
            "groups": list(h.groups), "tags": dict(h.tags), "vars": {k: masked(("vars", k), v)
                                                                    for k, v in h.vars.items()}}


def show_config(inventory=None, set=(), host=None, schema=False) -> None:
    if schema:
        from ..config.schema_json import inventory_schema

        doc = inventory_schema()
        report("schema", doc)
        print(json.dumps(doc, indent=2))
        return
    inv = load_inventory(inventory, overrides=list(set or ()))
    data, origin = inv.data, inv.origin
    title = f"inventory {inv.name} ({' < '.join(inv.files)})"
    shown_host = None
    if host:
        hosts = inv.resolve_hosts(None)
        match = [h for h in hosts if host in (h.name, h.address)]
        if not match:
            raise ConfigError(inv.path, f"--host {host}", f"no such host (known: {', '.join(h.name for h in hosts)})")
        shown_host = match[0]
        data = shown_host.expand(data)
        title += f" for host {shown_host.name} ({shown_host.address})"
    rows = flatten(data, origin)
    width = max((len(k) for k, _, _ in rows), default=10)
    print(title)
    if shown_host is not None:
        for k, v in host_fields(shown_host).items():
            print(f"  host.{k:<{width - 5}} = {json.dumps(v)}")
    for k, v, src in rows:
        print(f"  {k:<{width}} = {json.dumps(v, default=str):<30}  # {src}")
    report("inventory", str(inv.path))
    report("files", inv.files)
    if shown_host is not None:
        report("host", host_fields(shown_host))
    report("config", {k: {"value": v, "from": src} for k, v, src in rows})
