"""The SSH layer on fabric's Connection, with real host key checking.

Fabric 3 sets paramiko's AutoAddPolicy and loads no known_hosts: that accepts
any key, including an attacker's. Here every connection loads the inventory's
known_hosts and refuses unknown keys (StrictPolicy) unless the operator opts
in with --accept-new-host-keys (AcceptNewPolicy, trust on first use, which
records the key). A *changed* key is always refused: paramiko raises
BadHostKeyException when a loaded key differs, whatever the policy.

Nothing outside the inventory shapes a connection: fabric would otherwise read
~/.ssh/config, /etc/ssh/ssh_config and ~/.fabric.yaml, where a ProxyJump builds
a gateway with AutoAddPolicy (the bastion's key unchecked), a ProxyCommand runs
a local program, HostName redirects the host and ForwardAgent hands the agent
to root shells. Bastions come from `ssh.jump_host` (each hop checked like a
host); the agent is forwarded only with `ssh.forward_agent: true`.

A link that dies without a TCP reset (a cut cable, a dropped VPN) would leave
reads blocked for the kernel's ~15 minutes of retransmits: every connection
sends an SSH keepalive each `ssh.keepalive` seconds and is closed when
`ssh.dead_after` of them in a row go unanswered (Keepalive below), which ends
the blocked reads.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import logging
import os
import re
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko
from fabric import Config, Connection

from .errors import ConfigError, ConnectError, HostKeyError
from .paths import project_root

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


class KnownHosts:
    """A known_hosts file parsed once: paramiko's load_host_keys builds a key
    object for every line at every connection, so N hosts cost N x N parses
    (37 ms per connection with 500 lines). Kept per version of the file (inode,
    size, mtime): a key recorded by --accept-new-host-keys is seen by the next
    connection. Plain names are indexed; hashed (|1|) lines are matched as
    paramiko matches them."""

    _cache: dict = {}
    _lock = threading.Lock()

    def __init__(self, path: Path):
        self.hk = paramiko.HostKeys(str(path))
        self.plain: dict[str, list] = {}
        self.hashed = []
        for e in self.hk._entries:
            if e.key is None:  # a key type paramiko cannot read: as load_host_keys, ignored
                continue
            for name in e.hostnames:
                if name.startswith("|1|"):
                    self.hashed.append((name, e.key))
                else:
                    self.plain.setdefault(name, []).append(e.key)

    @classmethod
    def of(cls, path: Path) -> "KnownHosts":
        st = path.stat()
        sig = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
        with cls._lock:
            kh = cls._cache.get(sig)
            if kh is None:
                kh = cls(path)
                cls._cache.clear()  # one file per run: an older version is never asked for again
                cls._cache[sig] = kh
            return kh

    def keys_for(self, name: str) -> list:
        out = list(self.plain.get(name, ()))
        for hashed, key in self.hashed:
            if hmac.compare_digest(paramiko.HostKeys.hash_host(name, hashed), hashed):
                out.append(key)
        return out

    def load_into(self, client: paramiko.SSHClient, name: str) -> None:
        """What client.load_host_keys(file) would give the client for `name`."""
        keys, seen = client.get_host_keys(), set()
        for key in self.keys_for(name):
            if key.get_name() not in seen:  # paramiko's lookup: the first line of a type wins
                seen.add(key.get_name())
                keys.add(name, key.get_name(), key)


def check_key_file(inv, key_file: str | None) -> str | None:
    """Fail before connecting when the key file is missing or unreadable."""
    if not key_file:
        return None
    p = Path(key_file).expanduser()
    if not p.is_absolute():
        root = project_root()  # the ops repository, as for every relative path an inventory gives
        p = (inv.path.parent.parent / p) if not (root / p).exists() else root / p
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
        p = project_root() / p
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


# ssh.forward_agent / keepalive / dead_after when the inventory leaves them out
LINK_DEFAULTS = {"forward_agent": False, "keepalive": 15, "dead_after": 3}


def link_option(ssh: dict, key: str):
    value = ssh.get(key)
    return LINK_DEFAULTS[key] if value is None else value


def strict_config() -> Config:
    """A fabric Config that reads no file: no ssh_config (an explicit empty
    SSHConfig stops fabric loading one), no fabric.yaml (lazy)."""
    return Config(lazy=True, ssh_config=paramiko.SSHConfig())


# -- ssh.via: ssm -----------------------------------------------------------------------------

INSTANCE_ID = re.compile(r"i-[0-9a-f]{8,17}")


def ssm_proxy_argv(instance_id: str, port: int, region: str | None = None, profile: str | None = None,
                   document: str = "AWS-StartSSHSession", aws: str = "aws") -> list[str]:
    """The proxy command of a connection through Session Manager: the AWS CLI
    (and its session-manager-plugin) carries the SSH stream to the instance's
    own sshd, so host keys and SFTP work as over TCP. An argv, never a shell line."""
    if not INSTANCE_ID.fullmatch(instance_id or ""):
        raise ConfigError("ssh.via: ssm", "instance id", f"expected an EC2 instance id such as "
                                                         f"i-0123456789abcdef0, got {instance_id!r}")
    argv = [aws, "ssm", "start-session", "--target", instance_id, "--document-name", document,
            "--parameters", f"portNumber={int(port)}"]
    if region:
        argv += ["--region", region]
    if profile:
        argv += ["--profile", profile]
    return argv


class SessionProxy(paramiko.ProxyCommand):
    """paramiko's ProxyCommand from an argv (no shlex round trip), saying why
    the program could not run or exited (its stderr's last line)."""

    def __init__(self, argv: list[str]):  # noqa: super().__init__ would shlex.split a string
        self.cmd = list(argv)
        self.timeout = None
        try:
            self.process = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, bufsize=0)
        except OSError as e:
            raise ConnectError(f"ssh.via ssm: cannot run {self.cmd[0]}: {e.strerror} (the AWS CLI v2 and the "
                               f"session-manager-plugin must be installed on this machine)") from None

    def recv(self, size):
        """What the program wrote, as soon as there is some; b"" at its end (paramiko's
        loops on an exited program's empty reads until its timeout)."""
        import select

        fd = self.process.stdout.fileno()
        start = time.monotonic()
        while True:
            left = None if self.timeout is None else self.timeout - (time.monotonic() - start)
            if left is not None and left <= 0:
                raise socket.timeout()
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                try:
                    return os.read(fd, size)
                except OSError as e:
                    raise paramiko.ProxyCommandFailure(" ".join(self.cmd), e.strerror) from None

    def close(self):
        if self.process.poll() is None:  # paramiko's close would kill a pid already reaped
            try:
                self.process.terminate()
                self.process.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
        # kept for why_not(): the failure is reported after the close (which paramiko may call twice)
        self._stderr = (getattr(self, "_stderr", None) or "") + self._read_stderr()
        for f in (self.process.stdin, self.process.stdout, self.process.stderr):
            try:
                if f:
                    f.close()
            except OSError:
                pass

    def _read_stderr(self) -> str:
        """What the proxy wrote to stderr so far, without blocking (the CLI's
        plugin may still hold the pipe open)."""
        f = self.process.stderr
        if not f or f.closed:
            return ""
        try:
            os.set_blocking(f.fileno(), False)
            data = f.read() or b""
        except (OSError, ValueError):
            data = b""
        return data.decode(errors="replace")

    def why_not(self) -> str:
        """What the proxy said if it has exited (empty while it runs)."""
        if self.process.poll() is None:
            return ""
        err = getattr(self, "_stderr", None)
        if err is None:
            self.process.wait()
            err = self._read_stderr()
        lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
        return f"{self.cmd[0]} exited {self.process.returncode}" + (f": {lines[-1][:300]}" if lines else "")


class ProxiedConnection(Connection):
    """A Connection whose transport runs over a local program's stdin/stdout."""

    def __init__(self, *args, proxy_argv: list[str], **kwargs):
        # a non-empty gateway makes fabric's open() ask open_gateway() for the socket;
        # a fresh proxy per open: a reconnect never reuses an exited one
        super().__init__(*args, gateway=" ".join(proxy_argv), **kwargs)
        self.proxy_argv = list(proxy_argv)
        self.proxy: SessionProxy | None = None

    def open_gateway(self):
        self.proxy = SessionProxy(self.proxy_argv)
        return self.proxy


# -- opening a connection ----------------------------------------------------------------------

class Unanswered(ConnectError):
    """Nothing answered yet (refused, timeout, no SSH banner): a fresh host may still be booting."""


def connect(host, ssh: dict, *, key_file: str | None, known_hosts: Path, accept_new: bool,
            notify=None, gateway: Connection | None = None, on_dead=None,
            proxy_argv: list[str] | None = None, key_name: str | None = None) -> Connection:
    """Open one connection to `host`; every step of the run reuses it. With a
    `gateway` (an open connection to the jump host) it goes through that; with
    `proxy_argv` (ssh.via: ssm) over that program, the host key being checked
    under `key_name` (the instance id). `on_dead(message)` is called when the
    keepalive watchdog gives up on the link. With `ssh.wait` a host that does
    not answer yet is retried with backoff for up to that many seconds (a
    changed key, a refused key or a failed login is never retried)."""
    if key_name:
        host = dataclasses.replace(host, address=key_name)  # the name known_hosts records it under
    wait = float(ssh.get("wait") or 0)
    deadline = time.monotonic() + wait
    delay, tries = 1.0, 0
    while True:
        tries += 1
        try:
            return _connect_once(host, ssh, key_file=key_file, known_hosts=known_hosts, accept_new=accept_new,
                                 notify=notify, gateway=gateway, on_dead=on_dead, proxy_argv=proxy_argv)
        except Unanswered as e:
            left = deadline - time.monotonic()
            if not wait:
                raise
            if left <= 0:
                raise ConnectError(f"{e.message}; gave up after {wait:g}s of ssh.wait ({tries} attempts)") from None
            pause = min(delay, left)
            if notify:
                notify(f"waiting for SSH: {e.message}; attempt {tries + 1} in {pause:.0f}s "
                       f"({left:.0f}s left of ssh.wait={wait:g})")
            time.sleep(pause)
            delay = min(delay * 2, 10.0)


def _connect_once(host, ssh: dict, *, key_file: str | None, known_hosts: Path, accept_new: bool,
                  notify=None, gateway: Connection | None = None, on_dead=None,
                  proxy_argv: list[str] | None = None) -> Connection:
    connect_kwargs = {"allow_agent": True}
    if key_file:
        connect_kwargs.update(key_filename=[key_file], look_for_keys=False)
    common = dict(host=host.address, user=host.user, port=host.port, config=strict_config(),
                  connect_timeout=ssh["connect_timeout"], connect_kwargs=connect_kwargs,
                  forward_agent=bool(link_option(ssh, "forward_agent")))
    if proxy_argv:
        conn = ProxiedConnection(proxy_argv=proxy_argv, **common)
    else:
        # False, not None: None would make fabric look for a gateway in its config
        conn = Connection(**common, gateway=gateway if gateway is not None else False)
    client = conn.client
    if known_hosts.exists():
        try:
            KnownHosts.of(known_hosts).load_into(client, known_hosts_name(host.address, host.port))
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
        raise Unanswered(f"{host.address}:{host.port}: the jump host could not reach it "
                         f"({e.text or e.code})") from None
    except (socket.timeout, TimeoutError):
        raise Unanswered(
            f"{host.address}:{host.port}: unreachable (no answer within {ssh['connect_timeout']}s)"
            + _proxy_said(conn)) from None
    except (OSError, paramiko.SSHException, EOFError) as e:
        msg = getattr(e, "strerror", None) or str(e) or type(e).__name__
        if isinstance(e, paramiko.ssh_exception.NoValidConnectionsError) and e.errors:
            inner = next(iter(e.errors.values()))  # say "Connection refused", not paramiko's summary
            msg = getattr(inner, "strerror", None) or msg
        raise Unanswered(f"{host.address}:{host.port}: cannot connect: {msg}{_proxy_said(conn)}") from None
    quiet_idle(conn.client.get_transport())
    if link_option(ssh, "keepalive"):
        Keepalive(conn.client.get_transport(), float(link_option(ssh, "keepalive")),
                  int(link_option(ssh, "dead_after")), f"{host.address}:{host.port}", on_dead).start()
    return conn


# paramiko's transport thread wakes every 0.1 s (its socket timeout) to see whether
# it was closed: 0.4 ms of CPU per second per idle connection, seconds of CPU for a
# fleet whose connections wait for each other's hosts. Data wakes it at once
# whatever the timeout, and close() does not wait for it, so after the handshake
# it checks once a second.
IDLE_POLL = 1.0


def quiet_idle(transport) -> None:
    sock = getattr(transport, "sock", None)
    if isinstance(sock, socket.socket):  # a jump host's channel or a proxy command keeps its own
        sock.settimeout(IDLE_POLL)


CLOSED_CHECK = 2.0


class Keepalive(threading.Thread):
    """Send an SSH keepalive (a global request wanting a reply: any server
    answers one, if only with "failure") every `interval` seconds; when
    `dead_after` intervals in a row pass without an answer, close the transport,
    so commands blocked on it return (exit -1) and later ones fail at once."""

    def __init__(self, transport: paramiko.Transport, interval: float, dead_after: int, where: str, on_dead=None):
        super().__init__(daemon=True, name=f"keepalive-{where}")
        self.transport, self.interval, self.dead_after = transport, interval, max(1, dead_after)
        self.where, self.on_dead = where, on_dead
        self.dead: str | None = None

    def _probe(self, done: threading.Event) -> None:
        try:
            self.transport.global_request("keepalive@openssh.com", wait=True)
        except Exception:  # the transport closed under it: not an answer, the loop sees it
            return
        done.set()

    def run(self) -> None:
        t = self.transport
        answered: threading.Event | None = None  # the probe in flight
        missed, since = 0, time.monotonic()
        while t.is_active():
            if answered is None or answered.is_set():
                if answered is not None:
                    missed, since = 0, time.monotonic()
                answered = threading.Event()  # one probe in flight at a time
                threading.Thread(target=self._probe, args=(answered,), daemon=True,
                                 name=f"keepalive-probe-{self.where}").start()
            else:
                missed += 1
                if missed >= self.dead_after:
                    return self._give_up(missed, since)
            deadline = time.monotonic() + self.interval
            # checks for a closed transport every CLOSED_CHECK s: an idle fleet's keepalive threads
            # waking 2x a second cost more CPU than the keepalives themselves
            while t.is_active():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if answered.is_set():
                    if missed:  # a late answer: clear the misses now
                        break
                    time.sleep(min(left, CLOSED_CHECK))
                else:
                    answered.wait(min(left, CLOSED_CHECK))

    def _give_up(self, missed: int, since: float) -> None:
        t = self.transport
        if not t.is_active():  # closed on purpose (end of run, Ctrl-C): not a dead link
            return
        self.dead = (f"{self.where}: link lost: no answer to {missed} SSH keepalives in "
                     f"{time.monotonic() - since:.0f}s (ssh.keepalive={self.interval:g}, "
                     f"ssh.dead_after={self.dead_after})")
        if self.on_dead:
            try:
                self.on_dead(self.dead)
            except Exception:
                pass
        t.close()


def _proxy_said(conn) -> str:
    proxy = getattr(conn, "proxy", None)
    why = proxy.why_not() if proxy is not None else ""
    return f" (ssh.via ssm: {why})" if why else ""


def _open(conn: Connection) -> None:
    try:
        conn.open()
    except BaseException:
        conn.client.close()  # do not leave a half-open transport thread behind
        raise
