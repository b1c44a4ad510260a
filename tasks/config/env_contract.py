"""The env contract: which keys an app's env file must, may and must not hold,
and per-key rules, checked before anything connects to a host.

The inventory's `env.contract` section:

    env:
      contract:
        required: [APP_SECRET, DATABASE_URL]
        optional: [LOG_LEVEL]
        allow_unknown: false          # a key in neither list is refused
        rules:
          APP_SECRET: {min_length: 32, hex: true}
          DATABASE_URL: {url: true}
          LOG_LEVEL: {one_of: [debug, info, warn]}
          WORKERS: {int_range: [1, 16]}
        differ_from: [ota-prod]       # other inventories whose values ...
        differ_keys: [APP_SECRET]     # ... must not be reused here

Every message names the key and the rule that failed, never the value (not
even its length: "shorter than min_length 32" is enough to act on).
"""
from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Callable, Mapping
from urllib.parse import urlsplit

from ..core.commands import Secret
from ..core.errors import ConfigError, FabshipError

RULE_ORDER = ("non_empty", "min_length", "max_length", "hex", "base64", "url", "one_of", "int_range", "pattern")

_HEX = re.compile(r"[0-9a-fA-F]+")
_B64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_B64URL = re.compile(r"[A-Za-z0-9_\-]+={0,2}")
_INT = re.compile(r"[+-]?\d+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")


class EnvContractError(ConfigError):
    """The new env values break the contract. One line, all problems, no values."""

    def __init__(self, source: str, problems: list[str], contract_file: str):
        self.problems = problems
        shown = "; ".join(problems)
        super().__init__(source, "", f"violates env.contract ({contract_file}): {shown}")


# -- checking the contract itself (config errors, before any value is looked at) --

def check_contract(inv) -> dict | None:
    """Validate the contract's own definitions (regexes compile, ranges are
    ranges, differ settings make sense). Returns the contract or None."""
    contract = inv.get("env.contract")
    if not contract:
        return None
    for key, rule in (contract.get("rules") or {}).items():
        where = f"env.contract.rules.{key}"
        if not any(rule.get(n) is not None for n in RULE_ORDER):
            raise inv.error(where, "a rule set needs at least one rule: " + ", ".join(RULE_ORDER))
        if rule.get("pattern") is not None:
            try:
                re.compile(rule["pattern"])
            except re.error as e:
                raise inv.error(f"{where}.pattern", f"not a valid regular expression: {e}") from None
        rng = rule.get("int_range")
        if rng is not None and (len(rng) != 2 or rng[0] > rng[1]):
            raise inv.error(f"{where}.int_range", "expected [MIN, MAX] with MIN <= MAX")
        lo, hi = rule.get("min_length"), rule.get("max_length")
        if lo is not None and hi is not None and lo > hi:
            raise inv.error(where, f"min_length {lo} is greater than max_length {hi}")
        if rule.get("hex") and rule.get("base64"):
            raise inv.error(where, "hex and base64 cannot both hold; choose one")
    both = set(contract.get("required") or []) & set(contract.get("optional") or [])
    if both:
        raise inv.error("env.contract.optional", f"listed as required too: {', '.join(sorted(both))}")
    if contract.get("differ_from") and not contract.get("differ_keys"):
        raise inv.error("env.contract.differ_keys",
                        "differ_from is set: name the keys whose values must differ (differ_keys)")
    if contract.get("differ_keys") and not contract.get("differ_from"):
        raise inv.error("env.contract.differ_from",
                        "differ_keys is set: name the inventories to compare with (differ_from)")
    return contract


# -- the rules ---------------------------------------------------------------------------

def _is_url(v: str) -> bool:
    try:
        parts = urlsplit(v)
    except ValueError:
        return False
    return bool(_SCHEME.fullmatch(parts.scheme or "") and parts.netloc) and not any(c.isspace() for c in v)


def _is_base64(v: str) -> bool:
    if not v:
        return False
    if _B64.fullmatch(v):
        try:
            base64.b64decode(v, validate=True)
            return True
        except ValueError:
            return False
    return bool(_B64URL.fullmatch(v))


def rule_problem(name: str, arg, v: str) -> str | None:
    """The problem (naming the rule, never the value) or None when it holds."""
    if name == "non_empty":
        return "is empty (rule non_empty)" if arg and not v.strip() else None
    if name == "min_length":
        return f"is shorter than min_length {arg}" if len(v) < arg else None
    if name == "max_length":
        return f"is longer than max_length {arg}" if len(v) > arg else None
    if name == "hex":
        return "is not hex (rule hex: digits 0-9 and a-f only)" if arg and not _HEX.fullmatch(v) else None
    if name == "base64":
        return "is not base64 (rule base64)" if arg and not _is_base64(v) else None
    if name == "url":
        return "is not a URL (rule url: scheme://host...)" if arg and not _is_url(v) else None
    if name == "one_of":
        return f"is not one of the allowed values (rule one_of: {', '.join(arg)})" if v not in arg else None
    if name == "int_range":
        lo, hi = arg[0], arg[1]
        if not _INT.fullmatch(v.strip()):
            return f"is not an integer (rule int_range [{lo}, {hi}])"
        n = int(v.strip())
        return f"is outside int_range [{lo}, {hi}]" if not lo <= n <= hi else None
    if name == "pattern":
        return f"does not match pattern {arg!r}" if not re.fullmatch(arg, v) else None
    raise ValueError(f"unknown rule {name}")


def problems(values: Mapping[str, Secret], contract: dict | None) -> list[str]:
    """Every contract violation of `values`, as 'KEY: what is wrong' lines."""
    if not contract:
        return []
    out: list[str] = []
    required = list(contract.get("required") or [])
    optional = list(contract.get("optional") or [])
    rules = contract.get("rules") or {}
    missing = [k for k in required if k not in values]
    if missing:
        out.append(f"required key{'s' if len(missing) > 1 else ''} missing: {', '.join(missing)}")
    known = set(required) | set(optional) | set(rules)
    if (required or optional) and not contract.get("allow_unknown"):
        unknown = [k for k in values if k not in known]
        if unknown:
            out.append(f"key{'s' if len(unknown) > 1 else ''} not in the contract: {', '.join(unknown)} "
                       "(add to env.contract.optional, or set allow_unknown: true)")
    for key, rule in rules.items():
        if key not in values:
            continue
        raw = values[key].reveal() if isinstance(values[key], Secret) else str(values[key])
        for name in RULE_ORDER:
            arg = rule.get(name)
            if arg is None or arg is False:
                continue
            p = rule_problem(name, arg, raw)
            if p:
                out.append(f"{key} {p}")
    return out


def enforce(inv, values: Mapping[str, Secret], source: str) -> None:
    """Raise EnvContractError naming `source` and every broken rule."""
    contract = check_contract(inv)
    found = problems(values, contract)
    if found:
        raise EnvContractError(source, found, inv.file_of("env.contract"))


# -- values that must differ between environments -----------------------------------------

def _digest(v) -> str:
    raw = v.reveal() if isinstance(v, Secret) else str(v)
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass
class DifferResult:
    errors: list[str]
    warnings: list[str]


def differ_check(inv, values: Mapping[str, Secret],
                 load_other: Callable[[str], Mapping[str, Secret]] | None = None) -> DifferResult:
    """Compare differ_keys with each differ_from inventory's env source (by
    sha256; values stay in memory). An inventory whose source cannot be read
    gives a warning, never a silent pass."""
    contract = check_contract(inv) or {}
    errors: list[str] = []
    warnings: list[str] = []
    others = contract.get("differ_from") or []
    keys = contract.get("differ_keys") or []
    if not others:
        return DifferResult(errors, warnings)
    load_other = load_other or _load_other_inventory(inv)
    mine = {k: _digest(values[k]) for k in keys if k in values}
    for name in others:
        try:
            theirs = load_other(name)
        except FabshipError as e:
            warnings.append(f"env.contract.differ_from: cannot compare with {name}: {e}")
            continue
        same = [k for k in keys if k in mine and k in theirs and _digest(theirs[k]) == mine[k]]
        not_there = [k for k in keys if k in mine and k not in theirs]
        if same:
            errors.append(f"{', '.join(same)}: same value as in {name} (env.contract.differ_keys "
                          "must differ between environments)")
        if not_there:
            warnings.append(f"env.contract.differ_from: {name} has no {', '.join(not_there)} to compare")
    return DifferResult(errors, warnings)


def _load_other_inventory(inv) -> Callable[[str], Mapping[str, Secret]]:
    def load(name: str):
        from .env_sources import load_env_source
        from .inventory import load_inventory, resolve_inventory_path

        path = resolve_inventory_path(name, base=inv.path.parent)
        if path.resolve() == inv.path.resolve():
            raise ConfigError(inv.file_of("env.contract.differ_from"), "env.contract.differ_from",
                              f"{name} is this inventory itself")
        other = load_inventory(str(path))
        if not other.get("env.source"):
            raise ConfigError(other.path, "env.source", "not set, so its values cannot be read")
        return load_env_source(other).values

    return load
