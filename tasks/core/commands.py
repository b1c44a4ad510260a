"""Commands are values: built from quoted parts, rendered in one place.

A `Cmd` is a list of parts. Plain strings are shell-quoted, `Raw` parts are
inserted as they are (operators such as `&&` or `>`), and `Secret` parts are
refused: secret values never go on a remote command line (they travel on
stdin instead), because a command line is visible in `ps` on the host.

`Secret` prints as `***` in str(), repr(), f-strings, logs, exceptions and
JSON; only `.reveal()` gives the value, and only the code that writes it to a
file's stdin calls that.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Iterable, Union

MASK = "***"


class Secret:
    """A value that masks itself everywhere it could be printed."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = "" if value is None else str(value)

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return MASK

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return MASK

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other) -> bool:
        if isinstance(other, Secret):
            return self._value == other._value
        return NotImplemented

    def __hash__(self) -> int:
        return hash(("secret", self._value))

    def __reduce__(self):
        # Pickling or deep-copying into a run record must not carry the value.
        raise TypeError("Secret values cannot be serialised")


@dataclass(frozen=True)
class Raw:
    """A shell fragment inserted unquoted: operators, redirections, globs."""

    text: str

    def __str__(self) -> str:
        return self.text


Part = Union[str, int, Raw, "Cmd"]


def quote(value) -> str:
    if isinstance(value, Secret):
        raise ValueError("refusing to put a secret value on a command line")
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Cmd):
        return value.render()
    return shlex.quote(str(value))


class Cmd:
    """A shell command built from parts; `render()` is what runs on the host."""

    __slots__ = ("parts", "description")

    def __init__(self, *parts: Part, description: str = ""):
        flat: list = []
        for p in parts:
            if isinstance(p, (list, tuple)):
                flat.extend(p)
            else:
                flat.append(p)
        for p in flat:
            if isinstance(p, Secret):
                raise ValueError("refusing to put a secret value on a command line")
        self.parts = flat
        self.description = description

    def render(self) -> str:
        return " ".join(quote(p) for p in self.parts)

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        return f"Cmd({self.render()!r})"

    def __eq__(self, other) -> bool:
        if isinstance(other, Cmd):
            return self.render() == other.render()
        if isinstance(other, str):
            return self.render() == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.render())

    def __and__(self, other: "Cmd") -> "Cmd":
        return and_then(self, other)


def sh(text: str, *args, **kwargs) -> Cmd:
    """A command from a format string whose `{}` fields are quoted values.

    sh("install -d -m {} -- {}", "0755", path) -> install -d -m 0755 -- '/opt/a b'
    """
    q = [quote(a) for a in args]
    qk = {k: quote(v) for k, v in kwargs.items()}
    return Cmd(Raw(text.format(*q, **qk)))


def and_then(*cmds: Cmd) -> Cmd:
    parts: list = []
    for i, c in enumerate(c for c in cmds if c is not None):
        if i:
            parts.append(Raw("&&"))
        parts.append(Raw(c.render() if isinstance(c, Cmd) else str(c)))
    return Cmd(*parts)


def script(lines: Iterable[Union[Cmd, str]], *, strict: bool = True) -> Cmd:
    """Join commands into one remote shell script (one round trip)."""
    body = "\n".join(c.render() if isinstance(c, Cmd) else c for c in lines)
    if strict:
        body = "set -eu\n" + body
    return Cmd("sh", "-c", body)


def as_user(user: str, cmd: Cmd) -> Cmd:
    """Run `cmd` as another user (e.g. the app user for builds)."""
    return Cmd("runuser", "-u", user, "--", "sh", "-c", cmd.render())


def become(cmd: Cmd, login_user: str) -> Cmd:
    """Wrap for root when the SSH user is not root (ec2-user on AL2023)."""
    if login_user == "root":
        return cmd
    return Cmd("sudo", "-n", "-H", "--", "sh", "-c", cmd.render())


def mask_text(text: str, secrets: Iterable[Secret]) -> str:
    """Defence in depth: replace any known secret value that shows up in output."""
    for s in secrets:
        v = s.reveal()
        if v and len(v) >= 3:
            text = text.replace(v, MASK)
    return text
