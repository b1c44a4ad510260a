"""Run tasks on hosts: one SSH connection per host per run, hosts in a bounded
parallel pool, host-prefixed output, per-step ok/changed/skipped/failed, one
summary table, and a JSON run record under .fabship/runs/.

This is the one thin place where commands built elsewhere are executed (so it is
longer than most: Run, HostContext, output and the run record belong together).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import select
import socket
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

from .commands import Cmd, Secret, become, mask_text
from .errors import ConnectError, FabshipError, HostKeyError, LockError, StepFailed
from .hostdata import HostData
from .output import JSON_FORMAT, JSON_VERSION, exit_code_for, register_run, result_of
from .table import print_table  # noqa: F401  (its home since issue 17: `fab hosts` loads no runner)
from .step import Steps

OK, CHANGED, SKIPPED, FAILED = "ok", "changed", "skipped", "failed"

# The exit code a timed-out command is reported with (as coreutils' timeout).
_EXIT_124 = re.compile(r"\bexit 124\b")

# A remote command running longer than this says so (and again every as long).
STILL_RUNNING_EVERY = 60.0

# The "running" run record is rewritten at most this often (Run.checkpoint).
CHECKPOINT_EVERY = 1.0

# After a command's exit status, how long its output may still take to reach EOF.
EXIT_EOF_GRACE = 1.0


@dataclass
class StepResult:
    name: str
    status: str
    message: str = ""
    duration: float = 0.0
    dry_run: bool = False

    def as_dict(self):
        return {"name": self.name, "status": self.status, "message": self.message,
                "duration": round(self.duration, 3), "dry_run": self.dry_run}


@dataclass
class RemoteResult:
    command: str
    stdout: str
    stderr: str
    exited: int
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exited == 0

    def tail(self, n: int = 20) -> str:
        text = (self.stderr.strip() or self.stdout.strip())
        return "\n".join(text.splitlines()[-n:])


class Output:
    """Thread-safe, host-prefixed printing with secret masking."""

    def __init__(self, stream=None, secrets: list | None = None):
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()
        self.secrets = secrets if secrets is not None else []

    def line(self, prefix: str, text: str, stream=None) -> None:
        text = mask_text(str(text), self.secrets)
        with self.lock:
            out = stream or self.stream
            for ln in (text.splitlines() or [""]):
                out.write(f"[{prefix}] {ln}\n" if prefix else f"{ln}\n")
            out.flush()


class PrefixWriter(io.TextIOBase):
    """A stream for invoke's out_stream that prefixes each line with the host."""

    def __init__(self, out: Output, prefix: str):
        self.out, self.prefix, self.buf = out, prefix, ""

    def write(self, s):
        self.buf += s
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            self.out.line(self.prefix, line)
        return len(s)

    def flush(self):
        if self.buf:
            self.out.line(self.prefix, self.buf)
            self.buf = ""


class HostContext(Steps):
    """Everything one host's steps need: its connection, facts, options and
    the record of what ran. Steps describe a Change and call apply() (or
    run() for what is no change: reads, probes) and report results."""

    def __init__(self, run: "Run", host):
        self.run_ = run
        self.host = host
        self.steps: list[StepResult] = []
        self.commands: list[str] = []
        self.conn = None
        self.facts: dict = {}
        self.data = HostData()   # what this host's steps hand each other (declared fields)
        self.started = time.monotonic()
        self.error: str | None = None
        self.details: str = ""
        self.status: str | None = None
        self.note: str = ""
        self.timed_out: tuple[str, float] | None = None  # (step, limit) of a command that outlived its limit
        self.link_lost: str | None = None  # set by the keepalive watchdog: the host is not retried
        # why the host failed, for the exit code and --json: failed | lock_held | unreachable |
        # interrupted (None with an error: failed)
        self.reason: str | None = None
        self.reached = False  # a connection was opened once: losing it later is a failure, not "unreachable"

    # -- options -----------------------------------------------------------------
    @property
    def dry_run(self) -> bool:
        return self.run_.dry_run

    @property
    def inv(self):
        return self.run_.inv

    @property
    def verbose(self) -> int:
        return self.run_.verbose

    def say(self, text: str) -> None:
        self.run_.out.line(self.host.name, text)

    def debug(self, text: str, level: int = 1) -> None:
        if self.verbose >= level:
            self.say(text)

    # -- connection ------------------------------------------------------------------
    def connect(self):
        if self.link_lost:  # a cleanup step must not wait on a host whose link died
            raise ConnectError(self.link_lost)
        if self.conn is None:
            self.conn = self.run_.connect(self.host)
            self.reached = True
            # the run record exists from the first connection on, not only from the first recorded
            # step: a run killed inside its first step (bootstrap's packages) still leaves one
            self.run_.checkpoint()
            if self.inv.data["ssh"].get("wait") and not self.data.get("cloud_init_waited"):
                self.data["cloud_init_waited"] = True
                self._wait_cloud_init(float(self.inv.data["ssh"]["wait"]))
        return self.conn

    def _wait_cloud_init(self, wait: float) -> None:
        """ssh.wait: a host that just booted answers SSH before cloud-init has
        finished (packages, users, apt locks); wait for it where it exists."""
        from .commands import Raw

        probe = Raw("if command -v cloud-init >/dev/null 2>&1; then cloud-init status --wait >/dev/null 2>&1; "
                    "echo \"cloud-init $?\"; else echo none; fi")
        t0 = time.monotonic()
        r = self.run(Cmd(probe), check=False, root=False, timeout=max(60.0, wait), what="cloud-init status --wait")
        out = r.stdout.strip()
        if out == "none":
            return
        took = time.monotonic() - t0
        if r.timed_out:
            self.fail("cloud-init", f"still running after {max(60.0, wait):g}s (cloud-init status --wait)")
        if out in ("cloud-init 0", "cloud-init 2"):  # 2: done, with recoverable errors
            self.ok("cloud-init", f"done{' (with recoverable errors)' if out.endswith('2') else ''}"
                                  f" after waiting {took:.0f}s")
        else:  # it failed: say so, the steps that follow check what they need
            self.say(f"warning: cloud-init reports an error ({out or r.tail()}); carrying on")
            self.ok("cloud-init", "finished with an error (see `cloud-init status --long` on the host)")

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
            self.conn = None

    # -- running commands --------------------------------------------------------------
    def run(self, cmd: Cmd | str, *, stdin: bytes | str | Secret | None = None, check: bool = True,
            timeout: float | None = None, stream: bool | None = None, root: bool = True,
            what: str = "") -> RemoteResult:
        """Run one command on the host (as root through sudo when the SSH user
        is not root). Secrets go on stdin, never on the command line."""
        from paramiko import SSHException

        conn = self.connect()
        c = cmd if isinstance(cmd, Cmd) else Cmd(_raw(cmd))
        if root:
            c = become(c, self.host.user)
        text = c.render()
        self.commands.append(text)
        self.debug(f"$ {_short(text)}")
        if isinstance(stdin, Secret):
            stdin = stdin.reveal()
        if isinstance(stdin, str):
            stdin = stdin.encode()
        streaming = stream if stream is not None else self.verbose >= 2
        limit = timeout or self.inv.data["ssh"]["command_timeout"]
        label = what or _short(text, 120)
        try:
            with self._still_running(label, quiet=streaming):
                # a plain channel unless output streams (-vv): invoke's runner costs ~4 ms of CPU
                # per command in its reader threads and polling, and stdin gets EOF
                if stdin is not None or not streaming:
                    res = self._run_with_stdin(conn, text, b"" if stdin is None else stdin, limit)
                    if streaming:
                        for ln in (res.stdout + res.stderr).splitlines():
                            self.say(ln)
                else:
                    res = self._run_streamed(conn, text, limit, streaming)
        except (OSError, EOFError, SSHException) as e:  # SSHException: "SSH session not active"
            raise ConnectError(self.link_lost or f"{self.host.address}: connection lost: {e}") from None
        if self.link_lost:  # the watchdog closed the transport under this command
            raise ConnectError(self.link_lost)
        if res.timed_out:
            # kept until reported: a caller with check=False that fails the step
            # itself says "exit 124"; explain_timeout() turns that into the timeout
            self.timed_out = (label, limit)
        if res.timed_out and check:
            # Say what the host was doing: the stuck command may still be running there.
            self.timed_out = None
            raise StepFailed(f"{label} timed out after {limit:g}s (ssh.command_timeout or the step's limit)",
                             self.mask(f"{res.tail()}\nprocesses on the host now:\n{self._process_snapshot()}"))
        if check and not res.ok:
            raise StepFailed(f"{label} failed (exit {res.exited})", self.mask(res.tail()))
        return res

    @contextlib.contextmanager
    def _still_running(self, label: str, quiet: bool):
        """A command that takes long says so every STILL_RUNNING_EVERY seconds, so
        a slow mirror or a stuck postinst is visible while it happens."""
        done = threading.Event()
        t0 = time.monotonic()

        def tick():
            while not done.wait(STILL_RUNNING_EVERY):
                self.say(f"still running after {time.monotonic() - t0:.0f}s: {label}")

        if not quiet:
            threading.Thread(target=tick, daemon=True, name=f"still-running-{self.host.name}").start()
        try:
            yield
        finally:
            done.set()

    def explain_timeout(self, message: str, details: str = "") -> tuple[str, str]:
        """A step that fails with the `exit 124` of a command that outlived its
        limit (run with check=False, the caller reporting the exit code) says
        "timed out after Ns" and shows the host's newest processes, as a
        checked command does. Anything else is returned as it is."""
        if not self.timed_out or not _EXIT_124.search(message):
            return message, details
        _label, limit = self.timed_out
        self.timed_out = None
        message = _EXIT_124.sub(f"timed out after {limit:g}s", message)
        if "processes on the host now:" not in details:
            details = (details.rstrip("\n") + "\n" if details.strip() else "") + \
                f"processes on the host now:\n{self._process_snapshot()}"
        return message, self.mask(details)

    def _process_snapshot(self) -> str:
        """The host's newest processes (the stuck command and what it started),
        without kernel threads, on a fresh channel; best effort."""
        try:
            ps = ("ps --ppid 2 -p 2 --deselect -o pid,ppid,etime,args --sort=start_time 2>/dev/null"
                  " | tail -n 25 | cut -c1-160")
            r = self._run_with_stdin(self.connect(), ps, b"", 15)
            return r.stdout.rstrip() or "(ps printed nothing)"
        except Exception as e:  # the connection may be the thing that is stuck
            return f"(could not list processes: {e})"

    def _run_streamed(self, conn, text: str, limit: float, streaming: bool) -> RemoteResult:
        from invoke.exceptions import CommandTimedOut

        kwargs = dict(hide=not streaming, warn=True, pty=False, in_stream=False, timeout=limit)
        if streaming:
            kwargs["out_stream"] = PrefixWriter(self.run_.out, self.host.name)
            kwargs["err_stream"] = PrefixWriter(self.run_.out, self.host.name)
        t0 = time.monotonic()
        try:
            r = conn.run(text, **kwargs)
        except CommandTimedOut as e:
            return RemoteResult(text, e.result.stdout, e.result.stderr, 124, timed_out=True)
        if r.exited == -1 and time.monotonic() - t0 >= limit:
            # invoke's timer closed the channel but its own bookkeeping failed
            # (the close raised in the timer thread): still a timeout, not "exit -1"
            return RemoteResult(text, r.stdout, r.stderr, 124, timed_out=True)
        return RemoteResult(text, r.stdout, r.stderr, r.exited)

    @staticmethod
    def _run_with_stdin(conn, text: str, data: bytes, limit: float) -> RemoteResult:
        """Feed bytes to a command's stdin on a plain channel of the run's
        connection. invoke's stdin pump reads one byte per 10 ms and decodes
        each byte alone, which is slow and breaks multi-byte UTF-8."""
        chan = conn.client.get_transport().open_session(timeout=60)
        try:
            chan.settimeout(limit)
            chan.exec_command(text)
            chan.sendall(data)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + limit
            # wait for events, not by polling (50 wakeups a second per command in flight were a
            # fleet's CPU): the channel's fileno is readable on stdout or stderr data and at EOF;
            # after EOF only the exit status is to come, and after the exit status the output is read
            # until EOF (a child left behind that keeps it open: EXIT_EOF_GRACE).
            eof_by = 0.0
            while True:
                if chan.recv_ready():
                    out += chan.recv(65536)
                elif chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                elif chan.exit_status_ready():
                    # sshd may send the exit status before the last of the output (seen on hosts at
                    # load 20: a fact script's output cut short): read on until EOF, or give a
                    # child left behind that keeps the output open EXIT_EOF_GRACE
                    if chan.eof_received:
                        break
                    now = time.monotonic()
                    eof_by = eof_by or now + EXIT_EOF_GRACE
                    if now >= eof_by:
                        break
                    select.select([chan], [], [], min(eof_by - now, 0.2))
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return RemoteResult(text, out.decode(errors="replace"), err.decode(errors="replace"), 124,
                                            timed_out=True)
                    if chan.eof_received:
                        chan.status_event.wait(min(left, 0.2))
                    else:
                        select.select([chan], [], [], min(left, 0.2))
            # drain anything that raced with the exit status
            while chan.recv_ready():
                out += chan.recv(65536)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            return RemoteResult(text, out.decode(errors="replace"), err.decode(errors="replace"),
                                chan.recv_exit_status())
        finally:
            chan.close()

    def mask(self, text: str) -> str:
        return mask_text(text, self.run_.secrets)

    # -- results ---------------------------------------------------------------------------
    def record(self, name: str, status: str, message: str = "", started: float | None = None) -> StepResult:
        dur = time.monotonic() - started if started else 0.0
        if status == FAILED and self.timed_out and _EXIT_124.search(message):
            message = _EXIT_124.sub(f"timed out after {self.timed_out[1]:g}s", message)  # see explain_timeout
        sr = StepResult(name, status, self.mask(message), dur, self.dry_run and status == CHANGED)
        self.steps.append(sr)
        self.run_.checkpoint()
        shown = {CHANGED: "would change" if self.dry_run else "changed"}.get(status, status)
        if status != OK or self.verbose >= 1:
            self.say(f"{shown:<12} {name}" + (f": {sr.message}" if sr.message else ""))
        return sr

    def ok(self, name: str, message: str = "") -> StepResult:
        return self.record(name, OK, message)

    def skipped(self, name: str, why: str) -> StepResult:
        return self.record(name, SKIPPED, why)

    def changed(self, name: str, message: str = "") -> StepResult:
        return self.record(name, CHANGED, message)

    # apply(step, Change) and change(step, msg, *cmds): tasks/core/step.py (Steps), the one
    # implementation of a step's dry-run, timing, remote call, exit mapping and record

    def fail(self, name: str, message: str, details: str = ""):
        message, details = self.explain_timeout(message, details)
        self.record(name, FAILED, message)
        raise StepFailed(f"{name}: {message}", details)

    @property
    def changed_count(self) -> int:
        return sum(1 for s in self.steps if s.status == CHANGED)

    def failure_reason(self) -> str | None:
        """None when the host did not fail, else why (tasks/core/output.py REASON_CODES)."""
        if self.outcome() not in (FAILED, "unreachable"):
            return None
        if self.reason:
            return self.reason
        return "unreachable" if self.status == "unreachable" and not self.reached else FAILED

    def outcome(self) -> str:
        if self.status:
            return self.status
        if self.error:
            return FAILED
        return CHANGED if self.changed_count else OK


def _raw(text: str):
    from .commands import Raw

    return Raw(text)


def _short(text: str, n: int = 200) -> str:
    one = " ".join(text.split())
    return one if len(one) <= n else one[: n - 3] + "..."


class Run:
    """One `fab TASK` invocation over an inventory's hosts."""

    def __init__(self, task: str, inv, hosts: list, *, parallel: int = 10, dry_run: bool = False,
                 verbose: int = 0, accept_new_host_keys: bool = False, out: Output | None = None,
                 options: dict | None = None):
        self.task = task
        self.inv = inv
        self.hosts = hosts
        self.parallel = max(1, int(parallel or 1))
        self.dry_run = dry_run
        self.verbose = int(verbose or 0)
        self.accept_new = accept_new_host_keys
        self.secrets: list[Secret] = []
        self.out = out or Output(secrets=self.secrets)
        self.out.secrets = self.secrets
        self.options = options or {}
        self.contexts: dict[str, HostContext] = {h.name: HostContext(self, h) for h in hosts}
        self.started_at = datetime.now(timezone.utc)
        self.t0 = time.monotonic()
        self.extra: dict = {}
        # set when the run is being stopped (Ctrl-C, SIGTERM, a fleet failure): long waits
        # (health checks, lock waits) give up; deploy's Fleet swaps it around its cleanup
        self.cancel = threading.Event()
        from .ssh import check_key_file, known_hosts_path

        self.key_file = check_key_file(inv, inv.data["ssh"].get("key_file"))
        self.known_hosts = known_hosts_path(inv)
        self._jumps: list = []  # open connections to the jump hosts, first hop first
        self._jump_lock = threading.Lock()
        register_run(self)  # the task boundary reports it (--json) and re-records its final exit code
        if inv.data["ssh"].get("via") == "ssm":  # every host has an instance id, before anything connects
            for h in hosts:
                ssm_instance_id(inv, h)

    def add_secrets(self, values: Iterable) -> None:
        for v in values:
            if isinstance(v, Secret) and v not in self.secrets:
                self.secrets.append(v)

    def connect(self, host):
        from .ssh import connect

        proxy, key_name = self.ssm_proxy(host)
        return connect(host, self.inv.data["ssh"], key_file=self.key_file, known_hosts=self.known_hosts,
                       accept_new=self.accept_new, notify=lambda m: self.out.line(host.name, m),
                       gateway=None if proxy else self.jump_connection(host),
                       on_dead=lambda m: self._link_lost(host, m), proxy_argv=proxy, key_name=key_name)

    def ssm_proxy(self, host) -> tuple[list | None, str | None]:
        return ssm_proxy_of(self.inv, host)

    def _link_lost(self, host, message: str) -> None:
        ctx = self.contexts.get(host.name)
        if ctx is not None:
            ctx.link_lost = message
        self.out.line(host.name, message)

    def jump_connection(self, host):
        """The connection to the last hop of `ssh.jump_host`, opened once per run
        (each hop through the one before) and shared by every host's connection
        (each is a channel through it); every hop is host-key checked like a host."""
        from .ssh import connect, parse_jump_hosts

        ssh = self.inv.data["ssh"]
        hops = parse_jump_hosts(ssh.get("jump_host"), ssh["user"])
        if not hops:
            return None
        with self._jump_lock:
            if not self._jumps or not all(c.is_connected for c in self._jumps):
                self._close_jumps()
                gateway = None
                for hop in hops:
                    try:
                        gateway = connect(hop, ssh, key_file=self.key_file, known_hosts=self.known_hosts,
                                          accept_new=self.accept_new, notify=lambda m: self.out.line(host.name, m),
                                          gateway=gateway, on_dead=lambda m, hop=hop: self._jump_lost(hop, m))
                    except (ConnectError, HostKeyError) as e:
                        self._close_jumps()
                        raise type(e)(f"jump host {hop}: {e}") from None
                    self._jumps.append(gateway)
            return self._jumps[-1]

    def _jump_lost(self, hop, message: str) -> None:
        """Every host goes through the bastion: all of them lost their link."""
        for h in self.hosts:
            self.contexts[h.name].link_lost = f"jump host {hop}: {message}"
        self.out.line("", f"jump host {hop}: {message}")

    def _close_jumps(self) -> None:
        for c in reversed(self._jumps):
            c.close()
        self._jumps = []

    def ctx(self, host) -> HostContext:
        return self.contexts[host.name]

    def each(self, fn: Callable[[HostContext], object], hosts: list | None = None,
             parallel: int | None = None) -> dict[str, HostContext]:
        """Run fn(ctx) for each host in a bounded pool. A host's failure is
        recorded on its context, never raised: the summary reports it."""
        targets = hosts if hosts is not None else self.hosts
        width = min(parallel or self.parallel, max(1, len(targets)))

        def one(h):
            c = self.contexts[h.name]
            try:
                fn(c)
            except (HostKeyError, ConnectError) as e:
                c.error = self.mask_text(str(e))
                c.status = "unreachable"
                c.reason = "failed" if c.reached else "unreachable"
                self.out.line(h.name, f"unreachable  {c.error}")
            except StepFailed as e:
                msg, details = c.explain_timeout(e.message, e.details or "")
                c.error = self.mask_text(msg)
                c.details = self.mask_text(details)
                self.out.line(h.name, f"FAILED       {c.error}")
                if c.details:
                    for ln in c.details.splitlines()[-40:]:
                        self.out.line(h.name, f"  | {ln}")
            except FabshipError as e:
                c.error = self.mask_text(str(e))
                if isinstance(e, LockError):
                    c.reason = "lock_held"
                self.out.line(h.name, f"FAILED       {c.error}")
            except KeyboardInterrupt:
                c.error = "interrupted"
                c.reason = "interrupted"
                raise
            except Exception as e:  # a bug: keep the traceback in the run record only
                c.error = self.mask_text(f"internal error: {type(e).__name__}: {e}")
                c.details = self.mask_text(traceback.format_exc())
                self.out.line(h.name, f"FAILED       {c.error}")
                if self.verbose >= 1:
                    for ln in c.details.splitlines():
                        self.out.line(h.name, f"  | {ln}")
            return c

        if width == 1 or len(targets) <= 1:
            for h in targets:
                one(h)
        else:
            with ThreadPoolExecutor(max_workers=width, thread_name_prefix="fabship") as pool:
                list(pool.map(one, targets))
        return {h.name: self.contexts[h.name] for h in targets}

    def mask_text(self, text: str) -> str:
        return mask_text(text, self.secrets)

    def close(self) -> None:
        with self._checkpoint_lock:  # a checkpoint being written ends first; a pending one never comes
            self._closed = True   # the final record follows: no checkpoint may replace it
            if self._checkpoint_timer is not None:
                self._checkpoint_timer.cancel()
        for c in self.contexts.values():
            c.close()
        self._close_jumps()

    _checkpoint_lock = threading.Lock()
    _checkpoint_at = float("-inf")
    _checkpoint_timer = None

    def checkpoint(self) -> None:
        """A run killed by SIGKILL (or a lost machine) never reaches finish():
        keep its record on disk from the first step on, result "running" with
        the steps so far, at the path the final record then replaces. Best
        effort: a checkpoint must never fail a step.

        Written at once when none was for CHECKPOINT_EVERY seconds, else once
        that much later (a timer): every host's every step rewriting the whole
        record cost O(hosts^2) (a fifth of a 100-host bootstrap's CPU); the file
        is never more than CHECKPOINT_EVERY behind the run."""
        with self._checkpoint_lock:
            if getattr(self, "_closed", False):
                return
            wait = self._checkpoint_at + CHECKPOINT_EVERY - time.monotonic()
            if wait > 0:
                if self._checkpoint_timer is None:
                    self._checkpoint_timer = threading.Timer(wait, self._checkpoint_due)
                    self._checkpoint_timer.daemon = True
                    self._checkpoint_timer.start()
                return
            self._write_checkpoint()

    def _checkpoint_due(self) -> None:
        with self._checkpoint_lock:
            self._checkpoint_timer = None
            if not getattr(self, "_closed", False):
                self._write_checkpoint()

    def _write_checkpoint(self) -> None:
        """Under _checkpoint_lock."""
        self._checkpoint_at = time.monotonic()
        try:
            rec = {"task": self.task, "inventory": str(self.inv.path), "started": self.started_at.isoformat(),
                   "duration": round(time.monotonic() - self.t0, 3), "dry_run": self.dry_run,
                   "result": "running", "pid": os.getpid(), "control_host": socket.gethostname(),
                   "user": os.environ.get("USER") or os.environ.get("LOGNAME") or "",
                   "hosts": {n: {"address": c.host.address, "steps": [s.as_dict() for s in c.steps]}
                             for n, c in self.contexts.items()}}
            text = self.mask_text(json.dumps(rec, indent=2, default=str))
            p = self.record_path()
            tmp = p.with_name(f".{p.name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, p)   # a reader never sees half a record
        except Exception:
            pass

    # -- reporting ---------------------------------------------------------------------
    def failed_hosts(self) -> list[str]:
        return [n for n, c in self.contexts.items() if c.outcome() in (FAILED, "unreachable")]

    def summary(self, columns: Callable[[HostContext], str] | None = None, title: str = "") -> None:
        rows = []
        for h in self.hosts:
            c = self.contexts[h.name]
            ok = sum(1 for s in c.steps if s.status == OK)
            ch = c.changed_count
            sk = sum(1 for s in c.steps if s.status == SKIPPED)
            fl = sum(1 for s in c.steps if s.status == FAILED) or (1 if c.error else 0)
            note = columns(c) if columns else (c.note or "")
            if c.error:
                note = (note + "; " if note else "") + c.error
            rows.append([h.name, h.address, c.outcome().upper() if c.error else c.outcome(), str(ok),
                         str(ch), str(sk), str(fl), f"{time.monotonic() - c.started:.1f}s"
                         if not c.steps else f"{sum(s.duration for s in c.steps):.1f}s", _short(note, 100)])
        head = ["HOST", "ADDRESS", "RESULT", "OK", "CHANGED" if not self.dry_run else "WOULD", "SKIPPED",
                "FAILED", "TIME", "NOTE"]
        print_table(head, rows, self.out, title=title or f"{self.task}{' (dry run)' if self.dry_run else ''}"
                    f" on {len(self.hosts)} host(s) in {time.monotonic() - self.t0:.1f}s")

    def record_path(self) -> Path:
        from .paths import project_root

        d = Path(os.environ.get("FABSHIP_RUNS_DIR") or project_root() / ".fabship" / "runs")
        d.mkdir(parents=True, exist_ok=True)
        stamp = self.started_at.strftime("%Y%m%dT%H%M%S")
        return d / f"{stamp}-{self.task}-{os.getpid()}.json"

    def exit_code(self) -> int:
        """0, or the code of the most severe reason a host failed for (tasks/core/output.py)."""
        return exit_code_for(r for r in (c.failure_reason() for c in self.contexts.values()) if r)

    def document(self, exit_code: int | None = None, message: str | None = None) -> dict:
        """The run as the JSON document of `--json` (tasks/core/output.py); no secret."""
        code = self.exit_code() if exit_code is None else exit_code
        serving = self.extra.get("serving") if isinstance(self.extra.get("serving"), dict) else {}
        doc = {
            "format": JSON_FORMAT,
            "version": JSON_VERSION,
            "task": self.task,
            "inventory": str(self.inv.path),
            "inventory_files": self.inv.files,
            "started": self.started_at.isoformat(),
            "duration": round(time.monotonic() - self.t0, 3),
            "dry_run": self.dry_run,
            "exit_code": code,
            "result": result_of(code),
            "message": message,
            "hosts": {},
            "releases": {"before": {}, "after": {}},
            "failures": [],
            "extra": self.extra,
        }
        for n, c in self.contexts.items():
            before = _release_before(c)
            # after: what deploy/rollback read back at the end (their "releases now serving")
            after = before if self.dry_run else (serving.get(n) or None)
            reason = c.failure_reason()
            failed_steps = [s.as_dict() for s in c.steps if s.status == FAILED]
            doc["hosts"][n] = {
                "address": c.host.address,
                "result": c.outcome(),
                "reason": reason,
                "changed": c.changed_count,
                "duration": round(sum(s.duration for s in c.steps), 3),
                "failures": failed_steps or ([{"name": "host", "message": c.error}] if c.error else []),
                "error": c.error,
                "steps": [s.as_dict() for s in c.steps],
                "note": c.note,
                "release_before": before,
                "release_after": after,
            }
            doc["releases"]["before"][n] = before
            doc["releases"]["after"][n] = after
            if reason:
                step = failed_steps[-1]["name"] if failed_steps else None
                doc["failures"].append({"host": n, "step": step, "reason": reason,
                                        "message": c.error or (failed_steps[-1]["message"] if failed_steps else "")})
        return doc

    def write_record(self, exit_code: int | None = None, message: str | None = None) -> Path | None:
        """The run record: the --json document plus what stays on this machine
        (options, who ran it, each host's remote commands and failure details)."""
        rec = self.document(exit_code, message)
        rec.update({
            "options": {k: v for k, v in self.options.items() if not isinstance(v, Secret)},
            "control_host": socket.gethostname(),
            "user": os.environ.get("USER") or os.environ.get("LOGNAME") or "",
        })
        for n, c in self.contexts.items():
            rec["hosts"][n].update({"details": c.details, "remote_commands": len(c.commands),
                                    "commands": c.commands})
        text = self.mask_text(json.dumps(rec, indent=2, default=str))
        try:
            p = getattr(self, "_record_path", None) or self.record_path()
            self._record_path = p  # a second write (the final exit code) replaces the first
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return p
        except OSError:
            return None

    def finish(self) -> int:
        """Write the record; return the exit code (tasks/core/output.py: 0, or
        1 failed, 3 lock held, 4 unreachable, 130 interrupted)."""
        self.close()
        self.write_record()
        return self.exit_code()


def ssm_proxy_of(inv, host) -> tuple[list | None, str | None]:
    """ssh.via: ssm: the host's proxy command (an argv) and the name its key is
    recorded under (its instance id: stable, unlike a private address); (None,
    None) otherwise. The Run connects through it; `fab verify --write-ssh-config`
    writes it as the host's ProxyCommand."""
    from .ssh import ssm_proxy_argv

    ssh = inv.data["ssh"]
    if ssh.get("via") != "ssm":
        return None, None
    iid = ssm_instance_id(inv, host)
    opts = ssh.get("ssm") or {}
    region = opts.get("region") or ((inv.data.get("hosts") or {}).get("ec2") or {}).get("region")
    return ssm_proxy_argv(iid, host.port, region=region, profile=opts.get("profile"),
                          document=opts.get("document") or "AWS-StartSSHSession"), iid


def ssm_instance_id(inv, host) -> str:
    """The EC2 instance id Session Manager targets: EC2 discovery's
    `instance-id` tag (a static host sets it in its tags)."""
    from .ssh import INSTANCE_ID

    iid = (host.tags or {}).get("instance-id", "")
    if not INSTANCE_ID.fullmatch(str(iid)):
        got = f"its instance-id tag is {iid!r}" if iid else "it has no instance-id tag"
        raise inv.error("ssh.via", f"host {host.name}: ssm needs the EC2 instance id, and {got} (EC2 discovery "
                                   f"sets it; a static host gives tags: {{instance-id: i-0123456789abcdef0}})")
    return str(iid)


def _release_before(ctx) -> str | None:
    """The release a host served before this run (deploy/rollback record it)."""
    prev = ctx.data.get("previous")
    if isinstance(prev, str):
        return prev or None
    st = ctx.data.get("state")
    cur = getattr(st, "current", None)
    return cur if isinstance(cur, str) and cur else None

