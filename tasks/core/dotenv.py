"""The dotenv format fabship reads and writes: parse (as systemd's
EnvironmentFile= reads it), render, docker's literal --env-file form, value
hashes, key diffs, and which values deserve masking. No I/O on hosts here."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Mapping

from .commands import Cmd, Secret, script, sh
from .errors import ConfigError

KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# Values systemd and docker read the same way when unquoted.
_SAFE_UNQUOTED = re.compile(r"[^\s\\'\"]([^\\\n\r]*[^\s\\])?|")


HASH_LEN = 16


def parse_dotenv(text: str, source: str) -> dict[str, Secret]:
    """Parse dotenv text into {KEY: Secret}, in file order.

    Accepts: `KEY=value`, `export KEY=value`, comments (`# ...` lines and
    ` # ...` after an unquoted value), single quotes (literal), double quotes
    (may span lines; escapes \\n \\t \\r \\\\ \\" \\$ \\`). Errors name the source
    and line, never the value. A key given twice is an error.
    """
    out: dict[str, Secret] = {}
    first_line: dict[str, int] = {}
    lines = text.replace("\r\n", "\n").split("\n")
    i = 0
    while i < len(lines):
        n = i + 1
        line = lines[i]
        i += 1
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("export ") or stripped.startswith("export\t"):
            stripped = stripped[len("export"):].lstrip()
        if "=" not in stripped:
            raise ConfigError(source, f"line {n}", "expected KEY=VALUE")
        key, _, rest = stripped.partition("=")
        key = key.rstrip()
        if not KEY_RE.fullmatch(key):
            shown = key if len(key) <= 40 else key[:37] + "..."
            raise ConfigError(source, f"line {n}", f"invalid variable name {shown!r}: expected letters, "
                                                   "digits and '_', not starting with a digit")
        rest = rest.lstrip(" \t")
        if rest[:1] == "'":
            end = rest.find("'", 1)
            if end < 0:
                raise ConfigError(source, f"line {n}", f"{key}: unterminated single quote")
            value, tail = rest[1:end], rest[end + 1:]
        elif rest[:1] == '"':
            value, tail, i = _double_quoted(rest[1:], lines, i, source, n, key)
        else:
            value, tail = _unquoted(rest), ""
        tail = tail.strip()
        if tail and not tail.startswith("#"):
            raise ConfigError(source, f"line {n}", f"{key}: unexpected text after the closing quote")
        if key in out:
            raise ConfigError(source, f"line {n}", f"{key} is already set on line {first_line[key]}")
        out[key] = Secret(value)
        first_line[key] = n
    return out


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "$": "$", "`": "`"}


def _double_quoted(rest: str, lines: list[str], i: int, source: str, n: int, key: str):
    buf: list[str] = []
    text = rest
    while True:
        j = 0
        while j < len(text):
            c = text[j]
            if c == "\\" and j + 1 < len(text):
                nxt = text[j + 1]
                buf.append(_ESCAPES.get(nxt, "\\" + nxt))
                j += 2
                continue
            if c == '"':
                return "".join(buf), text[j + 1:], i
            buf.append(c)
            j += 1
        if i >= len(lines):
            raise ConfigError(source, f"line {n}", f"{key}: unterminated double quote")
        buf.append("\n")
        text = lines[i]
        i += 1


def _unquoted(rest: str) -> str:
    # dotenv convention: ' #' starts a comment after an unquoted value
    m = re.search(r"\s#", rest)
    if m:
        rest = rest[: m.start()]
    return rest.strip()


def load_dotenv_file(path: str | Path) -> tuple[dict[str, Secret], str]:
    """Read and parse a local dotenv file: (values, shown path). Errors are one line."""
    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(p, "", "env file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(p, "", f"cannot read env file: {getattr(e, 'strerror', None) or e}") from None
    return parse_dotenv(text, str(p)), str(p)


def quote_value(value: str) -> str:
    """The text after `KEY=` for one value (see the module doc)."""
    if _SAFE_UNQUOTED.fullmatch(value) and not re.search(r"\s#", value):
        return value
    esc = value.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`").replace("$", "\\$")
    return f'"{esc}"'


def literal_problem(value: str) -> str | None:
    """Why docker's --env-file cannot carry `value` as it is (None: it can)."""
    if "\n" in value or "\r" in value:
        return "holds a line break, which docker's --env-file cannot carry (one line per KEY=VALUE)"
    if "\0" in value:
        return "holds a NUL byte"
    return None


def check_literal(values: Mapping[str, Secret | str], source: str) -> None:
    """ConfigError naming the first key docker cannot take literally (never its value)."""
    for k, v in values.items():
        why = literal_problem(v.reveal() if isinstance(v, Secret) else str(v))
        if why:
            raise ConfigError(source, k, f"the value {why} (app.kind docker)")


def render_value(value: str, literal: bool = False) -> str:
    """The text after `KEY=`: as it is for docker (literal), else quote_value."""
    return value if literal else quote_value(value)


def render_dotenv(values: Mapping[str, Secret | str], literal: bool = False, source: str = "env") -> bytes:
    """The env file's bytes (from templates/env/app.env.j2), keys in the given order.
    `literal` (docker_literal): docker's --env-file format, every value as it is;
    a value it cannot carry is a ConfigError naming the key (check_literal)."""
    from .templates import render

    if literal:
        check_literal(values, source)
    lines = []
    for k, v in values.items():
        if not KEY_RE.fullmatch(k):
            raise ValueError(f"invalid variable name {k!r}")
        raw = v.reveal() if isinstance(v, Secret) else str(v)
        lines.append((k, render_value(raw, literal)))
    return render("env/app.env.j2", lines=lines).encode()


def sha256_hex(data: bytes | str | Secret) -> str:
    if isinstance(data, Secret):
        data = data.reveal()
    if isinstance(data, str):
        data = data.encode()
    return hashlib.sha256(data).hexdigest()


def value_hashes(values: Mapping[str, Secret | str], literal: bool = False) -> dict[str, str]:
    """{KEY: short sha256 of the rendered value}: comparable with the output of
    `key_hashes_cmd` on the host, so changed keys can be named without ever
    reading values back."""
    out = {}
    for k, v in values.items():
        raw = v.reveal() if isinstance(v, Secret) else str(v)
        out[k] = sha256_hex(render_value(raw, literal))[:HASH_LEN]
    return out


def key_diff(old: Mapping, new: Mapping) -> tuple[list[str], list[str], list[str]]:
    """(added, removed, changed) key names. Values may be Secrets or hashes
    (see value_hashes); only names are returned."""
    added = [k for k in new if k not in old]
    removed = [k for k in old if k not in new]
    changed = [k for k in new if k in old and old[k] != new[k]]
    return added, removed, changed


def describe_diff(added, removed, changed) -> str:
    parts = []
    if added:
        parts.append("added " + ", ".join(added))
    if removed:
        parts.append("removed " + ", ".join(removed))
    if changed:
        parts.append("changed " + ", ".join(changed))
    return "; ".join(parts) or "no key changes"


def key_hashes_cmd(path: str) -> Cmd:
    """Print `KEY HASH` per line of the host's env file (hash of the text after
    `=`, like value_hashes). printf is a shell builtin, so values appear in no
    process's argv; they reach sha256sum on stdin only."""
    return script([
        sh("f={}", path),
        '[ -r "$f" ] || exit 0',
        "while IFS= read -r line || [ -n \"$line\" ]; do",
        '  case "$line" in export\\ *) line=${line#export };; esac',
        '  case "$line" in [A-Za-z_]*=*) k=${line%%=*}; v=${line#*=};'
        f'    printf "%s %s\\n" "$k" "$(printf %s "$v" | sha256sum | cut -c1-{HASH_LEN})";; esac',
        'done < "$f"',
    ])


def parse_key_hashes(text: str) -> dict[str, str]:
    out = {}
    for ln in text.splitlines():
        parts = ln.split()
        if len(parts) == 2 and KEY_RE.fullmatch(parts[0]):
            out[parts[0]] = parts[1]
    return out


SENSITIVE = re.compile(r"(?i)(pass(word|wd|phrase)?|secret|token|api[_-]?key|private[_-]?key|credential|"
                       r"session[_-]?key|auth|_key$|^key$|dsn|database_url)")


MASK_MIN = 4  # shorter values would mask ordinary words


def secret_looking(key: str, value: Secret, rule: dict | None = None) -> bool:
    """Env values to mask wherever they appear: secret-looking names, contract
    rules that describe secrets, long values. Not HOST=127.0.0.1 or
    LOG_LEVEL=info: masking those would blank every address and log level.
    (Values are never printed by fabship itself; this guards app output such
    as journal tails.)"""
    if len(value) < MASK_MIN:
        return False
    r = rule or {}
    return bool(SENSITIVE.search(key) or r.get("hex") or r.get("base64") or (r.get("min_length") or 0) >= 12
                or len(value) >= 20)


def mask_worthy(values: Mapping[str, Secret], rules: Mapping | None = None) -> list[Secret]:
    rules = rules or {}
    return [v for k, v in values.items() if isinstance(v, Secret) and secret_looking(k, v, rules.get(k))]
