#!/usr/bin/env python3
"""Idempotent bootstrap at fleet scale: fabship vs pyinfra vs Ansible on 100-500 SSH endpoints.

The endpoints: the sandbox hosts (8 Debian hosts on this machine) each answer on
port 22 and on extra ports served by extra sshd processes this script starts on
the host (`sshd -f /run/fabship-bench/sshd-N.conf`: 16 inet ports each, sshd's
limit of listen sockets; MaxStartups raised so a burst of handshakes is not
dropped; the host's own sshd and its config are not touched). Each endpoint is a
separate TCP connection, key exchange, host key check, authentication and session,
named by its own `[IP]:PORT` known_hosts line (the host's key). The endpoints
share 8 hosts and this machine's CPU cores, so the wall times are worse than a
real fleet's: read the control-machine CPU per endpoint next to them.

Every tool does the same work (bench/peers/: packages, app user and group, dirs, a
0600 env file, a systemd unit, an nginx site; fabship's bootstrap also checks
swap, the runtime and its layout), converged first on port 22 of each host (one
run per host, so no two endpoints of a host write at once), then one untimed
run over all endpoints, then --runs rounds; each round runs every tool once, in
a rotating order (paired runs: a load spike hits all tools of a round). Printed:
per tool the median wall time, the ratio to fabship, the control-machine CPU
(user+sys of the tool and every process it waited for: ssh clients, forks)
per endpoint, the peak RSS of its largest process and the peak of the sum of
its process tree (sampled every 50 ms), the sandbox hosts' CPU per endpoint (their
cgroups' cpuacct: sshd, the session, every command run; the other engineers' tests
on the fleet count too, so hold the lock), and the load average.

Run it with the integration lock held and the machine quiet (load < 1.5):

    flock /tmp/fabship-integ.lock python3 bench/scale_fleet.py --endpoints 100 --runs 3
    flock /tmp/fabship-integ.lock python3 bench/scale_fleet.py --endpoints 500 --runs 1 --tools fabship

The peers live in their own venv (`python3 -m venv /opt/peers && /opt/peers/bin/pip
install pyinfra ansible-core`); a tool that is not installed is left out.
The extra sshd processes are stopped and their files removed at the end, also on
Ctrl-C (`--keep-endpoints` leaves them for the next run; `--teardown` only removes them).
"""
from __future__ import annotations

import argparse
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PEERS = Path(__file__).resolve().parent / "peers"
SANDBOX = REPO / "inventories" / "sandbox.yaml"
BASE_PORT = 20000  # endpoint ports: BASE_PORT + 100 * sshd index + k
PORTS_PER_SSHD = 16  # sshd: "Too many listen sockets" past 16 (AddressFamily inet: one per port)
RUN_DIR = "/run/fabship-bench"
# the interpreter's own `fab`, not a version manager's shim (a shell script in front of it)
FAB = str(Path(sys.executable).parent / "fab") if (Path(sys.executable).parent / "fab").exists() else "fab"


def sandbox() -> tuple[list[tuple[str, str]], dict]:
    if not SANDBOX.exists():
        sys.exit(f"{SANDBOX} is missing: bring the sandbox up first (fab sandbox.up)")
    inv = yaml.safe_load(SANDBOX.read_text())
    static = inv["hosts"]["static"]
    hosts = [(n, v["address"] if isinstance(v, dict) else v) for n, v in static.items()]
    return hosts, inv["ssh"]


class Remote:
    """Root shell on a sandbox host through OpenSSH (strict host keys)."""

    def __init__(self, address: str, ssh: dict):
        self.address, self.ssh = address, ssh

    def run(self, script: str, check: bool = True) -> str:
        r = subprocess.run(
            ["ssh", "-i", self.ssh["key_file"], "-o", f"UserKnownHostsFile={self.ssh['known_hosts']}",
             "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", f"root@{self.address}", "sh -s"],
            input=script, capture_output=True, text=True, timeout=120)
        if check and r.returncode != 0:
            sys.exit(f"{self.address}: endpoint setup failed ({r.returncode}): {r.stderr.strip()[-500:]}")
        return r.stdout


def sshd_conf(ports: list[int], index: int) -> str:
    lines = ["# fabship bench (bench/scale_fleet.py): extra SSH endpoints; removed by the bench",
             "AddressFamily inet", *(f"Port {p}" for p in ports),
             f"PidFile {RUN_DIR}/sshd-{index}.pid", "MaxStartups 600:30:1200", "MaxSessions 20",
             "LogLevel ERROR",
             # the host's own settings (host key, key-only root login, sftp) after ours: sshd keeps
             # the first value it reads for a keyword
             "Include /etc/ssh/sshd_config"]
    return "\n".join(lines) + "\n"


def endpoint_ports(per_host: int) -> list[list[int]]:
    """The extra ports of one host, grouped by sshd process."""
    extra = max(0, per_host - 1)
    groups = []
    for i in range(math.ceil(extra / PORTS_PER_SSHD)):
        n = min(PORTS_PER_SSHD, extra - i * PORTS_PER_SSHD)
        groups.append([BASE_PORT + 100 * i + k for k in range(n)])
    return groups


def setup_endpoints(remote: Remote, groups: list[list[int]]) -> None:
    parts = [teardown_script(), f"mkdir -p {RUN_DIR}"]
    for i, ports in enumerate(groups):
        conf = f"{RUN_DIR}/sshd-{i}.conf"
        parts.append(f"cat > {conf} <<'EOF'\n{sshd_conf(ports, i)}EOF")
        parts.append(f"/usr/sbin/sshd -t -f {conf} && /usr/sbin/sshd -f {conf}")
    # wait until every port listens
    allp = " ".join(str(p) for g in groups for p in g)
    parts.append(f"for p in {allp}; do for t in $(seq 50); do "
                 f"ss -ltnH \"sport = :$p\" | grep -q . && break; sleep 0.1; done; done")
    remote.run("set -e\n" + "\n".join(parts) + "\n")


def teardown_script() -> str:
    return (f"for f in {RUN_DIR}/sshd-*.pid; do [ -f \"$f\" ] && kill \"$(cat \"$f\")\" 2>/dev/null; done; "
            f"rm -rf {RUN_DIR}; true")


def write_known_hosts(path: Path, ssh: dict, endpoints: list[tuple[str, str, int]]) -> None:
    keys = {}
    for line in Path(ssh["known_hosts"]).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and not line.startswith("#"):
            keys[parts[0]] = f"{parts[1]} {parts[2]}"
    lines = []
    for _name, addr, port in endpoints:
        lines.append(f"{addr if port == 22 else f'[{addr}]:{port}'} {keys[addr]}")
    path.write_text("\n".join(lines) + "\n")


# -- the tools -----------------------------------------------------------------------

def fabship_cmd(tmp: Path, endpoints, ssh: dict, known_hosts: Path, parallel: int | None):
    inv = tmp / "scale-fabship.yaml"
    inv.write_text(yaml.safe_dump({
        "include": [str(SANDBOX)],
        "hosts": {"static": {n: {"address": a, "port": p} for n, a, p in endpoints}},
        "ssh": {"known_hosts": str(known_hosts)},
        "packages": ["nginx", "git", "jq", "unzip"],
        "app": {"name": "benchfab", "kind": "node", "port": 3998, "start": "node server.js"},
        "nginx": {"server_name": "benchfab.local"},
        "env": {"path": "/etc/benchfab/benchfab.env", "group": "benchfab", "mode": "0600",
                "source": {"type": "file", "file": str(PEERS / "bench.env")}},
        "deploy": {"source": "artifact", "strategy": "restart"},
    }))

    def cmd(names):
        c = [FAB, "bootstrap", "-i", str(inv), "--limit", ",".join(names), "--no-gate"]
        return c + (["--parallel", str(parallel)] if parallel else [])
    return cmd, REPO


def pyinfra_cmd(tmp: Path, endpoints, ssh: dict, known_hosts: Path, parallel: int | None, peers_bin: Path):
    by_name = {e[0]: e for e in endpoints}

    def cmd(names):  # an inventory of exactly these endpoints (pyinfra's --limit takes one pattern)
        inv = tmp / f"pyinfra_inventory_{len(names)}.py"
        entries = ",\n".join(
            f"    ({n!r}, {{'ssh_hostname': {a!r}, 'ssh_port': {p}, 'ssh_user': 'root', "
            f"'ssh_key': {ssh['key_file']!r}, 'ssh_known_hosts_file': {str(known_hosts)!r}, "
            f"'ssh_strict_host_key_checking': 'yes'}})"
            for n, a, p in (by_name[x] for x in names))
        inv.write_text(f"hosts = [\n{entries}\n]\n")
        return [str(peers_bin / "pyinfra"), "-y", "--parallel", str(parallel or 10), str(inv),
                str(PEERS / "pyinfra_deploy.py")]
    return cmd, PEERS


def ansible_cmd(tmp: Path, endpoints, ssh: dict, known_hosts: Path, parallel: int | None, peers_bin: Path):
    by_name = {e[0]: e for e in endpoints}

    def cmd(names):
        inv = tmp / f"ansible_hosts_{len(names)}.ini"
        lines = ["[all]"] + [f"{n} ansible_host={a} ansible_port={p}" for n, a, p in (by_name[x] for x in names)]
        lines += ["[all:vars]", "ansible_user=root", f"ansible_ssh_private_key_file={ssh['key_file']}",
                  f"ansible_ssh_common_args='-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes'"]
        inv.write_text("\n".join(lines) + "\n")
        return [str(peers_bin / "ansible-playbook"), "-i", str(inv), "--forks", str(parallel or 10),
                str(PEERS / "ansible_playbook.yml")]
    return cmd, PEERS


# -- measuring -------------------------------------------------------------------------

def _tree_rss(root: int) -> int:
    """Sum of the RSS of `root` and its descendants (kB), from /proc."""
    kids: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read().rsplit(")", 1)[1].split()
            kids.setdefault(int(st[1]), []).append(int(d))
            rss[int(d)] = int(st[21]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [root]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(kids.get(p, []))
    return total


def host_cpu(hosts) -> float | None:
    """CPU seconds the sandbox hosts used so far (each host's cgroup, cpuacct v1), or None."""
    try:
        return sum(int(Path(f"/sys/fs/cgroup/cpuacct/fabship-sandbox/{n}/cpuacct.usage").read_text())
                   for n, _ in hosts) / 1e9
    except (OSError, ValueError):
        return None


def measure(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> dict:
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.wait(0.05):
            peak[0] = max(peak[0], _tree_rss(p.pid))

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out_chunks = []
    reader = threading.Thread(target=lambda: out_chunks.append(p.stdout.read()), daemon=True)
    reader.start()
    _pid, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    done.set()
    reader.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    out = (out_chunks[0] if out_chunks else b"").decode(errors="replace")
    if p.returncode != 0 and check:
        sys.exit(f"benchmark command failed ({p.returncode}): {' '.join(cmd[:4])} ...\n{out[-3000:]}")
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "maxrss_mb": ru.ru_maxrss / 1024,
            "tree_mb": peak[0] / 1024, "rc": p.returncode, "out": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoints", type=int, default=100)
    ap.add_argument("--hosts", default="", help="sandbox hosts to spread them over (default: all)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tools", default="fabship,pyinfra,ansible")
    ap.add_argument("--parallel", type=int, default=None,
                    help="fabship --parallel, pyinfra --parallel, ansible --forks (default: fabship's own "
                         "default; 10 for the peers, as bench/compare_peers.py)")
    ap.add_argument("--peer-parallel", type=int, default=None, help="the peers' width when it should differ")
    ap.add_argument("--peers-venv", default="/opt/peers")
    ap.add_argument("--no-converge", action="store_true", help="the hosts are converged already (a run before)")
    ap.add_argument("--sweep", default="", help="fabship only: time these --parallel widths instead "
                                                "(e.g. 10,25,50,100), paired per round")
    ap.add_argument("--py-spy", metavar="FILE", help="after the rounds, one more fabship run under py-spy "
                                                      "(every thread; collapsed stacks to FILE)")
    ap.add_argument("--keep-endpoints", action="store_true")
    ap.add_argument("--teardown", action="store_true", help="only stop extra sshds left by --keep-endpoints")
    a = ap.parse_args()

    all_hosts, ssh = sandbox()
    hosts = [h for h in all_hosts if not a.hosts or h[0] in a.hosts.split(",")]
    remotes = {n: Remote(addr, ssh) for n, addr in hosts}
    if a.teardown:
        for r in remotes.values():
            r.run(teardown_script(), check=False)
        return
    per_host = math.ceil(a.endpoints / len(hosts))
    groups = endpoint_ports(per_host)
    endpoints = []  # (name, address, port), the host's port 22 first
    for n, addr in hosts:
        ports = [22] + [p for g in groups for p in g]
        endpoints += [(f"{n}-{p}", addr, p) for p in ports]
    endpoints = sorted(endpoints, key=lambda e: (e[2], e[0]))[: a.endpoints]  # spread evenly over the hosts
    base = [e[0] for e in endpoints if e[2] == 22]
    names = [e[0] for e in endpoints]

    def teardown(*_):
        if not a.keep_endpoints:
            for r in remotes.values():
                r.run(teardown_script(), check=False)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    peers_bin = Path(a.peers_venv) / "bin"
    env = dict(os.environ, ANSIBLE_CONFIG=str(PEERS / "ansible.cfg"))
    load0 = os.getloadavg()
    try:
        print(f"{len(endpoints)} endpoints on {len(hosts)} hosts ({per_host} per host: port 22 and "
              f"{sum(map(len, groups))} extra in {len(groups)} sshd process(es) each); load {load0[0]:.2f}",
              flush=True)
        threads = [threading.Thread(target=setup_endpoints, args=(r, groups)) for r in remotes.values()]
        [t.start() for t in threads]
        [t.join() for t in threads]
        with tempfile.TemporaryDirectory(prefix="fabship-scale-") as t:
            tmp = Path(t)
            env["FABSHIP_RUNS_DIR"] = str(tmp / "runs")
            kh = tmp / "known_hosts"
            write_known_hosts(kh, ssh, endpoints)
            want = a.tools.split(",")
            peer_par = a.peer_parallel or a.parallel or 10
            tools = {}
            if "fabship" in want:
                tools["fabship"] = fabship_cmd(tmp, endpoints, ssh, kh, a.parallel)
            if "pyinfra" in want and (peers_bin / "pyinfra").exists():
                tools["pyinfra"] = pyinfra_cmd(tmp, endpoints, ssh, kh, peer_par, peers_bin)
            if "ansible" in want and (peers_bin / "ansible-playbook").exists():
                tools["ansible"] = ansible_cmd(tmp, endpoints, ssh, kh, peer_par, peers_bin)
            if a.sweep:  # fabship at several widths: each width is a "tool" of its own
                tools = {f"fabship -p {w}": fabship_cmd(tmp, endpoints, ssh, kh, int(w)) for w in a.sweep.split(",")}
            for tool, (cmd, cwd) in tools.items():
                if not a.no_converge:
                    print(f"{tool}: converge on {len(base)} hosts", flush=True)
                    measure(cmd(base), cwd, env)
                print(f"{tool}: one untimed run on {len(names)} endpoints", flush=True)
                # several endpoints of one host converge what the base run left at once: a peer may
                # trip over itself there (concurrent `systemctl enable`); the timed runs must not
                m = measure(cmd(names), cwd, env, check=False)
                if m["rc"]:
                    print(f"  (exit {m['rc']}; once more)", flush=True)
                    measure(cmd(names), cwd, env, check=False)
                if a.sweep:
                    break  # one warm-up is enough for every width
            res = {tool: [] for tool in tools}
            order = list(tools)
            for i in range(a.runs):
                for tool in order[i % len(order):] + order[: i % len(order)]:
                    cmd, cwd = tools[tool]
                    h0 = host_cpu(hosts)
                    m = measure(cmd(names), cwd, env, check=False)
                    m["host_cpu"] = host_cpu(hosts) - h0 if h0 is not None else None
                    res[tool].append(m)
                    if m["rc"]:  # kept (a peer that fails on some endpoints still did the run), but said
                        tail = " | ".join(ln.strip() for ln in m["out"].splitlines()[-4:])
                        print(f"round {i + 1} {tool}: exit {m['rc']}: {tail[-300:]}", flush=True)
                    print(f"round {i + 1} {tool:8s} {m['wall']:7.2f}s wall, cpu {m['cpu']:6.2f}s "
                          f"({1000 * m['cpu'] / len(names):5.1f} ms/endpoint), peak rss {m['maxrss_mb']:.0f} MB "
                          f"(tree {m['tree_mb']:.0f} MB), load {os.getloadavg()[0]:.2f}"
                          + (f", hosts' cpu {m['host_cpu']:.2f}s ({1000 * m['host_cpu'] / len(names):.1f} ms/endpoint)"
                             if m["host_cpu"] is not None else ""), flush=True)
            if a.py_spy and "fabship" in tools:
                cmd, cwd = tools["fabship"]
                measure(["py-spy", "record", "--nonblocking", "-r", "250", "-f", "raw", "-o", a.py_spy, "--",
                         *cmd(names)], cwd, env)
                print(f"py-spy: {a.py_spy}", flush=True)
        load1 = os.getloadavg()
        print(f"\nidempotent bootstrap, {len(names)} endpoints on {len(hosts)} hosts, {a.runs} paired runs, "
              f"load {load0[0]:.2f} -> {load1[0]:.2f} (1 min), {os.cpu_count()} cores")
        first = next(iter(res))
        fab = statistics.median(m["wall"] for m in res[first]) if first.startswith("fabship") else None
        for tool, ms in res.items():
            wall = statistics.median(m["wall"] for m in ms)
            cpu = statistics.median(m["cpu"] for m in ms)
            ratio = f"{wall / fab:5.2f}x {first}" if fab else ""
            failed = sum(1 for m in ms if m["rc"])
            hc = [m["host_cpu"] for m in ms if m["host_cpu"] is not None]
            print(f"  {tool:8s} median {wall:7.2f}s  {ratio}  cpu {1000 * cpu / len(names):6.1f} ms/endpoint  "
                  f"peak rss {max(m['maxrss_mb'] for m in ms):4.0f} MB (tree {max(m['tree_mb'] for m in ms):4.0f} MB)"
                  + (f"  hosts' cpu {1000 * statistics.median(hc) / len(names):.1f} ms/endpoint" if hc else "")
                  + (f"  ({failed} of {len(ms)} runs exited non-zero)" if failed else ""))
        if fab:
            for tool, ms in res.items():
                if tool != first:
                    print(f"  {first} / {tool} = {fab / statistics.median(m['wall'] for m in ms):.3f}")
    finally:
        teardown()


if __name__ == "__main__":
    main()
