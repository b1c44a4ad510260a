"""The local sandbox fleet: real Debian 12 hosts on this machine.

(Why one long module: it is developer tooling, never imported by the product, and
its parts -- image, network, hosts, state file, up/down -- share one plan and one
state lock; split, each would re-derive them.)

`fab sandbox.up [--count N] [--docker]` boots N systemd-nspawn containers (systemd
as PID 1, a real sshd), each in its own network namespace on a bridge
(10.231.0.1/24, hosts .11, .12, ...), each on an overlay over one cached
debootstrap image. Hosts have no route out: packages come through an
apt-cacher-ng on the bridge. Local stand-ins for the cloud (moto EC2, Pebble
ACME, a Docker registry) run on the bridge too (tasks/sandbox/services.py).

`fab sandbox.status` shows the fleet, `fab sandbox.down` removes all of it.

State lives in .fabship/sandbox/ (git-ignored); the base image and the package
cache in /var/cache/fabship/ (survive a fresh clone). Generated inventories:
inventories/sandbox.yaml and inventories/sandbox-ec2.yaml.

The plain functions sandbox_up / sandbox_down / sandbox_status / load_fleet are
the API for the pytest fixtures (tests/integration/conftest.py).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple


from ..core.errors import FabshipError
from . import services as svc
from .services import Proc, Service, ServiceContext, render, write_file

REPO = Path(__file__).resolve().parents[2]
STATE_DIR = REPO / ".fabship" / "sandbox"
LOCK_FILE = REPO / ".fabship" / "sandbox.lock"
INVENTORY = REPO / "inventories" / "sandbox.yaml"
EC2_INVENTORY = REPO / "inventories" / "sandbox-ec2.yaml"
# Survives a fresh clone; override only for experiments.
CACHE_DIR = Path(os.environ.get("FABSHIP_CACHE_DIR", "/var/cache/fabship"))

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "sudo",
                 "iproute2", "ca-certificates", "curl")
# Bump when the image customisation in _customise_image changes (templates under
# templates/sandbox/image/ are hashed automatically).
IMAGE_REVISION = 1
# Units that cannot work or only get in the way in a throwaway container:
# apt-daily* would grab the dpkg lock in the middle of a test; the others
# manage disks the container does not own.
MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "apt-daily.service",
                "apt-daily-upgrade.service", "fstrim.timer", "e2scrub_all.timer",
                "e2scrub_reap.service")

DEFAULT_SUBNET = "10.231.0.0/24"
BRIDGE = "fabship0"
NETNS_PREFIX = "fabship-"
FIRST_HOST = 11  # h1 = .11, h2 = .12, ...
DOMAIN_SUFFIX = "sandbox.test"
BRIDGE_ALIAS_PREFIX = "fabship-sandbox:"  # + repo path: who owns the bridge
SSH_PORT = 22
CONNECT_TIMEOUT = 5
BOOT_TIMEOUT = 90.0
LISTS_MAX_AGE = 6 * 3600  # the image's apt lists are refreshed when older (apt's own check is a day)
POWEROFF_TIMEOUT = 20.0

Out = Callable[[str], None]

# Binary -> Debian package that ships it (for a clear "install X" error).
REQUIRED_BINARIES = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "ip": "iproute2",
    "ss": "iproute2",
    "ssh-keygen": "openssh-client",
    "mount": "mount",
    "umount": "mount",
    "setsid": "util-linux",
    "apt-cacher-ng": "apt-cacher-ng",
}


# ---------------------------------------------------------------------------
# Pure planning (unit-tested)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HostPlan:
    index: int
    name: str  # h1
    address: str  # 10.231.0.11
    netns: str  # fabship-h1
    veth: str  # fabship0-h1 (bridge side; eth0 inside)


@dataclass(frozen=True)
class FleetPlan:
    count: int
    docker: bool = False
    subnet: str = DEFAULT_SUBNET
    bridge: str = BRIDGE

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def bridge_ip(self) -> str:
        return str(self.network.network_address + 1)

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    @property
    def hosts(self) -> List[HostPlan]:
        base = self.network.network_address
        return [HostPlan(i, f"h{i}", str(base + FIRST_HOST - 1 + i), f"{NETNS_PREFIX}h{i}",
                         f"{self.bridge}-h{i}") for i in range(1, self.count + 1)]


def max_hosts(subnet: str = DEFAULT_SUBNET) -> int:
    net = ipaddress.IPv4Network(subnet)
    return net.num_addresses - 1 - FIRST_HOST  # up to the last address before broadcast


def validate_count(count) -> int:
    """--count as given on the command line or in FABSHIP_SANDBOX_COUNT."""
    try:
        n = int(str(count).strip())
    except (TypeError, ValueError):
        raise FabshipError(f"--count must be a whole number, got {count!r}")
    limit = max_hosts()
    if not 1 <= n <= limit:
        raise FabshipError(f"--count must be between 1 and {limit}, got {n}")
    return n


def plan_fleet(count, docker: bool = False, subnet: str = DEFAULT_SUBNET,
               bridge: str = BRIDGE) -> FleetPlan:
    n = validate_count(count)
    try:
        net = ipaddress.IPv4Network(subnet)
    except ValueError as e:
        raise FabshipError(f"bad sandbox subnet {subnet!r}: {e}")
    if n > net.num_addresses - 1 - FIRST_HOST:
        raise FabshipError(f"{n} hosts do not fit in {subnet}")
    if len(f"{bridge}-h{n}") > 15:  # IFNAMSIZ
        raise FabshipError(f"bridge name {bridge!r} too long for veth names")
    return FleetPlan(n, bool(docker), str(net), bridge)


def resolve_services(docker: bool, moto: bool = True, pebble: bool = True,
                     registry: Optional[bool] = None) -> List[str]:
    """Which stand-ins to run, in start order. apt-cacher-ng always runs (hosts
    have no route out); the registry defaults to on only with --docker."""
    if registry is None:
        registry = docker
    names = ["acng"]
    if pebble:
        names += ["challtestsrv", "pebble"]  # pebble resolves names via challtestsrv
    if moto:
        names.append("moto")
    if registry:
        names.append("registry")
    return names


def registry_choice(registry: Optional[bool], no_registry: bool) -> Optional[bool]:
    """--registry / --no-registry / neither (None: on with --docker)."""
    if registry and no_registry:
        raise FabshipError("--registry and --no-registry contradict each other: pick one")
    if no_registry:
        return False
    return True if registry else None


def subnet_conflicts(addr_json: List[dict], subnet: str, bridge: str) -> List[str]:
    """Interfaces other than our bridge that hold an address overlapping the
    sandbox subnet (from `ip -j addr`)."""
    net = ipaddress.IPv4Network(subnet)
    found = []
    for link in addr_json:
        if link.get("ifname") == bridge:
            continue
        for a in link.get("addr_info", []):
            if a.get("family") != "inet":
                continue
            other = ipaddress.IPv4Interface(f"{a['local']}/{a.get('prefixlen', 32)}").network
            if other.overlaps(net):
                found.append(f"{a['local']}/{a.get('prefixlen')} on {link.get('ifname')}")
    return found


def image_stamp(packages: Sequence[str] = BASE_PACKAGES) -> dict:
    """What the base image is made of; any change gives a new image id."""
    h = hashlib.sha256()
    image_templates = svc.TEMPLATES / "sandbox" / "image"
    for p in sorted(image_templates.rglob("*")) if image_templates.is_dir() else []:
        if p.is_file():
            h.update(p.relative_to(image_templates).as_posix().encode() + b"\0" + p.read_bytes())
    return {"suite": SUITE, "mirror": MIRROR, "variant": "minbase",
            "packages": sorted(set(packages)), "revision": IMAGE_REVISION,
            "masked_units": sorted(MASKED_UNITS), "templates": h.hexdigest()}


def image_id(stamp: dict) -> str:
    digest = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()
    return f"{stamp['suite']}-{digest[:12]}"


def render_inventories(hosts: Sequence[Tuple[str, str]], key_file: Path, known_hosts: Path,
                       bridge_ip: str, docker: bool, services: Dict[str, Dict[str, str]],
                       subnet: str = DEFAULT_SUBNET) -> Dict[str, str]:
    """inventories/sandbox.yaml (+ sandbox-ec2.yaml when moto runs), as text."""
    values = dict(
        hosts=[{"name": n, "address": a, "tag_name": f"{svc.SANDBOX_PROJECT_TAG}-{n}"}
               for n, a in hosts],
        project=svc.SANDBOX_PROJECT_TAG, key_file=str(key_file), known_hosts=str(known_hosts),
        port=SSH_PORT, connect_timeout=CONNECT_TIMEOUT, bridge_ip=bridge_ip, docker=docker,
        domain_suffix=DOMAIN_SUFFIX, pebble=services.get("pebble"),
        registry=(services.get("registry") or {}).get("registry"),
        moto_endpoint=(services.get("moto") or {}).get("moto_endpoint"),
        region=svc.EC2_REGION, max_hosts=max(10, len(hosts)),
    )
    out = {"sandbox.yaml": render("sandbox/inventory-sandbox.yaml.j2", **values)}
    if values["moto_endpoint"]:
        out["sandbox-ec2.yaml"] = render("sandbox/inventory-sandbox-ec2.yaml.j2", **values)
    return out


def known_hosts_lines(entries: Sequence[Tuple[str, str]]) -> str:
    """entries: (address, contents of a host's ssh_host_*_key.pub)."""
    lines = []
    for address, pub in entries:
        keytype, key = pub.split()[:2]
        lines.append(f"{address} {keytype} {key}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Small system helpers
# ---------------------------------------------------------------------------


def _run(argv: Sequence[str], check: bool = True, input: Optional[str] = None,
         env: Optional[dict] = None, timeout: Optional[float] = 120) -> subprocess.CompletedProcess:
    p = subprocess.run(list(argv), capture_output=True, text=True, input=input, env=env,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise FabshipError(f"`{' '.join(argv)}` failed: {(p.stderr or p.stdout).strip()}")
    return p


def require_root(action: str = "sandbox") -> None:
    if os.geteuid() != 0:
        raise FabshipError(f"fab {action} needs root (network namespaces, mounts, containers):"
                           f" run it as root, e.g. `sudo fab {action}`")


def require_tools() -> None:
    missing = sorted({pkg for b, pkg in REQUIRED_BINARIES.items() if not shutil.which(b)})
    if missing:
        raise FabshipError(f"missing tools for the sandbox: `apt-get install {' '.join(missing)}`")
    with open("/proc/filesystems") as f:
        if "overlay" not in f.read():
            _run(["modprobe", "overlay"], check=False)
            with open("/proc/filesystems") as f2:
                if "overlay" not in f2.read():
                    raise FabshipError("the kernel has no overlayfs (needed for host roots)")


@contextlib.contextmanager
def _locked(out: Out) -> Iterator[None]:
    """One sandbox command at a time per checkout (engineers share it)."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            out("waiting for another `fab sandbox` command in this checkout ...")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class _Clock:
    def __init__(self, out: Out):
        self.t0 = time.monotonic()
        self.out = out

    def __call__(self, msg: str) -> None:
        self.out(f"[{time.monotonic() - self.t0:5.1f}s] {msg}")

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0


def _mounts() -> List[Tuple[str, str, str]]:
    """(mount point, fs type, options) from the control machine's mount table."""
    res = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            # /proc/mounts escapes spaces etc. as octal
            mp = parts[1].encode().decode("unicode_escape")
            res.append((mp, parts[2], parts[3]))
    return res


def _mounts_under(path: Path) -> List[str]:
    p = str(path).rstrip("/") + "/"
    return [mp for mp, _, _ in _mounts() if (mp + "/").startswith(p)]


def _safe_rmtree(path: Path) -> None:
    """rm -rf that never follows a mount out of `path` (an interrupted debootstrap
    leaves proc/sys/dev mounted in its chroot): stop processes chrooted there,
    unmount, and only then delete."""
    if not path.exists():
        return
    prefix = str(path.resolve()) + "/"
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if (os.readlink(f"/proc/{entry}/root") + "/").startswith(prefix):
                    os.kill(int(entry), signal.SIGKILL)
    for mp in sorted(_mounts_under(path), key=len, reverse=True):
        if _run(["umount", mp], check=False).returncode != 0:
            _run(["umount", "-l", mp], check=False)
    if _mounts_under(path):
        raise FabshipError(f"cannot remove {path}: still mounted: {', '.join(_mounts_under(path))}")
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------

STATE_FILE = STATE_DIR / "state.json"
KEY_FILE = STATE_DIR / "id_ed25519"
KNOWN_HOSTS = STATE_DIR / "known_hosts"
SSH_CONFIG = STATE_DIR / "ssh_config"
HOSTS_DIR = STATE_DIR / "hosts"
RUN_DIR = STATE_DIR / "run"
LOG_DIR = STATE_DIR / "logs"
LEASE_DIR = STATE_DIR / "leases"


def load_state() -> Optional[dict]:
    try:
        return json.loads(STATE_FILE.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        # A torn state file: treat as an unknown fleet and let `down` discover.
        return {"phase": "broken", "hosts": [], "services": {}}


def save_state(state: dict) -> None:
    write_file(STATE_FILE, json.dumps(state, indent=2, sort_keys=True) + "\n")


def _service_ctx(state: dict) -> ServiceContext:
    return ServiceContext(bridge_ip=state["bridge_ip"], subnet=state["subnet"],
                          state_dir=STATE_DIR, cache_dir=CACHE_DIR,
                          hosts=[(h["name"], h["address"]) for h in state["hosts"]],
                          domain_suffix=DOMAIN_SUFFIX)


# ---------------------------------------------------------------------------
# Base image
# ---------------------------------------------------------------------------


def ensure_base_image(log: Out, proxy: Optional[str] = None) -> Path:
    """The cached debootstrap image; built once into a temp dir and renamed, so
    an interrupted build never leaves a half image."""
    stamp = image_stamp()
    images = CACHE_DIR / "images"
    images.mkdir(parents=True, exist_ok=True)
    final = images / image_id(stamp)
    if (final / ".fabship-image.json").exists():
        return final
    with _images_lock(images):  # another checkout may be building it
        if (final / ".fabship-image.json").exists():
            return final
        for stale in images.glob(".tmp-*"):  # an interrupted build (we hold the lock)
            _safe_rmtree(stale)
        tmp = images / f".tmp-{final.name}-{os.getpid()}"
        logfile = LOG_DIR / "debootstrap.log"
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        log(f"building base image {final.name} (debootstrap {SUITE}, once; ~1 min)")
        env = dict(os.environ)
        if proxy:  # fill apt-cacher-ng's cache: the next rebuild is faster
            env["http_proxy"] = proxy
        argv = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                SUITE, str(tmp), MIRROR]
        try:
            with open(logfile, "w") as f:
                p = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env)
            if p.returncode != 0:
                raise FabshipError(f"debootstrap failed (exit {p.returncode}); log {logfile}:\n"
                                   f"{svc.log_tail(logfile)}")
            _customise_image(tmp, stamp)
            os.rename(tmp, final)
        except BaseException:
            _safe_rmtree(tmp)
            raise
        _prune_images(keep=final)
    return final


def refresh_package_lists(image: Path, proxy: str, log: Out) -> None:
    """Fresh apt lists in the image, as a cloud VM has: `apt-get install X` on a
    new host works without an update first, and finds today's versions. Run
    before hosts boot (the image is their overlays' lower layer), at most every
    LISTS_MAX_AGE; a failure only means hosts run `apt-get update` themselves."""
    lists = image / "var/lib/apt/lists"
    newest = max((p.stat().st_mtime for p in lists.glob("*_Packages")), default=0.0)
    if time.time() - newest < LISTS_MAX_AGE:
        return
    with _images_lock(image.parent):
        p = subprocess.run(["chroot", str(image), "apt-get", "update", "-q", "-o", f"Acquire::http::Proxy={proxy}",
                            "-o", "Acquire::Retries=3", "-o", "Acquire::http::Timeout=30"],
                           capture_output=True, text=True, timeout=300)
    if p.returncode == 0:
        log("package lists refreshed in the base image")
    else:
        last = ((p.stderr or p.stdout).strip().splitlines() or [f"exit {p.returncode}"])[-1]
        log(f"warning: could not refresh the image's package lists (hosts will run apt-get update): {last}")


@contextlib.contextmanager
def _images_lock(images: Path):
    """The image cache is shared by checkouts: build or change an image under this lock."""
    with open(images / ".lock", "a") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        yield


def _customise_image(root: Path, stamp: dict) -> None:
    tdir = "sandbox/image"
    _run(["chroot", str(root), "apt-get", "clean"])
    for key in (root / "etc/ssh").glob("ssh_host_*"):  # per-host keys are made at up
        key.unlink()
    # Empty machine-id in the image; each host gets its own (a real one, so
    # systemd does not treat every boot as a first boot).
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.exists() or dbus_id.is_symlink():
        dbus_id.unlink()
    dbus_id.symlink_to("/etc/machine-id")
    write_file(root / "etc/apt/sources.list", render(f"{tdir}/sources.list.j2", suite=SUITE))
    write_file(root / "etc/ssh/sshd_config.d/fabship-sandbox.conf",
               render(f"{tdir}/sshd-fabship-sandbox.conf"))
    write_file(root / "etc/resolv.conf", render(f"{tdir}/resolv.conf"))
    _run(["systemctl", f"--root={root}", "mask", *MASKED_UNITS])
    write_file(root / ".fabship-image.json", json.dumps(stamp, indent=2) + "\n")


def _prune_images(keep: Path) -> None:
    """Old images (changed package list) that no running host uses as lowerdir."""
    in_use = " ".join(opts for _, fstype, opts in _mounts() if fstype == "overlay")
    for d in (CACHE_DIR / "images").iterdir():
        if d.is_dir() and not d.name.startswith(".") and d != keep and str(d) not in in_use:
            _safe_rmtree(d)


# ---------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------


def _bridge_alias(bridge: str) -> Optional[str]:
    """None if the link does not exist, else its alias ('' if none)."""
    p = _run(["ip", "-j", "link", "show", "dev", bridge], check=False)
    if p.returncode != 0:
        return None
    info = json.loads(p.stdout or "[{}]")[0]
    return info.get("ifalias", "")


def _our_alias() -> str:
    return f"{BRIDGE_ALIAS_PREFIX}{REPO}"


def check_network_free(plan: FleetPlan) -> None:
    alias = _bridge_alias(plan.bridge)
    if alias is not None and alias != _our_alias():
        if alias.startswith(BRIDGE_ALIAS_PREFIX):
            raise FabshipError(
                f"bridge {plan.bridge} belongs to a sandbox of another checkout "
                f"({alias[len(BRIDGE_ALIAS_PREFIX):]}): run `fab sandbox.down` there first")
        raise FabshipError(f"network interface {plan.bridge} exists and is not a fabship "
                           f"sandbox bridge: remove it or free the name")
    conflicts = subnet_conflicts(json.loads(_run(["ip", "-j", "addr"]).stdout or "[]"),
                                 plan.subnet, plan.bridge)
    if conflicts:
        raise FabshipError(f"the sandbox subnet {plan.subnet} is already in use by something "
                           f"else: {', '.join(conflicts)}")
    existing = set(_run(["ip", "netns", "list"]).stdout.split())
    for h in plan.hosts:
        if h.netns in existing:
            raise FabshipError(f"network namespace {h.netns} already exists (not in this "
                               f"checkout's sandbox state): `ip netns delete {h.netns}`")


def create_bridge(plan: FleetPlan) -> None:
    if _bridge_alias(plan.bridge) is None:
        _run(["ip", "link", "add", plan.bridge, "type", "bridge"])
    _run(["ip", "link", "set", "dev", plan.bridge, "alias", _our_alias()])
    _run(["ip", "addr", "replace", f"{plan.bridge_ip}/{plan.prefixlen}", "dev", plan.bridge])
    _run(["ip", "link", "set", "dev", plan.bridge, "up"])


def create_host_network(plan: FleetPlan, h: HostPlan) -> None:
    _run(["ip", "netns", "add", h.netns])
    # The peer is created directly inside the namespace as eth0.
    _run(["ip", "link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.netns])
    _run(["ip", "link", "set", "dev", h.veth, "master", plan.bridge, "up"])
    _run(["ip", "-n", h.netns, "addr", "add", f"{h.address}/{plan.prefixlen}", "dev", "eth0"])
    _run(["ip", "-n", h.netns, "link", "set", "dev", "eth0", "up"])
    _run(["ip", "-n", h.netns, "link", "set", "dev", "lo", "up"])
    # No default route on purpose: the bridge subnet is all a host can reach.


# ---------------------------------------------------------------------------
# cgroups: one subtree per host
# ---------------------------------------------------------------------------
# With --register=no --keep-unit, systemd-nspawn runs the container in nspawn's
# own cgroup. Started from one place, all hosts would share one cgroup and
# their systemds would trample each other's units (random 219/CGROUP
# failures, `degraded`). So each nspawn joins its own cgroup, below ours
# (limits set on us still apply), in every hierarchy.

CGROUP_NAME = "fabship-sandbox"


def _cgroup_roots() -> List[Path]:
    """This process's own cgroup directory in every mounted hierarchy."""
    mounts = [(mp, t, set(o.split(","))) for mp, t, o in _mounts() if t in ("cgroup", "cgroup2")]
    roots: List[Path] = []
    with open("/proc/self/cgroup") as f:
        for line in f:
            hid, ctrls, path = line.rstrip("\n").split(":", 2)
            if hid == "0" and not ctrls:
                mp = next((m for m, t, _ in mounts if t == "cgroup2"), None)
            else:
                want = set(ctrls.split(","))
                mp = next((m for m, t, o in mounts if t == "cgroup" and want <= o), None)
            if mp:
                root = Path(mp) / path.lstrip("/")
                if root not in roots:
                    roots.append(root)
    return roots


def host_cgroups(name: str) -> List[Path]:
    return [root / CGROUP_NAME / name for root in _cgroup_roots()]


def _make_cgroup(path: Path) -> None:
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir()
        # A new cgroup-v1 cpuset has no CPUs/memory nodes: nothing could join it.
        if (d / "cgroup.clone_children").exists():
            for f in ("cpuset.cpus", "cpuset.mems"):
                if (d / f).exists() and not (d / f).read_text().strip():
                    (d / f).write_text((d.parent / f).read_text())


def _cgroup_pids(path: Path) -> List[int]:
    pids = []
    for dirpath, _, _ in os.walk(path):
        with contextlib.suppress(OSError):
            pids += [int(x) for x in Path(dirpath, "cgroup.procs").read_text().split()]
    return pids


def _cgroup_tops(recorded: Sequence[str] = ()) -> List[Path]:
    """Our cgroup subtrees: below this process's cgroups, plus where `up` put the
    hosts (recorded: `down` may run in another cgroup than `up` did)."""
    tops = [root / CGROUP_NAME for root in _cgroup_roots()]
    for c in recorded:
        top = Path(c).parent
        if top.name == CGROUP_NAME and top not in tops:
            tops.append(top)
    return tops


def _remove_cgroups(recorded: Sequence[str] = ()) -> None:
    """Kill whatever is still in the hosts' cgroups (ours by construction), then
    remove the (empty) cgroup directories, deepest first."""
    tops = [t for t in _cgroup_tops(recorded) if t.is_dir()]
    for top in tops:
        for pid in _cgroup_pids(top):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(_cgroup_pids(t) for t in tops) and time.monotonic() < deadline:
        time.sleep(0.05)
    for top in tops:
        for dirpath, _, _ in os.walk(top, topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


def _leftover_cgroups(recorded: Sequence[str] = ()) -> List[str]:
    return [str(t) for t in _cgroup_tops(recorded) if t.exists()]


# ---------------------------------------------------------------------------
# Hosts
# ---------------------------------------------------------------------------


# Inside each host: a plain (non-overlay) directory that can hold a swap file.
# Named after the host: /proc/swaps is the kernel's (not per container) and
# shows every host's swap file by its in-container path, so the paths must differ.
def swap_dir(host: str) -> str:
    return f"/var/lib/fabship-sandbox-swap-{host}"


def _host_swapfiles() -> List[Path]:
    return sorted(HOSTS_DIR.glob("*/swap/*")) if HOSTS_DIR.exists() else []


def _host_dir(name: str) -> Path:
    return HOSTS_DIR / name


def ensure_keypair() -> str:
    """The control machine's key pair for the sandbox (generated once)."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    os.chmod(STATE_DIR, 0o700)
    if not KEY_FILE.exists() or not KEY_FILE.with_suffix(".pub").exists():
        for f in (KEY_FILE, KEY_FILE.with_suffix(".pub")):
            if f.exists():
                f.unlink()
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fabship-sandbox-control",
              "-f", str(KEY_FILE)])
    return KEY_FILE.with_suffix(".pub").read_text().strip()


def prepare_host(plan: FleetPlan, h: HostPlan, base: Path, pubkey: str) -> str:
    """Overlay root + per-host identity. Returns the host's ed25519 public key."""
    d = _host_dir(h.name)
    root = d / "root"
    for sub in ("upper", "work", "root"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    _run(["mount", "-t", "overlay", f"fabship-{h.name}", "-o",
          f"lowerdir={base},upperdir={d / 'upper'},workdir={d / 'work'}", str(root)])
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    # Own host key per host (ed25519 only: sshd is configured for just that).
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{h.name}",
          "-f", str(root / "etc/ssh/ssh_host_ed25519_key")])
    write_file(root / "etc/hostname", h.name + "\n")
    write_file(root / "etc/machine-id", secrets.token_hex(16) + "\n", 0o444)
    write_file(root / "etc/hosts", render(
        "sandbox/host/hosts.j2", me=h.name, domain_suffix=DOMAIN_SUFFIX,
        hosts=[(x.name, x.address) for x in plan.hosts]))
    write_file(root / "etc/apt/apt.conf.d/01fabship-sandbox-proxy",
               render("sandbox/host/apt-proxy.conf.j2", bridge_ip=plan.bridge_ip,
                      port=svc.ACNG_PORT))
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    write_file(ssh_dir / "authorized_keys", pubkey + "\n", 0o600)
    (d / "swap").mkdir(mode=0o700, exist_ok=True)
    swapfile = root / "swapfile"
    if not swapfile.is_symlink() and not swapfile.exists():
        swapfile.symlink_to(f"{swap_dir(h.name)}/swapfile")
    if plan.docker:
        (d / "docker").mkdir(exist_ok=True)
        # Plain HTTP registry on the bridge: tell dockerd before it is even installed.
        write_file(root / "etc/docker/daemon.json", render(
            "sandbox/host/docker-daemon.json.j2",
            registry=f"{plan.bridge_ip}:{svc.REGISTRY_PORT}"))
        # Not --bind=/sys/fs/cgroup: with every host on the whole host tree their
        # systemds trample each other's cgroups. See the unit's comment.
        unit = "fabship-sandbox-cgroups.service"
        write_file(root / "etc/systemd/system" / unit, render(f"sandbox/host/{unit}"))
        wants = root / "etc/systemd/system/sysinit.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (wants / unit).symlink_to(f"/etc/systemd/system/{unit}")
    return (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text()


def nspawn_argv(plan: FleetPlan, h: HostPlan, root: Path, docker_dir: Path) -> List[str]:
    argv = ["systemd-nspawn", "-D", str(root), "--register=no", "--keep-unit", "-b",
            "-M", h.name, f"--network-namespace-path=/run/netns/{h.netns}",
            "--console=read-only", "--resolv-conf=off", "--timezone=off", "--link-journal=no"]
    # Swap files: nspawn's seccomp filter refuses swapon unless @swap is allowed,
    # and overlayfs cannot hold a swap file, so /swapfile is a link into a plain
    # per-host directory (see prepare_host). Swap really turns on, as on a VM.
    syscalls = "@swap"
    argv.append(f"--bind={docker_dir.parent / 'swap'}:{swap_dir(h.name)}")
    if plan.docker:
        syscalls += " @keyring bpf"
        argv += ["--capability=all",
                 # overlay2 cannot sit on the overlay root: give dockerd a plain dir.
                 f"--bind={docker_dir}:/var/lib/docker"]
    argv.append(f"--system-call-filter={syscalls}")
    return argv


def boot_host(plan: FleetPlan, h: HostPlan) -> Proc:
    d = _host_dir(h.name)
    argv = nspawn_argv(plan, h, d / "root", d / "docker")
    logfile = LOG_DIR / f"{h.name}.log"
    with open(logfile, "a") as f:
        f.write(f"--- {datetime.datetime.now().isoformat(timespec='seconds')} {' '.join(argv)}\n")
    cgroups = host_cgroups(h.name)
    for cg in cgroups:
        _make_cgroup(cg)
    # /proc/sys/net is per network namespace: writable as on a real host
    # (dockerd turns on ip_forward; apps tune net.core.* sysctls).
    env = {"SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network"}
    proc = svc.spawn_detached(argv, logfile, env=env, cgroups=[str(c) for c in cgroups])
    svc.write_pidfile(RUN_DIR / f"{h.name}.pid", proc)
    return proc


def ssh_connect(address: str, key_file: Path = KEY_FILE, known_hosts: Path = KNOWN_HOSTS,
                timeout: float = CONNECT_TIMEOUT, port: int = SSH_PORT):
    """A paramiko client with strict host key checking (RejectPolicy + our known_hosts)."""
    import paramiko

    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(address, port=port, username="root", key_filename=str(key_file),
                   timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                   look_for_keys=False, allow_agent=False)
    return client


def ssh_run(address: str, command: str, timeout: float = 60.0, **kw) -> Tuple[int, str, str]:
    client = ssh_connect(address, **kw)
    try:
        _, stdout, stderr = client.exec_command(command, timeout=timeout)
        out = stdout.read().decode(errors="replace")
        err = stderr.read().decode(errors="replace")
        return stdout.channel.recv_exit_status(), out, err
    finally:
        client.close()


def wait_host_ready(h: HostPlan, proc: Proc, deadline: float) -> str:
    """sshd answering (TCP, then a real strict handshake), then systemd done booting."""
    logfile = LOG_DIR / f"{h.name}.log"
    remaining = lambda: max(1.0, deadline - time.monotonic())  # noqa: E731
    svc.wait_for(f"host {h.name} ({h.address}) sshd", lambda: svc.tcp_open(h.address, SSH_PORT),
                 remaining(), proc, logfile)
    last_error: Exception = Exception("no attempt")
    while time.monotonic() < deadline:
        try:
            rc, out, _ = ssh_run(h.address, "timeout 60 systemctl is-system-running --wait",
                                 timeout=remaining())
            state = out.strip()
            if state == "running":
                return state
            if state in ("initializing", "starting", ""):
                time.sleep(0.2)
                continue
            _, failed, _ = ssh_run(h.address, "systemctl --failed --plain --no-legend")
            units = [line.split()[0] for line in failed.splitlines() if line.strip()]
            detail = ""
            if units:
                _, detail, _ = ssh_run(h.address, f"journalctl -b --no-pager -n 15 -u {units[0]}")
            raise FabshipError(f"host {h.name} booted {state!r}; failed units: "
                               f"{' '.join(units) or '?'}\n{detail}")
        except FabshipError:
            raise
        except Exception as e:  # sshd just started: resets, banner timeouts
            last_error = e
            if not proc.alive():
                break
            time.sleep(0.2)
    raise FabshipError(f"host {h.name} ({h.address}) not ready: {last_error}; log {logfile}:\n"
                       f"{svc.log_tail(logfile)}")


def _container_init(nspawn_pid: int) -> Optional[int]:
    """The container's PID 1 as seen from here: the child of systemd-nspawn."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == nspawn_pid:
            return int(entry)
    return None


def stop_host(proc: Proc) -> bool:
    """Power a container off cleanly: SIGTERM to systemd-nspawn makes it send
    SIGRTMIN+3 to the container's systemd (orderly poweroff, nspawn's
    --kill-signal default with -b). After POWEROFF_TIMEOUT: SIGKILL the
    container's init (the kernel then kills its whole PID namespace) and nspawn."""
    if not proc.alive():
        return True
    os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + POWEROFF_TIMEOUT
    while time.monotonic() < deadline:
        if not proc.alive():
            return True
        time.sleep(0.1)
    init = _container_init(proc.pid)
    if init:
        with contextlib.suppress(ProcessLookupError):
            os.kill(init, signal.SIGKILL)
    svc.stop_proc(proc, signal.SIGKILL, timeout=5)
    return False  # anything else left in the host's cgroup is killed by _remove_cgroups


def _stray_nspawns() -> List[Proc]:
    """systemd-nspawn processes booting one of our host roots (e.g. state lost)."""
    found = []
    prefix = str(HOSTS_DIR) + "/"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = svc.proc_cmdline(int(entry))
        if argv and os.path.basename(argv[0]) == "systemd-nspawn" and "-D" in argv:
            i = argv.index("-D")
            if i + 1 < len(argv) and argv[i + 1].startswith(prefix):
                start = svc.proc_start_time(int(entry))
                if start is not None:
                    found.append(Proc(int(entry), start))
    return found


SERVICE_BINARIES = {"apt-cacher-ng", "pebble", "pebble-challtestsrv", "docker-registry"}


def _stray_services(bridge_ip: str) -> List[Proc]:
    """Stand-in processes of ours: one of the stand-in programs, configured from
    our state/cache dirs or listening on the bridge address we own."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        argv = svc.proc_cmdline(int(entry))
        if not argv:
            continue
        prog = os.path.basename(argv[0])
        if prog not in SERVICE_BINARIES and "moto.server" not in argv:
            continue
        text = " ".join(argv)
        if (str(STATE_DIR) in text or str(CACHE_DIR) in text
                or any(a == bridge_ip or a.startswith(bridge_ip + ":") for a in argv)):
            start = svc.proc_start_time(int(entry))
            if start is not None:
                found.append(Proc(int(entry), start))
    return found


# ---------------------------------------------------------------------------
# up
# ---------------------------------------------------------------------------


@dataclass
class UpResult:
    created: bool
    count: int
    docker: bool
    hosts: List[Tuple[str, str]]
    services: List[str]
    inventory: Path
    seconds: float
    started_services: List[str] = field(default_factory=list)


def _fleet_alive(state: dict) -> bool:
    hosts = state.get("hosts") or []
    return bool(hosts) and all(h.get("pid") and Proc(h["pid"], h["start"]).alive()
                               for h in hosts)


def sandbox_up(count=3, docker: bool = False, moto: bool = True, pebble: bool = True,
               registry: Optional[bool] = None, started_by: str = "cli", lease: bool = False,
               out: Out = print) -> UpResult:
    """Bring the fleet up (or confirm the running one). Raises FabshipError.
    lease: register the calling process as a user of the fleet (pytest sessions)."""
    require_root("sandbox.up")
    plan = plan_fleet(count, docker)
    wanted = resolve_services(plan.docker, moto, pebble, registry)
    require_tools()
    clock = _Clock(out)
    with _locked(out):
        state = load_state()
        if state and state.get("phase") == "up" and _fleet_alive(state):
            if state["count"] != plan.count or state["docker"] != plan.docker:
                raise FabshipError(
                    f"a sandbox fleet of {state['count']} hosts (docker: "
                    f"{'yes' if state['docker'] else 'no'}) is already up; run `fab sandbox.down`"
                    f" first to get {plan.count} hosts (docker: {'yes' if plan.docker else 'no'})")
            started = _start_missing_services(state, wanted, clock)
            what = f"; started {', '.join(started)}" if started else " -- nothing to do"
            out(f"sandbox already up: {state['count']} hosts "
                f"({', '.join(h['name'] for h in state['hosts'])}){what}")
            if lease:
                acquire_lease()
            return UpResult(False, state["count"], state["docker"],
                            [(h["name"], h["address"]) for h in state["hosts"]],
                            list(state["services"]), INVENTORY, clock.elapsed, started)
        if state or _leftovers_exist(plan):
            out("cleaning up a stale or half-made sandbox from an earlier run")
            _down(state or {}, lambda m: None)
        check_network_free(plan)
        state = {
            "version": 1, "repo": str(REPO), "phase": "starting", "count": plan.count,
            "docker": plan.docker, "subnet": plan.subnet, "bridge": plan.bridge,
            "bridge_ip": plan.bridge_ip, "started_by": started_by,
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "hosts": [{"name": h.name, "address": h.address, "netns": h.netns, "veth": h.veth}
                      for h in plan.hosts],
            "services": {},
        }
        for d in (STATE_DIR, RUN_DIR, LOG_DIR, HOSTS_DIR):
            d.mkdir(parents=True, exist_ok=True)
        save_state(state)  # first, so `down` can clean up whatever follows
        try:
            _up(plan, state, wanted, clock)
        except BaseException as e:
            out(f"sandbox.up failed ({e.__class__.__name__}); cleaning up")
            with contextlib.suppress(Exception):
                _down(load_state() or state, lambda m: None)
            raise
        if lease:
            acquire_lease()
        clock(f"sandbox up: {plan.count} hosts, stand-ins: {', '.join(wanted)}")
        out(f"  inventory: {INVENTORY.relative_to(REPO)}"
            + (f" (+ {EC2_INVENTORY.relative_to(REPO)})" if "moto" in wanted else ""))
        out(f"  ssh: ssh -F {SSH_CONFIG.relative_to(REPO)} h1")
        return UpResult(True, plan.count, plan.docker, [(h.name, h.address) for h in plan.hosts],
                        wanted, INVENTORY, clock.elapsed, wanted)


# Every host's systemd, journald, logind... hold inotify instances and watches of the one
# root user: the kernel's default of 128 instances ran out between 8 and 100 hosts (a host
# booted 'degraded', its systemd-ask-password-*.path units failed). Per host, generous.
INOTIFY_PER_HOST = {"fs/inotify/max_user_instances": 64, "fs/inotify/max_user_watches": 8192}


def raise_inotify_limits(count: int, proc_sys: Path = Path("/proc/sys")) -> List[str]:
    """Raise (never lower) the inotify limits to what `count` hosts need; what changed."""
    changed = []
    for key, per_host in INOTIFY_PER_HOST.items():
        f = proc_sys / key
        try:
            cur = int(f.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        want = 128 + per_host * count
        if cur < want:
            f.write_text(f"{want}\n")
            changed.append(f"{key.replace('/', '.')} {cur} -> {want}")
    return changed


def _up(plan: FleetPlan, state: dict, wanted: List[str], clock: _Clock) -> None:
    pubkey = ensure_keypair()
    raised = raise_inotify_limits(plan.count)
    if raised:
        clock("raised " + ", ".join(raised))
    create_bridge(plan)
    clock(f"bridge {plan.bridge} {plan.bridge_ip}/{plan.prefixlen}")
    ctx = _service_ctx(state)
    svc.check_ports(ctx, wanted)  # fail before anything boots
    # apt-cacher-ng first: a cold image build downloads through it (fills its cache).
    _start_service(state, ctx, "acng", clock)
    base = ensure_base_image(clock, proxy=f"http://{plan.bridge_ip}:{svc.ACNG_PORT}")
    clock(f"base image {base}")
    refresh_package_lists(base, f"http://{plan.bridge_ip}:{svc.ACNG_PORT}", clock)
    state["image"] = str(base)
    save_state(state)

    lock = threading.Lock()
    workers = min(32, plan.count + 1)  # + 1: the stand-ins start beside the host waits

    def make_host(h: HostPlan) -> Tuple[HostPlan, str]:
        create_host_network(plan, h)
        return h, prepare_host(plan, h, base, pubkey)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        prepared = list(pool.map(make_host, plan.hosts))
        # known_hosts before boot: the very first handshake is already strict.
        write_file(KNOWN_HOSTS, known_hosts_lines([(h.address, pub) for h, pub in prepared]))
        procs: Dict[str, Proc] = {}
        for h in plan.hosts:
            proc = boot_host(plan, h)
            procs[h.name] = proc
            with lock:
                for rec in state["hosts"]:
                    if rec["name"] == h.name:
                        rec.update(pid=proc.pid, start=proc.start, root=str(_host_dir(h.name)),
                                   cgroups=[str(c) for c in host_cgroups(h.name)])
                save_state(state)
        clock(f"booting {plan.count} hosts")
        # Stand-ins start while the hosts boot (they only need the addresses).
        others = pool.submit(lambda: [_start_service(state, ctx, n, clock, lock)
                                      for n in wanted if n != "acng"])
        deadline = time.monotonic() + BOOT_TIMEOUT
        ready = list(pool.map(lambda h: wait_host_ready(h, procs[h.name], deadline), plan.hosts))
        clock(f"{len(ready)} hosts running (sshd + systemd)")
        others.result()
    _write_client_files(state)
    state["phase"] = "up"
    save_state(state)


def _start_service(state: dict, ctx: ServiceContext, name: str, clock: Out,
                   lock: Optional[threading.Lock] = None) -> None:
    service = svc.STARTERS[name](ctx)
    with (lock or contextlib.nullcontext()):
        state["services"][name] = service.to_json()
        save_state(state)
    clock(f"{name} up (pid {service.pid})")


def _start_missing_services(state: dict, wanted: List[str], clock: Out) -> List[str]:
    ctx = _service_ctx(state)
    started = []
    for name in wanted:
        rec = state["services"].get(name)
        if rec and Service.from_json(rec).proc.alive():
            continue
        _start_service(state, ctx, name, clock)
        started.append(name)
    if started:
        _write_client_files(state)
    return started


def _write_client_files(state: dict) -> None:
    infos = {name: rec["info"] for name, rec in state["services"].items()}
    hosts = [(h["name"], h["address"]) for h in state["hosts"]]
    for fname, text in render_inventories(hosts, KEY_FILE, KNOWN_HOSTS, state["bridge_ip"],
                                          state["docker"], infos, state["subnet"]).items():
        write_file(REPO / "inventories" / fname, text)
    write_file(SSH_CONFIG, render("sandbox/ssh_config.j2", hosts=hosts, key_file=str(KEY_FILE),
                                  known_hosts=str(KNOWN_HOSTS)))


# ---------------------------------------------------------------------------
# down
# ---------------------------------------------------------------------------


def _leftovers_exist(plan: FleetPlan) -> bool:
    return (_bridge_alias(plan.bridge) == _our_alias() or bool(_mounts_under(HOSTS_DIR))
            or bool(_stray_nspawns()) or bool(_leftover_cgroups())
            or bool(_stray_services(plan.bridge_ip)))


def leftovers(plan: Optional[FleetPlan] = None, cgroups: Sequence[str] = ()) -> List[str]:
    """Anything of a sandbox still on this machine (used by down and tests)."""
    plan = plan or FleetPlan(1)
    left = []
    left += [f"process {p.pid} (systemd-nspawn)" for p in _stray_nspawns()]
    left += [f"process {p.pid} ({' '.join(svc.proc_cmdline(p.pid))[:60]})"
             for p in _stray_services(plan.bridge_ip)]
    left += [f"mount {m}" for m in _mounts_under(HOSTS_DIR)]

    left += [f"cgroup {c}" for c in _leftover_cgroups(cgroups)]
    netns = _run(["ip", "netns", "list"], check=False).stdout.split()
    left += [f"netns {n}" for n in netns if n.startswith(NETNS_PREFIX + "h")]
    links = json.loads(_run(["ip", "-j", "link"], check=False).stdout or "[]")
    left += [f"link {l['ifname']}" for l in links
             if l["ifname"] == plan.bridge or l["ifname"].startswith(plan.bridge + "-h")]
    for name in svc.SERVICE_NAMES:
        pidfile = RUN_DIR / f"{name}.pid"
        if pidfile.exists():
            left.append(f"pid file {pidfile}")
    return left


def sandbox_down(out: Out = print) -> Dict[str, object]:
    """Stop and remove everything `up` made. Raises FabshipError if something stays."""
    require_root("sandbox.down")
    with _locked(out):
        state = load_state()
        if not state and not _leftovers_exist(FleetPlan(1)):
            out("sandbox is not up -- nothing to do")
            return {"stopped_hosts": 0, "clean": True}
        return _down(state or {}, out)


def _down(state: dict, out: Out) -> Dict[str, object]:
    clock = _Clock(out)
    plan = FleetPlan(state.get("count") or 1, bool(state.get("docker")),
                     state.get("subnet") or DEFAULT_SUBNET, state.get("bridge") or BRIDGE)
    # 1. hosts, in parallel, by the PIDs we recorded (plus any stray of ours)
    procs = [Proc(h["pid"], h["start"]) for h in state.get("hosts", []) if h.get("pid")]
    procs_list = [p for p in procs if p.alive()] + [
        p for p in _stray_nspawns() if p.pid not in {q.pid for q in procs}]
    clean = []
    if procs_list:
        with ThreadPoolExecutor(max_workers=min(16, len(procs_list))) as pool:
            clean = list(pool.map(stop_host, procs_list))
        clock(f"stopped {len(clean)} hosts ({sum(clean)} powered off cleanly"
              f"{', rest killed' if not all(clean) else ''})")
    # 2. stand-ins
    ctx = ServiceContext(bridge_ip=state.get("bridge_ip", plan.bridge_ip),
                         subnet=plan.subnet, state_dir=STATE_DIR, cache_dir=CACHE_DIR, hosts=[])
    stopped = []
    for name, rec in (state.get("services") or {}).items():
        svc.stop_service(ctx, Service.from_json(rec))
        stopped.append(name)
    # Stand-ins started but not yet recorded (up killed at the wrong moment).
    if _bridge_alias(plan.bridge) in (None, _our_alias()):
        for proc in _stray_services(ctx.bridge_ip):
            svc.stop_proc(proc, timeout=5)
            stopped.append(f"pid {proc.pid}")
    for pidfile in RUN_DIR.glob("*.pid") if RUN_DIR.exists() else []:
        pidfile.unlink()
    if stopped:
        clock(f"stopped {', '.join(stopped)}")
    recorded_cgroups = [c for h in state.get("hosts", []) for c in h.get("cgroups", [])]
    _remove_cgroups(recorded_cgroups)
    # Swap files outlive their host on the shared kernel, and /proc/swaps names
    # them by their in-host path: swap each off by its path here (same inode).
    for sw in _host_swapfiles():
        _run(["swapoff", str(sw)], check=False)
    # 3. mounts (deepest first), 4. namespaces + links
    for mp in sorted(_mounts_under(HOSTS_DIR), key=len, reverse=True):
        if _run(["umount", mp], check=False).returncode != 0:
            _run(["umount", "-l", mp], check=False)
    netns = set(_run(["ip", "netns", "list"], check=False).stdout.split())
    mine = {h.get("netns") for h in state.get("hosts", [])}
    bridge_alias = _bridge_alias(plan.bridge)
    if bridge_alias in (None, _our_alias()):  # not another checkout's fleet
        mine |= {n for n in netns if n.startswith(NETNS_PREFIX + "h")}
    for n in sorted(mine & netns):
        _run(["ip", "netns", "delete", n], check=False)
    if bridge_alias == _our_alias():
        links = json.loads(_run(["ip", "-j", "link"], check=False).stdout or "[]")
        for l in links:
            if l["ifname"].startswith(plan.bridge + "-h"):
                _run(["ip", "link", "delete", l["ifname"]], check=False)
        _run(["ip", "link", "delete", plan.bridge], check=False)
    # 5. files: host roots (only once nothing is mounted there), generated files
    if HOSTS_DIR.exists() and not _mounts_under(HOSTS_DIR):
        _safe_rmtree(HOSTS_DIR)
    for f in (INVENTORY, EC2_INVENTORY, KNOWN_HOSTS, SSH_CONFIG, STATE_FILE):
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
    left = leftovers(plan, recorded_cgroups) if bridge_alias in (None, _our_alias()) else []
    if left:
        raise FabshipError(f"sandbox.down left things behind: {', '.join(left)}")
    clock("sandbox down: no process, mount, namespace or link left")
    return {"stopped_hosts": len(clean), "clean_poweroffs": sum(clean), "services": stopped,
            "clean": True}


# ---------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------


def _host_health(h: dict) -> dict:
    proc = Proc(h["pid"], h["start"]) if h.get("pid") else None
    alive = bool(proc and proc.alive())
    port = alive and svc.tcp_open(h["address"], SSH_PORT)
    system = "-"
    if port:
        try:
            _, o, _ = ssh_run(h["address"], "systemctl is-system-running", timeout=10)
            system = o.strip() or "?"
        except Exception as e:  # a broken host is a status, not a crash
            system = f"ssh failed: {e.__class__.__name__}: {e}"
    return {"name": h["name"], "address": h["address"], "pid": h.get("pid"), "alive": alive,
            "ssh_port": bool(port), "system": system}


def sandbox_status() -> Dict[str, object]:
    require_root("sandbox.status")  # the state dir and the key are root's
    state = load_state()
    if not state:
        return {"up": False, "hosts": [], "services": []}
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(state["hosts"])))) as pool:
        hosts = list(pool.map(_host_health, state["hosts"]))
    ctx = _service_ctx(state)
    services = [svc.service_health(ctx, Service.from_json(r)) for r in state["services"].values()]
    up = state.get("phase") == "up" and all(h["alive"] and h["system"] == "running"
                                            for h in hosts)
    return {"up": up, "phase": state.get("phase"), "count": state["count"],
            "docker": state["docker"], "bridge_ip": state["bridge_ip"],
            "started_by": state.get("started_by"), "hosts": hosts, "services": services,
            "inventory": str(INVENTORY) if INVENTORY.exists() else None}


# ---------------------------------------------------------------------------
# API for tests and other tasks
# ---------------------------------------------------------------------------


@dataclass
class SandboxHost:
    name: str
    address: str


@dataclass
class SandboxFleet:
    """A running fleet, as the integration tests see it."""

    hosts: List[SandboxHost]
    docker: bool
    bridge_ip: str
    key_file: Path
    known_hosts: Path
    inventory: Path
    ec2_inventory: Optional[Path]
    services: Dict[str, Dict[str, str]]  # name -> info (endpoints, CA files)

    def host(self, name: str) -> SandboxHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def connect(self, name: str):
        """Strict paramiko client to a host (caller closes it)."""
        return ssh_connect(self.host(name).address, self.key_file, self.known_hosts)

    def run(self, name: str, command: str, timeout: float = 300.0) -> Tuple[int, str, str]:
        return ssh_run(self.host(name).address, command, timeout=timeout,
                       key_file=self.key_file, known_hosts=self.known_hosts)


def _host_rec(state: dict, name: str) -> dict:
    for rec in state.get("hosts", []):
        if rec["name"] == name:
            return rec
    raise FabshipError(f"no sandbox host {name!r}")


def power_cycle(name: str, command: str = "systemctl reboot", timeout: float = POWEROFF_TIMEOUT,
                out: Out = print) -> None:
    """Take one host down the way a reboot does (the fault suite): `command`
    inside it (default `systemctl reboot`: an orderly stop of every unit and
    session, then the container's reboot request, on which systemd-nspawn
    exits), waited for until its systemd-nspawn is gone. `boot_again(name)`
    then boots the same root, network namespace and host key, as firmware
    would after the reset. What differs from a VM: the kernel and the network
    namespace (addresses, the veth) survive, and nothing on disk is lost that
    the overlay root had written (no page cache to lose)."""
    require_root("sandbox reboot")
    state = load_state()
    if not state or state.get("phase") != "up":
        raise FabshipError("the sandbox is not up")
    rec = _host_rec(state, name)
    proc = Proc(rec["pid"], rec["start"])
    with contextlib.suppress(Exception):   # the session dies with sshd: that is the point
        ssh_run(rec["address"], command, timeout=10)
    deadline = time.monotonic() + timeout
    while proc.alive():
        if time.monotonic() > deadline:
            raise FabshipError(f"host {name}: systemd-nspawn (pid {proc.pid}) still running {timeout:.0f}s "
                               f"after {command!r}")
        time.sleep(0.1)
    out(f"{name} is down ({command})")


def boot_again(name: str, out: Out = print) -> float:
    """Boot a host that `power_cycle` took down; returns the seconds it took
    until sshd and systemd were up."""
    require_root("sandbox reboot")
    t0 = time.monotonic()
    with _locked(out):
        state = load_state()
        rec = _host_rec(state, name)
        if rec.get("pid") and Proc(rec["pid"], rec["start"]).alive():
            raise FabshipError(f"host {name} is still running (pid {rec['pid']})")
        plan = plan_fleet(state["count"], state["docker"], state["subnet"], state["bridge"])
        h = next(x for x in plan.hosts if x.name == name)
        proc = boot_host(plan, h)
        rec.update(pid=proc.pid, start=proc.start)
        save_state(state)
    wait_host_ready(h, proc, time.monotonic() + BOOT_TIMEOUT)
    out(f"{name} booted again in {time.monotonic() - t0:.1f}s")
    return time.monotonic() - t0


def stop_service(name: str, out: Out = print) -> None:
    """Stop one stand-in (the fault suite: the apt mirror or the registry
    down); `start_services()` brings it back with its state on disk."""
    require_root("sandbox service")
    with _locked(out):
        state = load_state()
        rec = (state or {}).get("services", {}).get(name)
        if not rec:
            raise FabshipError(f"no sandbox stand-in {name!r} is running")
        svc.stop_proc(Service.from_json(rec).proc, timeout=10)
    out(f"{name} stopped")


def start_services(names: Sequence[str], out: Out = print) -> List[str]:
    """Start the stand-ins among `names` that are not running; returns them."""
    require_root("sandbox service")
    with _locked(out):
        state = load_state()
        if not state or state.get("phase") != "up":
            raise FabshipError("the sandbox is not up")
        started = _start_missing_services(state, list(names), out)
        save_state(state)
        return started


def load_fleet() -> Optional[SandboxFleet]:
    state = load_state()
    if not state or state.get("phase") != "up":
        return None
    return SandboxFleet(
        hosts=[SandboxHost(h["name"], h["address"]) for h in state["hosts"]],
        docker=state["docker"], bridge_ip=state["bridge_ip"], key_file=KEY_FILE,
        known_hosts=KNOWN_HOSTS, inventory=INVENTORY,
        ec2_inventory=EC2_INVENTORY if EC2_INVENTORY.exists() else None,
        services={n: r["info"] for n, r in state["services"].items()})


# Leases: pytest sessions using a fleet. A fleet the fixture started is torn down
# by the last session still using it; a fleet started by hand is left alone.


def _lease_path() -> Path:
    return LEASE_DIR / f"{os.getpid()}-{svc.proc_start_time(os.getpid())}"


def acquire_lease() -> None:
    LEASE_DIR.mkdir(parents=True, exist_ok=True)
    _lease_path().touch()


def release_lease() -> int:
    """Drop ours (and dead sessions'); returns how many live sessions remain."""
    with contextlib.suppress(FileNotFoundError):
        _lease_path().unlink()
    live = 0
    for f in LEASE_DIR.glob("*-*") if LEASE_DIR.exists() else []:
        pid, _, start = f.name.partition("-")
        if pid.isdigit() and str(svc.proc_start_time(int(pid))) == start:
            live += 1
        else:
            f.unlink(missing_ok=True)
    return live


def fixture_up(count, docker: bool = True, out: Out = print) -> Tuple[SandboxFleet, bool]:
    """For the session fixture: (fleet, whether this call created it)."""
    res = sandbox_up(count, docker=docker, started_by="fixture", lease=True, out=out)
    fleet = load_fleet()
    assert fleet is not None
    return fleet, res.created


def fixture_down(out: Out = print) -> bool:
    """Drop this session's lease; tear the fleet down if the fixture started it
    and no other session uses it (all under the lock: no one joins meanwhile)."""
    require_root("sandbox.down")
    with _locked(out):
        remaining = release_lease()
        state = load_state()
        if remaining or not state or state.get("started_by") != "fixture":
            return False
        _down(state, out)
        return True


# ---------------------------------------------------------------------------
# invoke tasks
# ---------------------------------------------------------------------------


