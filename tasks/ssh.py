"""The SSH layer on fabric's Connection, with real host key checking.

Fabric 3 sets paramiko's AutoAddPolicy and loads no known_hosts: that accepts
any key, including an attacker's. Here every connection loads the inventory's
known_hosts and refuses unknown keys (StrictPolicy) unless the operator opts
in with --accept-new-host-keys (AcceptNewPolicy, trust on first use, which
records the key). A *changed* key is always refused: paramiko raises
BadHostKeyException when a loaded key differs, whatever the policy.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import paramiko
from fabric import Connection

from .errors import ConfigError, ConnectError, HostKeyError

_known_hosts_lock = threading.Lock()

# paramiko's transport thread logs a failed handshake (say, a port that closes
# before the banner) with a full traceback; with no handler configured Python
# prints it to stderr. fabship reports the host as unreachable in one line.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


class StrictPolicy(paramiko.MissingHostKeyPolicy):
    def __init__(self, known_hosts: Path, port: int):
        self.known_hosts = known_hosts
        self.port = port

    def missing_host_key(self, client, hostname, key):
        raise HostKeyError(
            f"{hostname}: host key not in {self.known_hosts} ({key.get_name()} {fingerprint(key)}); "
            f"refusing to connect. To trust it, check the fingerprint out of band, then re-run with "
            f"--accept-new-host-keys (or: ssh-keyscan -p {self.port} {hostname.strip('[]').split(']:')[0]} "
            f">> {self.known_hosts})")


class AcceptNewPolicy(paramiko.MissingHostKeyPolicy):
    """Trust on first use: record the new key in the inventory's known_hosts."""

    def __init__(self, known_hosts: Path, notify=None):
        self.known_hosts = known_hosts
        self.notify = notify

    def missing_host_key(self, client, hostname, key):
        client.get_host_keys().add(hostname, key.get_name(), key)
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        with _known_hosts_lock:
            self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            with os.fdopen(fd, "a") as f:
                f.write(line)
        if self.notify:
            self.notify(f"recorded new host key {key.get_name()} {fingerprint(key)} in {self.known_hosts}")


def check_key_file(inv, key_file: str | None) -> str | None:
    """Fail before connecting when the key file is missing or unreadable."""
    if not key_file:
        return None
    p = Path(key_file).expanduser()
    if not p.is_absolute():
        p = (inv.path.parent.parent / p) if not (Path.cwd() / p).exists() else Path.cwd() / p
    try:
        with open(p, "rb"):
            pass
    except OSError as e:
        raise ConfigError(inv.file_of("ssh.key_file"), "ssh.key_file", f"cannot read {p}: {e.strerror}") from None
    return str(p)


def known_hosts_path(inv) -> Path:
    raw = inv.data["ssh"]["known_hosts"]
    p = Path(raw).expanduser()
    if not p.is_absolute():
        p = Path.cwd() / p
    return p


@dataclass(frozen=True)
class JumpHost:
    """A bastion, from `ssh.jump_host` ([user@]host[:port], as for ssh -J)."""
    address: str
    user: str
    port: int

    @property
    def target(self) -> str:
        """user@host:port as ssh's ProxyJump takes it (an IPv6 address in brackets)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.user}@{host}:{self.port}"

    def __str__(self) -> str:
        return self.target.removesuffix(":22")


def parse_jump_hosts(spec: str | None, default_user: str) -> list[JumpHost]:
    """`ssh.jump_host` as the chain to go through, first hop first ("a,b" as ssh -J)."""
    hops = []
    for one in (spec or "").split(","):
        if not one.strip():
            continue
        user, _, rest = one.strip().rpartition("@")
        if rest.startswith("["):  # [v6]:port
            addr, _, port = rest[1:].partition("]")
            port = port.lstrip(":")
        else:
            addr, _, port = rest.partition(":")
        hops.append(JumpHost(addr, user or default_user, int(port or 22)))
    return hops


def describe_jumps(hops: list[JumpHost]) -> str:
    return " -> ".join(str(j) for j in hops)


def connect(host, ssh: dict, *, key_file: str | None, known_hosts: Path, accept_new: bool,
            notify=None, gateway: Connection | None = None) -> Connection:
    """Open one connection to `host`; every step of the run reuses it. With a
    `gateway` (an open connection to the jump host) it goes through that."""
    connect_kwargs = {"allow_agent": True}
    if key_file:
        connect_kwargs.update(key_filename=[key_file], look_for_keys=False)
    conn = Connection(
        host=host.address, user=host.user, port=host.port,
        connect_timeout=ssh["connect_timeout"], connect_kwargs=connect_kwargs,
        **({"gateway": gateway} if gateway is not None else {}),
    )
    client = conn.client
    if known_hosts.exists():
        try:
            client.load_host_keys(str(known_hosts))
        except (OSError, paramiko.SSHException) as e:
            raise HostKeyError(f"cannot read known_hosts {known_hosts}: {e}") from None
    client._host_keys_filename = None  # never let paramiko rewrite the file wholesale
    if accept_new:
        client.set_missing_host_key_policy(AcceptNewPolicy(known_hosts, notify))
    else:
        client.set_missing_host_key_policy(StrictPolicy(known_hosts, host.port))
    try:
        _open(conn)
    except HostKeyError:
        raise
    except paramiko.BadHostKeyException as e:
        raise HostKeyError(
            f"{host.address}: HOST KEY CHANGED: got {e.key.get_name()} {fingerprint(e.key)}, known_hosts "
            f"{known_hosts} has {fingerprint(e.expected_key)}. This may be an attack or a rebuilt host; "
            f"refusing. If the host was rebuilt, remove the old line (ssh-keygen -R "
            f"{known_hosts_name(host.address, host.port)} -f {known_hosts}) and re-run with "
            f"--accept-new-host-keys") from None
    except paramiko.AuthenticationException as e:
        raise ConnectError(f"{host.address}:{host.port}: authentication failed for user {host.user}: {e}") from None
    except paramiko.ChannelException as e:  # the jump host could not open the way
        raise ConnectError(f"{host.address}:{host.port}: the jump host could not reach it "
                           f"({e.text or e.code})") from None
    except (socket.timeout, TimeoutError):
        raise ConnectError(
            f"{host.address}:{host.port}: unreachable (no answer within {ssh['connect_timeout']}s)") from None
    except (OSError, paramiko.SSHException, EOFError) as e:
        msg = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise ConnectError(f"{host.address}:{host.port}: cannot connect: {msg}") from None
    return conn


def _open(conn: Connection) -> None:
    try:
        conn.open()
    except BaseException:
        conn.client.close()  # do not leave a half-open transport thread behind
        raise
