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

import re
from dataclasses import dataclass, field

from ..core.commands import Cmd, Secret, script, sh
from ..core.dotenv import SENSITIVE, sha256_hex
from ..core.step import CHANGED, OK, Change, Record

# -- parsing -----------------------------------------------------------------------


# -- rendering ---------------------------------------------------------------------


def docker_literal(inv) -> bool:
    """Whether the host's env file is read by `docker run --env-file` (kind
    docker), which takes every value literally: no quotes, no escapes, one line.
    systemd never reads that file, so it is written in docker's format."""
    return inv.get("app.kind") == "docker"


# -- remote commands ---------------------------------------------------------------


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


def put_in_place_lines(keep_condition: str) -> list[str]:
    """The tail of every versioned secret install: the filled "$tmp" synced,
    owned and moded before it is visible, the previous "$f" kept (when
    `keep_condition` holds), the rename, and the directory synced. One copy for
    install_cmd (bootstrap, rotate-env) and the release env snapshots."""
    return [
        'sync -- "$tmp" 2>/dev/null || sync',
        'chown -- "$owner:$group" "$tmp"',
        'chmod -- "$mode" "$tmp"',
        *keep_previous_lines(keep_condition),
        'mv -f -- "$tmp" "$f"',
        "trap - EXIT",
        'sync -- "$dir" 2>/dev/null || true',
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
    (tasks/resources/docker_files.py). With `sha` None (needs `size`), the expected
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
        *put_in_place_lines('[ "$old" != - ]'),
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
                     keep_previous: int | bool = True, step: str = "env file", preview=None) -> EnvInstall:
    """Install `content` as the host's env file (see install_cmd). Reports
    changed/ok on ctx with sha256 prefixes only; in dry-run runs nothing.
    `preview` (a str or a callable): the dry run's message instead of the
    install command (bootstrap names the keys that change)."""
    data = _content_bytes(content)
    want = sha256_hex(data)
    done = ctx.apply(step, Change(
        f"{path} would be written (sha256 {want[:12]}, {owner}:{group} {mode})",
        (install_cmd(path, owner, group, mode, want, keep_previous),), stdin=data,
        failed=f"installing {path} failed (exit {{exit}})", dry_message=preview, shown=() if preview else None,
        outcome=lambda res: [_installed(res.stdout, path, owner, group, mode, want)]))
    r = done.records[-1]   # a dry run's: "would change" (and no old hash: nothing was read)
    return EnvInstall(r.status == CHANGED, _old_sha(done.stdout), want, r.message if r.status == CHANGED else "")


def _old_sha(stdout: str) -> str | None:
    out = dict(ln.split("=", 1) for ln in stdout.splitlines() if "=" in ln)
    old = out.get("old")
    return None if old in (None, "-") else old


def _installed(stdout: str, path: str, owner: str, group: str, mode: str, want: str) -> Record:
    """install_cmd's output -> the step's record (sha256 prefixes only)."""
    if stdout.startswith("unchanged"):
        return Record(OK, f"{path} up to date (sha256 {want[:12]})")
    old = _old_sha(stdout)
    return Record(CHANGED, f"{path}: sha256 {old[:12] if old else '(new file)'} -> {want[:12]} "
                           f"({owner}:{group} {mode})")


# -- which env values to mask in output (one rule for every task) -------------


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
