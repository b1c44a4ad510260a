"""Detached-process helpers and the local stand-ins for the cloud that
`fab sandbox.up` runs on the sandbox bridge: apt-cacher-ng (packages for hosts
without a route out), moto (EC2 API), Pebble + pebble-challtestsrv (ACME + DNS)
and a Docker registry.

Every stand-in listens on the bridge address only, has its own PID file and log
file under the sandbox state dir, and is waited for with a timeout; a stand-in
that does not come up is reported with the tail of its log.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..core.errors import FabshipError

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "templates"

# Ports on the bridge address (fixed: other engineers code against them).
ACNG_PORT = 3142
MOTO_PORT = 5005
PEBBLE_PORT = 14000
PEBBLE_MGMT_PORT = 15000
CHALLTESTSRV_DNS_PORT = 8053
CHALLTESTSRV_MGMT_PORT = 8055
REGISTRY_PORT = 5000

DEBIAN_MIRROR = "http://deb.debian.org/debian/"
DEBIAN_SECURITY_MIRROR = "http://deb.debian.org/debian-security/"

EC2_REGION = "us-east-1"
SANDBOX_PROJECT_TAG = "fabship-sandbox"

SERVICE_NAMES = ("acng", "challtestsrv", "pebble", "moto", "registry")


def render(template: str, **values) -> str:
    """Render templates/<template> strictly (a missing value is an error)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["yq"] = yaml_scalar
    env.filters["tojson"] = json.dumps
    return env.get_template(template).render(**values)


def yaml_scalar(value) -> str:
    """A YAML scalar for `value`: plain when that reads back as the same string,
    else double-quoted (JSON strings are valid YAML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    import yaml

    text = str(value)
    try:
        if text and yaml.safe_load(text) == text and "\n" not in text and "#" not in text:
            return text
    except yaml.YAMLError:
        pass
    return json.dumps(text)


def write_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Write atomically (temp file + rename) so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# Detached processes, tracked by (pid, start time) so a recycled PID is never
# mistaken for ours.
# --------------------------------------------------------------------------


@dataclass
class Proc:
    pid: int
    start: int  # /proc/PID/stat field 22 (start time in clock ticks since boot)

    def alive(self) -> bool:
        return proc_start_time(self.pid) == self.start


def proc_start_time(pid: int) -> Optional[int]:
    """Start time of a live (non-zombie) process, None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may contain spaces/parens: split after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def proc_cmdline(pid: int) -> List[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def spawn_detached(argv: Sequence[str], log_path: Path, env: Optional[Dict[str, str]] = None,
                   cwd: Optional[Path] = None, cgroups: Sequence[str] = ()) -> Proc:
    """Start argv in its own session, stdio to log_path, and return its PID.

    A throwaway `sh` backgrounds the command and exits, so the daemon is
    re-parented to init: it never becomes a zombie of a long-lived caller
    (pytest), which would make a dead process look alive by PID.
    `cgroups`: cgroup directories the process joins before it execs.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # setsid(1) execs without forking here (a background job of a non-interactive
    # sh is no process group leader), so $! is the daemon's own PID.
    inner = ('for cg in $FABSHIP_CGROUPS; do echo $$ >"$cg/cgroup.procs" || exit 125; done; '
             'unset FABSHIP_CGROUPS; exec "$@"')
    script = 'log=$1; shift; setsid sh -c "$0" sh "$@" </dev/null >>"$log" 2>&1 & echo $!'
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["FABSHIP_CGROUPS"] = " ".join(cgroups)
    out = subprocess.run(["sh", "-c", script, inner, str(log_path), *argv],
                         env=full_env, cwd=cwd, capture_output=True, text=True, check=True)
    pid = int(out.stdout.strip())
    start = proc_start_time(pid)
    if start is None:
        raise FabshipError(f"{argv[0]} exited at once; see {log_path}:\n{log_tail(log_path)}")
    return Proc(pid, start)


def stop_proc(proc: Proc, sig: int = signal.SIGTERM, timeout: float = 10.0) -> bool:
    """Signal a process we started, wait for it, SIGKILL after `timeout`.
    True if it ended on the first signal."""
    if not proc.alive():
        return True
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            return True
        time.sleep(0.05)
    if proc.alive():
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for _ in range(100):
            if not proc.alive():
                break
            time.sleep(0.05)
    return False


def write_pidfile(path: Path, proc: Proc) -> None:
    write_file(path, f"{proc.pid}\n")


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(what: str, check: Callable[[], bool], timeout: float, proc: Optional[Proc] = None,
             log_path: Optional[Path] = None, interval: float = 0.1) -> None:
    """Poll `check` until true; fail early if `proc` died; error shows the log tail."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        dead = proc is not None and not proc.alive()
        if dead or time.monotonic() > deadline:
            why = "exited" if dead else f"did not come up within {timeout:.0f}s"
            tail = f"; log {log_path}:\n{log_tail(log_path)}" if log_path else ""
            raise FabshipError(f"{what} {why}{tail}")
        time.sleep(interval)


def port_holder(port: int, proto: str = "t") -> str:
    """Who listens on a port, for error messages ('' if unknown)."""
    try:
        out = subprocess.run(["ss", f"-l{proto}npH", f"sport = :{port}"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.splitlines()[0] if out else ""


def check_port_free(ip: str, port: int, what: str, flag: str, udp: bool = False) -> None:
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    s = socket.socket(socket.AF_INET, kind)
    try:
        # SO_REUSEADDR: TIME_WAIT leftovers of our previous run are not "in use".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, port))
    except OSError:
        holder = port_holder(port, "u" if udp else "t")
        raise FabshipError(
            f"port {ip}:{port}/{'udp' if udp else 'tcp'} needed by {what} is already in use"
            f"{' (' + holder + ')' if holder else ''}; stop that process or use {flag}")
    finally:
        s.close()


# --------------------------------------------------------------------------
# Stand-ins
# --------------------------------------------------------------------------


@dataclass
class ServiceContext:
    bridge_ip: str
    subnet: str  # e.g. 10.231.0.0/24
    state_dir: Path  # .fabship/sandbox
    cache_dir: Path  # /var/cache/fabship
    hosts: List[Tuple[str, str]]  # (name, address)
    domain_suffix: str = "sandbox.test"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    def pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def logfile(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"


@dataclass
class Service:
    name: str
    pid: int
    start: int
    ports: List[int]
    info: Dict[str, str]  # what the inventory needs (endpoints, CA files)

    @property
    def proc(self) -> Proc:
        return Proc(self.pid, self.start)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Service":
        return cls(**data)


def _launch(ctx: ServiceContext, name: str, argv: Sequence[str], ports: List[int],
            timeout: float, env: Optional[Dict[str, str]] = None,
            ready: Optional[Callable[[], bool]] = None) -> Proc:
    log = ctx.logfile(name)
    with open(log, "a") as f:
        f.write(f"--- {datetime.datetime.now().isoformat(timespec='seconds')} {' '.join(argv)}\n")
    proc = spawn_detached(argv, log, env=env)
    write_pidfile(ctx.pidfile(name), proc)
    check = ready or (lambda: all(tcp_open(ctx.bridge_ip, p) for p in ports))
    try:
        wait_for(f"{name} ({argv[0]})", check, timeout, proc, log)
    except BaseException:
        stop_proc(proc, timeout=3)
        raise
    return proc


def require_binary(binary: str, package: str) -> str:
    import shutil

    path = shutil.which(binary)
    if not path:
        raise FabshipError(f"{binary} not found: install it with `apt-get install {package}`")
    return path


# apt-cacher-ng ------------------------------------------------------------


def start_acng(ctx: ServiceContext) -> Service:
    binary = require_binary("apt-cacher-ng", "apt-cacher-ng")
    check_port_free(ctx.bridge_ip, ACNG_PORT, "apt-cacher-ng", "a free bridge address")
    base = ctx.cache_dir / "acng"
    # The cache survives `down` (speed); the config is ours, not /etc/apt-cacher-ng's,
    # whose Debian backends point at a mirror list unreachable here.
    conf = base / "conf"
    for sub in ("cache", "log", "conf"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    values = dict(cache_dir=base / "cache", log_dir=base / "log", conf_dir=conf,
                  bridge_ip=ctx.bridge_ip, port=ACNG_PORT, pidfile=ctx.run_dir / "acng.daemon.pid",
                  debian_mirror=DEBIAN_MIRROR, security_mirror=DEBIAN_SECURITY_MIRROR)
    write_file(conf / "acng.conf", render("sandbox/acng.conf.j2", **values))
    write_file(conf / "backends_debian", render("sandbox/acng-backends_debian.j2", **values))
    write_file(conf / "backends_debian_security",
               render("sandbox/acng-backends_debian_security.j2", **values))
    proc = _launch(ctx, "acng", [binary, "-c", str(conf)], [ACNG_PORT], timeout=15)
    return Service("acng", proc.pid, proc.start, [ACNG_PORT],
                   {"apt_proxy": f"http://{ctx.bridge_ip}:{ACNG_PORT}"})


# Pebble + challtestsrv ------------------------------------------------------


def _ensure_local_ca(ca_dir: Path, bridge_ip: str) -> Tuple[Path, Path, Path]:
    """A small local CA (kept across runs) and a server cert for the bridge IP.

    Debian's pebble package does not ship upstream's test/certs (minica), so the
    sandbox makes its own: this CA is what clients trust for Pebble's own HTTPS.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_dir.mkdir(parents=True, exist_ok=True)
    ca_cert_path, ca_key_path = ca_dir / "ca.pem", ca_dir / "ca.key"
    now = datetime.datetime.now(datetime.timezone.utc)
    pem = serialization.Encoding.PEM
    if ca_cert_path.exists() and ca_key_path.exists():
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fabship sandbox local CA")])
        ca_cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        write_file(ca_key_path, ca_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode(), 0o600)
        write_file(ca_cert_path, ca_cert.public_bytes(pem).decode())
    # Server cert: re-issued every start (cheap), so a changed bridge IP is covered.
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, bridge_ip)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address(bridge_ip)),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = ca_dir / "server.pem", ca_dir / "server.key"
    write_file(key_path, key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode(), 0o600)
    write_file(cert_path, cert.public_bytes(pem).decode())
    return ca_cert_path, cert_path, key_path


def _http(method: str, url: str, body: Optional[dict] = None, cafile: Optional[Path] = None,
          timeout: float = 5.0) -> bytes:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    ctx = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    # No proxies: the stand-ins are on our own bridge.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=ctx))
    with opener.open(req, timeout=timeout) as resp:
        return resp.read()


def start_challtestsrv(ctx: ServiceContext) -> Service:
    binary = require_binary("pebble-challtestsrv", "pebble")
    check_port_free(ctx.bridge_ip, CHALLTESTSRV_MGMT_PORT, "pebble-challtestsrv", "--no-pebble")
    check_port_free(ctx.bridge_ip, CHALLTESTSRV_DNS_PORT, "pebble-challtestsrv", "--no-pebble",
                    udp=True)
    ip = ctx.bridge_ip
    # Only DNS + management: its HTTP-01/TLS-ALPN listeners would clash with the
    # hosts' own ports and are not needed (hosts answer challenges themselves).
    # Empty default A/AAAA: unknown names must not resolve to the control machine.
    argv = [binary, "-management", f"{ip}:{CHALLTESTSRV_MGMT_PORT}",
            "-dns01", f"{ip}:{CHALLTESTSRV_DNS_PORT}", "-http01", "", "-https01", "",
            "-tlsalpn01", "", "-defaultIPv4", "", "-defaultIPv6", ""]
    proc = _launch(ctx, "challtestsrv", argv, [CHALLTESTSRV_MGMT_PORT], timeout=15)
    try:
        for name, address in ctx.hosts:
            _http("POST", f"http://{ip}:{CHALLTESTSRV_MGMT_PORT}/add-a",
                  {"host": f"{name}.{ctx.domain_suffix}", "addresses": [address]})
    except OSError as e:
        stop_proc(proc, timeout=3)
        raise FabshipError(f"pebble-challtestsrv: adding DNS records failed: {e}")
    return Service("challtestsrv", proc.pid, proc.start,
                   [CHALLTESTSRV_MGMT_PORT, CHALLTESTSRV_DNS_PORT],
                   {"dns_server": f"{ip}:{CHALLTESTSRV_DNS_PORT}"})


def start_pebble(ctx: ServiceContext) -> Service:
    binary = require_binary("pebble", "pebble")
    for port in (PEBBLE_PORT, PEBBLE_MGMT_PORT):
        check_port_free(ctx.bridge_ip, port, "pebble", "--no-pebble")
    ip = ctx.bridge_ip
    pdir = ctx.state_dir / "pebble"
    ca, cert, key = _ensure_local_ca(pdir, ip)
    config = pdir / "pebble-config.json"
    write_file(config, render("sandbox/pebble-config.json.j2", bridge_ip=ip, port=PEBBLE_PORT,
                              mgmt_port=PEBBLE_MGMT_PORT, cert=str(cert), key=str(key)))
    argv = [binary, "-config", str(config), "-dnsserver", f"{ip}:{CHALLTESTSRV_DNS_PORT}"]
    # NOSLEEP: validate at once (default: sleep 0-15 s first). Other hostile
    # defaults (5% nonce rejection) are kept: clients must cope with them.
    proc = _launch(ctx, "pebble", argv, [PEBBLE_PORT, PEBBLE_MGMT_PORT], timeout=15,
                   env={"PEBBLE_VA_NOSLEEP": "1"})
    # The issuing root is regenerated at every start: fetch it now.
    root_file = ctx.state_dir / "pebble-issuer-root.pem"
    try:
        root = _http("GET", f"https://{ip}:{PEBBLE_MGMT_PORT}/roots/0", cafile=ca)
        _http("GET", f"https://{ip}:{PEBBLE_PORT}/dir", cafile=ca)
    except OSError as e:
        stop_proc(proc, timeout=3)
        raise FabshipError(f"pebble: fetching its issuer root failed: {e}; log "
                           f"{ctx.logfile('pebble')}:\n{log_tail(ctx.logfile('pebble'))}")
    write_file(root_file, root.decode())
    api_ca = ctx.state_dir / "pebble-api-ca.pem"
    write_file(api_ca, ca.read_text())
    return Service("pebble", proc.pid, proc.start, [PEBBLE_PORT, PEBBLE_MGMT_PORT], {
        "acme_server": f"https://{ip}:{PEBBLE_PORT}/dir",
        "acme_ca_file": str(api_ca),
        "acme_issuer_root": str(root_file),
    })


# moto (EC2) ------------------------------------------------------------------


def ec2_client(endpoint: str):
    import boto3

    # Dummy credentials: moto accepts any; never let real ones leak to it.
    return boto3.client("ec2", region_name=EC2_REGION, endpoint_url=endpoint,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _seed_ec2(endpoint: str, subnet: str, hosts: List[Tuple[str, str]]) -> None:
    ec2 = ec2_client(endpoint)
    net = ipaddress.ip_network(subnet)
    vpc_cidr = str(net.supernet(new_prefix=16)) if net.prefixlen > 16 else str(net)
    vpc = ec2.create_vpc(CidrBlock=vpc_cidr)["Vpc"]["VpcId"]
    sn = ec2.create_subnet(VpcId=vpc, CidrBlock=str(net))["Subnet"]["SubnetId"]
    images = ec2.describe_images(Owners=["amazon"]).get("Images") or []
    image = images[0]["ImageId"] if images else "ami-0fab5000000000000"
    # One at a time: each instance gets the private IP of its real sandbox host.
    for name, address in hosts:
        ec2.run_instances(
            ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.micro", SubnetId=sn,
            PrivateIpAddress=address,
            TagSpecifications=[{"ResourceType": "instance", "Tags": [
                {"Key": "Name", "Value": f"{SANDBOX_PROJECT_TAG}-{name}"},
                {"Key": "Project", "Value": SANDBOX_PROJECT_TAG}]}])


def start_moto(ctx: ServiceContext) -> Service:
    try:
        import moto.server  # noqa: F401  (checked here, run as its own process below)
    except ImportError:
        raise FabshipError("moto server not installed: `pip install 'moto[server]'` (or --no-moto)")
    check_port_free(ctx.bridge_ip, MOTO_PORT, "moto", "--no-moto")
    endpoint = f"http://{ctx.bridge_ip}:{MOTO_PORT}"
    argv = [sys.executable, "-m", "moto.server", "-H", ctx.bridge_ip, "-p", str(MOTO_PORT)]
    proc = _launch(ctx, "moto", argv, [MOTO_PORT], timeout=30)
    try:
        _seed_ec2(endpoint, ctx.subnet, ctx.hosts)
    except Exception as e:  # botocore errors are many types; all mean the same here
        stop_proc(proc, timeout=3)
        raise FabshipError(f"moto: creating the EC2 instances failed: {e}")
    return Service("moto", proc.pid, proc.start, [MOTO_PORT], {"moto_endpoint": endpoint})


# Docker registry -----------------------------------------------------------------


def start_registry(ctx: ServiceContext) -> Service:
    binary = require_binary("docker-registry", "docker-registry")
    check_port_free(ctx.bridge_ip, REGISTRY_PORT, "docker-registry", "--no-registry")
    storage = ctx.cache_dir / "registry"
    storage.mkdir(parents=True, exist_ok=True)
    config = ctx.state_dir / "registry" / "config.yml"
    write_file(config, render("sandbox/registry-config.yml.j2", bridge_ip=ctx.bridge_ip,
                              port=REGISTRY_PORT, storage=str(storage)))
    addr = f"{ctx.bridge_ip}:{REGISTRY_PORT}"

    def ready() -> bool:
        try:
            return _http("GET", f"http://{addr}/v2/", timeout=1) is not None
        except OSError:
            return False

    proc = _launch(ctx, "registry", [binary, "serve", str(config)], [REGISTRY_PORT],
                   timeout=15, ready=ready)
    return Service("registry", proc.pid, proc.start, [REGISTRY_PORT], {"registry": addr})


# (port, udp?, flag to avoid it) per stand-in: checked before anything boots.
PORTS: Dict[str, List[Tuple[int, bool, str]]] = {
    "acng": [(ACNG_PORT, False, "a free bridge address")],
    "challtestsrv": [(CHALLTESTSRV_MGMT_PORT, False, "--no-pebble"),
                     (CHALLTESTSRV_DNS_PORT, True, "--no-pebble")],
    "pebble": [(PEBBLE_PORT, False, "--no-pebble"), (PEBBLE_MGMT_PORT, False, "--no-pebble")],
    "moto": [(MOTO_PORT, False, "--no-moto")],
    "registry": [(REGISTRY_PORT, False, "--no-registry")],
}


def check_ports(ctx: ServiceContext, names: Sequence[str]) -> None:
    for name in names:
        for port, udp, flag in PORTS[name]:
            check_port_free(ctx.bridge_ip, port, name, flag, udp=udp)


STARTERS: Dict[str, Callable[[ServiceContext], Service]] = {
    "acng": start_acng,
    "challtestsrv": start_challtestsrv,
    "pebble": start_pebble,
    "moto": start_moto,
    "registry": start_registry,
}


def service_health(ctx: ServiceContext, svc: Service) -> Dict[str, object]:
    alive = svc.proc.alive()
    # The DNS port is UDP: only the TCP ports can be probed by connecting.
    tcp_ports = [p for p in svc.ports if p != CHALLTESTSRV_DNS_PORT]
    answering = alive and all(tcp_open(ctx.bridge_ip, p) for p in tcp_ports)
    return {"name": svc.name, "pid": svc.pid, "alive": alive, "answering": answering,
            "ports": svc.ports, **svc.info}


def stop_service(ctx: ServiceContext, svc: Service) -> bool:
    clean = stop_proc(svc.proc, timeout=10)
    for f in (ctx.pidfile(svc.name), ctx.run_dir / f"{svc.name}.daemon.pid"):
        try:
            f.unlink()
        except FileNotFoundError:
            pass
    return clean
