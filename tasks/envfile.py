"""Env files: parse a local dotenv file into Secrets, render the host's env
file, and install it with mode 0600 from the first byte.

The host file is read by systemd (`EnvironmentFile=`) or, for app.kind
docker, by `docker run --env-file`. Docker takes values literally (no quotes,
no escapes, one line), systemd understands quotes and backslashes. So for
systemd a value is written unquoted whenever both readers agree on it (the
common case: tokens, URLs, numbers), and in double quotes with systemd escapes
only when it must be (leading/trailing spaces, backslashes, quotes, newlines);
for docker every value is written as it is (`literal`), and one docker cannot
carry (a line break) is refused naming its key.

Values never leave this module in clear text except on the stdin of the one
remote script that writes the file; changes are reported by sha256 prefix and
key names only.
"""
from __future__ import annotations

import time

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .commands import Cmd, Secret, script, sh
from .errors import ConfigError

KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Values systemd and docker read the same way when unquoted.
_SAFE_UNQUOTED = re.compile(r"[^\s\\'\"]([^\\\n\r]*[^\s\\])?|")
HASH_LEN = 16


# -- parsing -----------------------------------------------------------------------

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


# -- rendering ---------------------------------------------------------------------

def quote_value(value: str) -> str:
    """The text after `KEY=` for one value (see the module doc)."""
    if _SAFE_UNQUOTED.fullmatch(value) and not re.search(r"\s#", value):
        return value
    esc = value.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`").replace("$", "\\$")
    return f'"{esc}"'


def docker_literal(inv) -> bool:
    """Whether the host's env file is read by `docker run --env-file` (kind
    docker), which takes every value literally: no quotes, no escapes, one line.
    systemd never reads that file, so it is written in docker's format."""
    return inv.get("app.kind") == "docker"


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


# -- remote commands ---------------------------------------------------------------

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


def keep_previous_lines(condition: str) -> list[str]:
    """Shell lines that keep the previous version of "$f" beside it ($f.prev,
    $f.prev.1 ... up to "$keep" versions, 0600) when `condition` holds. One
    copy for every writer of versioned secret files (bootstrap, rotate-env)."""
    return [
        f'if {condition} && [ "$keep" -gt 0 ]; then',
        '  i=$((keep - 1)); while [ "$i" -gt 1 ]; do',
        '    [ -f "$f.prev.$((i - 1))" ] && mv -f -- "$f.prev.$((i - 1))" "$f.prev.$i"; i=$((i - 1)); done',
        '  if [ "$keep" -gt 1 ] && [ -f "$f.prev" ]; then mv -f -- "$f.prev" "$f.prev.1"; fi',
        '  ln -f -- "$f" "$f.prev"; chmod 0600 -- "$f.prev"',
        "fi",
    ]


def install_cmd(path: str, owner: str, group: str, mode: str, sha: str | None, keep_previous: int | bool = True,
                size: int | None = None) -> Cmd:
    """One remote script that installs stdin as `path`:

    - does nothing (prints `unchanged`) when the file already has this content,
      owner, group and mode;
    - else writes a temp file made by mktemp (0600, same directory, so the
      rename is atomic and the data is never readable by others), checks its
      sha256 against `sha` (a truncated upload never lands), fsyncs it, sets
      owner/group/mode, keeps the previous file as PATH.prev (0600; older ones
      as PATH.prev.1 ... when keep_previous > 1) and renames it into place.
    Prints `old=<sha256 or ->` and `new=<sha256>`.
    With `size`, it reads exactly that many bytes of stdin (`head -c` never
    reads ahead), so several installs can share one script and one stdin
    (tasks/docker_files.py). With `sha` None (needs `size`), the expected
    sha256 comes first on stdin (64 hex digits and a newline) instead of on
    the command line, where `ps` shows it to every user of the host: a short
    credential's hash there could be brute-forced.
    """
    if sha is None and size is None:
        raise ValueError("install_cmd: sha=None needs size (the hash precedes the content on stdin)")
    keep = 1 if keep_previous is True else int(keep_previous or 0)
    mode = mode if mode.startswith("0") else "0" + mode
    read = "cat" if size is None else f"head -c {int(size)}"
    head = ([sh("f={} owner={} group={} mode={} want={} keep={}", path, owner, group, mode, sha, keep)] if sha
            else [sh("f={} owner={} group={} mode={} keep={}", path, owner, group, mode, keep),
                  'want=$(head -c 65); case $want in *[!0-9a-f]*|"") echo "bad sha256 on stdin" >&2; exit 4;; esac'])
    lines = head + [
        "umask 077",
        'dir=$(dirname -- "$f"); base=$(basename -- "$f")',
        '[ -d "$dir" ] || { echo "directory $dir does not exist" >&2; exit 3; }',
        'old=-; if [ -f "$f" ]; then old=$(sha256sum < "$f" | cut -d" " -f1); fi',
        'cur=$(stat -c "%U:%G:%a" -- "$f" 2>/dev/null || true)',
        'if [ "$old" = "$want" ] && [ "$cur" = "$owner:$group:${mode#0}" ]; then',
        f'  {read} > /dev/null; echo unchanged; echo "old=$old"; echo "new=$want"; exit 0; fi',
        'tmp=$(mktemp "$dir/.$base.XXXXXX")',
        "trap 'rm -f \"$tmp\"' EXIT",
        f'{read} > "$tmp"',
        'got=$(sha256sum < "$tmp" | cut -d" " -f1)',
        '[ "$got" = "$want" ] || { echo "upload incomplete: sha256 mismatch" >&2; exit 4; }',
        'sync -- "$tmp" 2>/dev/null || sync',
        'chown -- "$owner:$group" "$tmp"',
        'chmod -- "$mode" "$tmp"',
        *keep_previous_lines('[ "$old" != - ]'),
        'mv -f -- "$tmp" "$f"',
        "trap - EXIT",
        'sync -- "$dir" 2>/dev/null || true',
        'echo changed; echo "old=$old"; echo "new=$want"',
    ]
    return script(lines)


@dataclass
class EnvInstall:
    changed: bool
    old_sha: str | None
    new_sha: str
    message: str = ""
    keys: tuple = field(default_factory=tuple)


def _content_bytes(content: bytes | Secret | str) -> bytes:
    if isinstance(content, Secret):
        return content.reveal().encode()
    if isinstance(content, str):
        return content.encode()
    return content


def install_env_file(ctx, content: bytes | Secret, path: str, owner: str, group: str, mode: str = "0600",
                     keep_previous: int | bool = True, step: str = "env file") -> EnvInstall:
    """Install `content` as the host's env file (see install_cmd). Reports
    changed/ok on ctx with sha256 prefixes only; in dry-run runs nothing."""
    data = _content_bytes(content)
    want = sha256_hex(data)
    cmd = install_cmd(path, owner, group, mode, want, keep_previous)
    if ctx.dry_run:
        ctx.change(step, f"{path} would be written (sha256 {want[:12]}, {owner}:{group} {mode})", cmd)
        return EnvInstall(True, None, want)
    t0 = time.monotonic()
    res = ctx.run(cmd, stdin=data, check=False, what=step)
    if not res.ok:
        ctx.fail(step, f"installing {path} failed (exit {res.exited})", ctx.mask(res.tail()))
    out = dict(ln.split("=", 1) for ln in res.stdout.splitlines() if "=" in ln)
    old = out.get("old")
    old = None if old in (None, "-") else old
    if res.stdout.startswith("unchanged"):
        ctx.ok(step, f"{path} up to date (sha256 {want[:12]})")
        return EnvInstall(False, old, want)
    msg = (f"{path}: sha256 {old[:12] if old else '(new file)'} -> {want[:12]} "
           f"({owner}:{group} {mode})")
    ctx.record(step, "changed", msg, t0)
    return EnvInstall(True, old, want, msg)


# -- which env values to mask in output (one rule for every task) -------------

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


_JSON = re.compile(r'("([A-Za-z_][A-Za-z0-9_.-]*)"\s*:\s*)("(?:[^"\\]|\\.)*"|[^\s,}\]]+)')
_EQ = re.compile(r"\b([A-Za-z_][A-Za-z0-9_.-]*)(\s*=\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&]+)")
_COLON = re.compile(r"\b([A-Za-z_][A-Za-z0-9_.-]*)(:[ \t]+)(\S[^\n]*)")
_URL_CRED = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]+:)([^@\s/]+)(@)")


def mask_pairs(text: str, keys: list[str]) -> str:
    """Mask the value in KEY=VALUE, "KEY": "VALUE" and KEY: VALUE (to the end
    of the line: "Authorization: Bearer x") for the env contract's keys and
    secret-looking names, and the password in scheme://user:password@host."""
    def sensitive(k: str) -> bool:
        return k in keys or bool(SENSITIVE.search(k))

    text = _JSON.sub(lambda m: m.group(1) + '"***"' if sensitive(m.group(2)) else m.group(0), text)
    text = _EQ.sub(lambda m: m.group(1) + m.group(2) + "***" if sensitive(m.group(1)) else m.group(0), text)
    text = _COLON.sub(lambda m: m.group(1) + m.group(2) + "***" if sensitive(m.group(1)) else m.group(0), text)
    return _URL_CRED.sub(lambda m: m.group(1) + "***" + m.group(3), text)
