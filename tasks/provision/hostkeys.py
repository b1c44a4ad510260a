"""Trusting a new instance's host key the way AWS documents it: cloud-init prints
the host keys and their fingerprints on the serial console
(-----BEGIN SSH HOST KEY FINGERPRINTS----- / -----BEGIN SSH HOST KEY KEYS-----),
and GetConsoleOutput returns it over the authenticated AWS API. The key the host
presents over SSH is recorded in the inventory's known_hosts only when it matches
one printed there; anything else (no block, another key) is refused.

The sandbox stand-in: moto's GetConsoleOutput returns a fixed sample without any
host keys, so the flow can read the console output from
$FABSHIP_STANDIN_CONSOLE_DIR/<instance private ip>.txt instead (written by the
test from the sandbox host's real key files). The seam only replaces where the
text comes from; parsing, comparing and refusing are the same code.
"""
from __future__ import annotations

import base64
import hashlib
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import HostKeyError

STANDIN_ENV = "FABSHIP_STANDIN_CONSOLE_DIR"

_FP_LINE = re.compile(r"(\d+)\s+(SHA256:[A-Za-z0-9+/]+=*|MD5:[0-9a-f:]+|(?:[0-9a-f]{2}:){15}[0-9a-f]{2})\s+.*?\((\w+)\)\s*$")
_KEY_LINE = re.compile(r"((?:ssh|ecdsa|sk)-[A-Za-z0-9@.\-]+)\s+(AAAA[A-Za-z0-9+/]+=*)")
# ssh key type -> the name cloud-init puts in parentheses
_TYPE_NAME = {"ssh-ed25519": "ED25519", "ssh-rsa": "RSA", "ssh-dss": "DSA", "ecdsa-sha2-nistp256": "ECDSA",
              "ecdsa-sha2-nistp384": "ECDSA", "ecdsa-sha2-nistp521": "ECDSA"}


@dataclass
class ConsoleKeys:
    fingerprints: list = field(default_factory=list)  # (TYPE, "SHA256:..." or md5)
    keys: list = field(default_factory=list)          # (ssh type, base64)

    def __bool__(self) -> bool:
        return bool(self.fingerprints or self.keys)


def _block(text: str, name: str) -> list[str]:
    lines, inside = [], False
    for raw in text.splitlines():
        if f"-----BEGIN {name}-----" in raw:
            inside, lines = True, []   # the newest block wins (a reboot prints it again)
            continue
        if f"-----END {name}-----" in raw:
            inside = False
            continue
        if inside:
            lines.append(raw)
    return lines


def parse_console(text: str) -> ConsoleKeys:
    """Both blocks, whatever prefixes the console puts before each line ("ec2: ", timestamps)."""
    out = ConsoleKeys()
    for line in _block(text, "SSH HOST KEY FINGERPRINTS"):
        m = _FP_LINE.search(line)
        if m:
            out.fingerprints.append((m.group(3).upper(), m.group(2)))
    for line in _block(text, "SSH HOST KEY KEYS"):
        m = _KEY_LINE.search(line)
        if m:
            out.keys.append((m.group(1), m.group(2)))
    return out


def sha256_fp(b64: str) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(base64.b64decode(b64)).digest()).decode().rstrip("=")


def md5_fp(b64: str) -> str:
    d = hashlib.md5(base64.b64decode(b64)).hexdigest()
    return ":".join(d[i:i + 2] for i in range(0, 32, 2))


def matches(console: ConsoleKeys, keytype: str, b64: str) -> bool:
    """The presented key is one the console printed (as a key, or by its fingerprint)."""
    if (keytype, b64) in console.keys:
        return True
    tname = _TYPE_NAME.get(keytype, keytype.upper())
    for t, fp in console.fingerprints:
        if t != tname:
            continue
        if fp.startswith("SHA256:") and fp.rstrip("=") == sha256_fp(b64):
            return True
        if fp.removeprefix("MD5:") == md5_fp(b64):
            return True
    return False


def presented_key(address: str, port: int, timeout: float = 10) -> tuple[str, str]:
    """The host key the SSH server offers (no authentication), as (type, base64)."""
    import paramiko

    sock = socket.create_connection((address, port), timeout=timeout)
    t = paramiko.Transport(sock)
    try:
        t.start_client(timeout=timeout)
        key = t.get_remote_server_key()
        return key.get_name(), key.get_base64()
    finally:
        t.close()
        sock.close()


def wait_for_ssh(address: str, port: int, timeout: float, say, every: float = 10) -> tuple[str, str]:
    """Poll until SSH answers with a host key (bounded; progress every `every` s)."""
    t0 = last = time.monotonic()
    error = "no answer"
    while True:
        try:
            return presented_key(address, port, timeout=min(10, max(1, timeout)))
        except Exception as e:  # refused, timed out, banner not yet sent: the host is still booting
            error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        now = time.monotonic()
        if now - t0 > timeout:
            raise HostKeyError(f"ssh {address}:{port}: no SSH answer within {timeout:.0f} s (last: {error}); "
                               "the instance exists: re-run fab provision to wait again")
        if now - last >= every:
            say(f"waiting for ssh on {address}:{port} ({now - t0:.0f}s, last: {error})")
            last = now
        time.sleep(2)


def console_text(ec2, instance_id: str, private_ip: str | None) -> str:
    standin = os.environ.get(STANDIN_ENV)
    if standin:
        p = Path(standin) / f"{private_ip}.txt"
        return p.read_text() if p.exists() else ""
    return ec2.get_console_output(InstanceId=instance_id, Latest=True).get("Output") or ""


def wait_for_console_keys(ec2, instance_id: str, private_ip: str | None, timeout: float, say,
                          every: float = 15) -> ConsoleKeys:
    """cloud-init prints the block late in the boot, and the API serves the console
    output with a delay: poll, bounded."""
    t0 = last = time.monotonic()
    while True:
        keys = parse_console(console_text(ec2, instance_id, private_ip))
        if keys:
            return keys
        now = time.monotonic()
        if now - t0 > timeout:
            raise HostKeyError(
                f"ec2 instance {instance_id}: its console output shows no SSH host key fingerprints after "
                f"{timeout:.0f} s; the host key cannot be checked, so it is not trusted (nothing written to "
                "known_hosts). Re-run fab provision later, or check the key out of band")
        if now - last >= every:
            say(f"waiting for the host key fingerprints in {instance_id}'s console output ({now - t0:.0f}s)")
            last = now
        time.sleep(3)


def record_if_matching(known_hosts: Path, name: str, keytype: str, b64: str, console: ConsoleKeys,
                       instance_id: str) -> str:
    """Write `name keytype b64` to known_hosts when the console vouches for it.
    Returns "ok" (already there) or "recorded"; raises HostKeyError otherwise."""
    fp = sha256_fp(b64)
    if not matches(console, keytype, b64):
        printed = ", ".join(f"{t} {f}" for t, f in console.fingerprints) or \
                  ", ".join(f"{t} {sha256_fp(k)}" for t, k in console.keys)
        raise HostKeyError(
            f"{name}: the host presents {keytype} {fp}, which is not among the host keys in "
            f"{instance_id}'s console output ({printed}); refusing to trust it (nothing written to {known_hosts})")
    existing = []
    if known_hosts.exists():
        for line in known_hosts.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and name in parts[0].split(","):
                existing.append((parts[1], parts[2]))
    if (keytype, b64) in existing:
        return "ok"
    if any(t == keytype for t, _ in existing):
        raise HostKeyError(
            f"{name}: {known_hosts} holds another {keytype} key for this address (an earlier instance?); "
            f"the console output vouches for {fp}: remove the old line (ssh-keygen -R '{name}' -f "
            f"{known_hosts}) and re-run")
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    with os.fdopen(fd, "a") as f:
        f.write(f"{name} {keytype} {b64}\n")
    return "recorded"


def console_block(keys: list[tuple[str, str]], prefix: str = "ec2: ") -> str:
    """What cloud-init prints for these (type, base64) keys: for the sandbox stand-in and tests."""
    lines = [f"{prefix}#############################################################",
             f"{prefix}-----BEGIN SSH HOST KEY FINGERPRINTS-----"]
    for t, b in keys:
        bits = {"ssh-ed25519": 256, "ecdsa-sha2-nistp256": 256}.get(t, 3072)
        lines.append(f"{prefix}{bits} {sha256_fp(b)} root@sandbox ({_TYPE_NAME.get(t, t.upper())})")
    lines += [f"{prefix}-----END SSH HOST KEY FINGERPRINTS-----",
              f"{prefix}#############################################################",
              "-----BEGIN SSH HOST KEY KEYS-----"]
    lines += [f"{t} {b} root@sandbox" for t, b in keys]
    lines.append("-----END SSH HOST KEY KEYS-----")
    return "\n".join(lines) + "\n"
