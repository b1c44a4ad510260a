"""Fault injectors for the fault suite (issue 18): each puts one fault on a
real sandbox host or on the `fab` process, at a point named by a step.

A point is where a fab run is when the fault lands:
  ("after", STEP)   the moment fab prints STEP's result line (-v prints every
                    step): fab is frozen there (SIGSTOP) so the fault lands at
                    that boundary, not somewhere after it;
  ("inside", STEP)  while STEP runs: the step's own remote process is seen on
                    the host (the build's `sleep` marker), then fab is frozen.
The steps to enumerate come from a clean run's record (`steps_of`), never
from a list kept by hand.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

from fab_cli import start_fab

from tasks.sandbox import fleet as sandbox

STEP_LINE = re.compile(r"^\[(?P<host>[^\]]+)\] (?P<status>ok|changed|skipped|failed)\s+(?P<step>[^:]+?)\s*(?::|$)")


def steps_of(record: dict, host: str) -> list[str]:
    """The step names of a clean run, in order (from its run record)."""
    return [s["name"] for s in record["hosts"][host]["steps"]]


class Fab:
    """A `fab` run we can freeze, signal and read while it runs. Output is
    read line by line on a thread; `on_step(step, fn)` calls fn the moment
    the step's result line arrives (before the next line is read)."""

    def __init__(self, *args: str, runs_dir: Path):
        self.args = args
        self.p = start_fab(*args, runs_dir=runs_dir, stderr=subprocess.STDOUT, start_new_session=True)
        self.lines: list[str] = []
        self.seen: list[str] = []       # step names, in the order their lines came
        self._hooks: dict[str, object] = {}
        self._lock = threading.Lock()
        self.t0 = time.monotonic()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.p.stdout:
            m = STEP_LINE.match(line)
            with self._lock:
                self.lines.append(line)
                hook = None
                if m:
                    self.seen.append(m["step"])
                    hook = self._hooks.pop(m["step"], None)
            if hook is not None:
                hook()

    def on_step(self, step: str, fn) -> None:
        with self._lock:
            if step in self.seen:   # already past it: act now
                pass
            else:
                self._hooks[step] = fn
                return
        fn()

    def freeze(self) -> None:
        self.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.signal(signal.SIGCONT)

    def signal(self, sig) -> None:
        if self.p.poll() is None:
            self.p.send_signal(sig)

    def wait(self, timeout: float = 300) -> tuple[int, str]:
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGCONT)
            self.p.kill()
            self.p.wait()
            self.reader.join(5)
            raise AssertionError(f"fab {' '.join(self.args)} still running after {timeout:.0f}s:\n"
                                 f"{self.output[-3000:]}") from None
        self.reader.join(10)
        return self.p.returncode, self.output

    @property
    def output(self) -> str:
        with self._lock:
            return "".join(self.lines)

    @property
    def pid(self) -> int:
        return self.p.pid


def at_point(fab: Fab, point: tuple[str, str], fleet, host: str, action, *, inside_probe: str = "",
             probe_cmd: str = "", timeout: float = 240) -> bool:
    """Freeze `fab` at `point`, run `action(fab)` (which injects the fault and
    may thaw or kill fab), and return whether the point was reached. Inside a
    step: `inside_probe` is a pgrep pattern of the step's remote process, or
    `probe_cmd` a host command that succeeds while the step runs."""
    kind, step = point
    probe_cmd = probe_cmd or f"pgrep -f {inside_probe} >/dev/null"
    hit = threading.Event()

    def fire():
        fab.freeze()
        hit.set()

    if kind == "after":
        fab.on_step(step, fire)
    elif kind == "inside":
        def probe():
            while fab.p.poll() is None and not hit.is_set():
                if fleet.run(host, probe_cmd, timeout=20)[0] == 0:
                    fire()
                    return
                time.sleep(0.3)
        threading.Thread(target=probe, daemon=True).start()
    else:
        raise ValueError(kind)
    deadline = time.monotonic() + timeout
    while not hit.wait(0.2):
        if fab.p.poll() is not None or time.monotonic() > deadline:
            return False
    action(fab)
    return True


# -- the faults -------------------------------------------------------------------------------

def kill(sig):
    """SIGKILL: nothing of fab runs again. SIGTERM: fab's own clean stop
    (delivered when it is thawed)."""
    def act(fab: Fab) -> None:
        fab.signal(sig)
        fab.thaw()
    act.__name__ = sig.name
    return act


def veth_of(name: str) -> str:
    """The bridge (control) side of the host's veth pair, from the sandbox state."""
    for h in (sandbox.load_state() or {}).get("hosts", []):
        if h.get("name") == name and h.get("veth"):
            return h["veth"]
    raise LookupError(f"no veth recorded for {name} in the sandbox state")


def set_link(name: str, up: bool) -> None:
    subprocess.run(["ip", "link", "set", "dev", veth_of(name), "up" if up else "down"], check=True)


def link_cut(host: str, seconds: float):
    """The host's veth down for `seconds` (packets vanish, no reset: a pulled
    cable), fab thawed meanwhile; the link comes back on a timer."""
    def act(fab: Fab) -> None:
        set_link(host, False)
        threading.Timer(seconds, set_link, (host, True)).start()
        fab.thaw()
    act.__name__ = f"link_cut_{seconds:g}s"
    return act


FILLER = ".fabship-fault-filler"


def fill_disk(fleet, host: str, mountpoint: str):
    """Fill the small filesystem at `mountpoint` to the last byte (ENOSPC for
    every later write there), then thaw fab."""
    def act(fab: Fab) -> None:
        fleet.run(host, f"dd if=/dev/zero of={mountpoint}/{FILLER} bs=64k 2>/dev/null; "
                        f"dd if=/dev/zero of={mountpoint}/{FILLER}.tail bs=512 2>/dev/null; sync; true")
        fab.thaw()
    act.__name__ = "enospc"
    return act


class SmallFs:
    """A small tmpfs mounted over `path` on the host, holding a copy of what
    was there (owners, modes, links kept), so the app runs on as before until
    the fault fills it. `close()` copies the state back to the real dir."""

    def __init__(self, fleet, host: str, path: str, size: str = "48m"):
        self.fleet, self.host, self.path = fleet, host, path
        self.save = f"/root/fault-save{path.replace('/', '-')}"
        self._sh(f"set -e; rm -rf {self.save}; mkdir -p {self.save}; cp -a {path}/. {self.save}/; "
                 f"mount -t tmpfs -o size={size} tmpfs {path}; cp -a {self.save}/. {path}/")

    def _sh(self, cmd: str) -> str:
        rc, out, err = self.fleet.run(self.host, cmd)
        assert rc == 0, f"{self.host}: {cmd!r} -> {rc}: {err or out}"
        return out

    def free(self) -> None:
        """The operator frees the space."""
        self._sh(f"rm -f {self.path}/{FILLER} {self.path}/{FILLER}.tail")

    def close(self) -> None:
        self.free()
        self._sh(f"set -e; rm -rf {self.save}; mkdir -p {self.save}; cp -a {self.path}/. {self.save}/; "
                 f"umount -l {self.path}; find {self.path} -mindepth 1 -maxdepth 1 -exec rm -rf {{}} +; "
                 f"cp -a {self.save}/. {self.path}/; rm -rf {self.save}")


def record_of(runs: Path, task: str, pid: int) -> dict | None:
    """The run record fab wrote for process `pid`, if any."""
    for p in runs.glob(f"*-{task}-{pid}.json"):
        try:
            return json.loads(p.read_text())
        except ValueError:
            return {"unreadable": str(p)}
    return None


def shape_link(name: str, rate: str | None) -> None:
    """Rate-limit what the control machine sends to the host (tbf on the
    bridge side of its veth), or lift the limit (rate None)."""
    dev = veth_of(name)
    if rate is None:
        subprocess.run(["tc", "qdisc", "del", "dev", dev, "root"], capture_output=True)
        return
    subprocess.run(["tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", "64kb",
                    "latency", "2s"], check=True)


class Reboot:
    """The host rebooted: `systemctl reboot` inside it (every unit stopped in
    order, sshd and fab's session with them, then systemd-nspawn exits on the
    container's reboot request), and `down` seconds later the same container
    booted again (tasks/sandbox/fleet.py power_cycle/boot_again). fab stays
    frozen until the host is down, so the reboot lands exactly at the point;
    then it runs on against a host that refuses connections until it is back."""

    def __init__(self, host: str, down: float = 5.0, command: str = "systemctl reboot", fleet=None,
                 settle: str = "", settle_for: float = 30.0):
        self.host, self.down, self.command = host, down, command
        # after the boot, `settle` (a host command) gets up to `settle_for` s to succeed: the
        # enabled instance listens some seconds after systemd calls the boot done, as on a VM
        self.fleet, self.settle, self.settle_for = fleet, settle, settle_for
        self.booted = threading.Event()
        self.error: BaseException | None = None
        self.__name__ = "reboot"

    def __call__(self, fab: Fab) -> None:
        quiet = lambda m: None  # noqa: E731
        self.fired = True
        try:
            # as on a VM, the shutdown waits up to systemd's 90 s for processes
            # that outlive SIGTERM (a build's runuser) before it kills them
            sandbox.power_cycle(self.host, self.command, timeout=150, out=quiet)
        finally:
            fab.thaw()

        def later():
            try:
                time.sleep(self.down)
                sandbox.boot_again(self.host, out=quiet)
            except BaseException as e:  # reported by wait_back
                self.error = e
            finally:
                self.booted.set()
        threading.Thread(target=later, daemon=True).start()

    def wait_back(self) -> None:
        """after_fault: the host is up again before anything is checked (nothing to wait for
        when fab never reached the point: the case reports that)."""
        if not getattr(self, "fired", False):
            return
        if not self.booted.wait(self.down + 120):
            raise AssertionError(f"{self.host} did not boot again")
        if self.error:
            raise AssertionError(f"{self.host} did not boot again: {self.error}")
        deadline = time.monotonic() + self.settle_for
        while self.settle and time.monotonic() < deadline:
            if self.fleet.run(self.host, self.settle, timeout=10)[0] == 0:
                break
            time.sleep(0.5)


def ensure_up(host: str) -> None:
    """After a reboot case that failed half-way: the host running again."""
    st = sandbox.load_state() or {}
    for h in st.get("hosts", []):
        if h["name"] == host:
            from tasks.sandbox.services import Proc
            if not Proc(h["pid"], h["start"]).alive():
                sandbox.boot_again(host, out=lambda m: None)
