#!/usr/bin/env python3
"""Idempotent-run benchmark: fabship vs pyinfra vs Ansible on the same sandbox hosts.

The same work for each tool (packages, app user and group, directories, a 0600 env
file, a systemd unit, an nginx site): one converging run, then --runs timed
idempotent runs; prints the median wall time (whole process) and ratios.

Needs a running sandbox (`fab sandbox.up --count 3`) and the peers in a separate
venv: `python3 -m venv /opt/peers && /opt/peers/bin/pip install pyinfra ansible-core`
(not a fabship dependency; kamal is Ruby and cannot be installed here).

    python3 bench/compare_peers.py --hosts h1,h2,h3 --runs 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PEERS = Path(__file__).resolve().parent / "peers"


def sandbox_hosts(names):
    inv = yaml.safe_load((REPO / "inventories" / "sandbox.yaml").read_text())
    static = inv["hosts"]["static"]
    ssh = inv["ssh"]
    return [(n, static[n]["address"]) for n in names], ssh


def timed(cmd, env=None, cwd=None):
    t0 = time.monotonic()
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        sys.exit(f"benchmark command failed ({r.returncode}): {' '.join(map(str, cmd))}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return dt, r.stdout


def fabship_cmd(tmp: Path, names):
    inv = tmp / "bench-fabship.yaml"
    inv.write_text(yaml.safe_dump({
        "include": [str(REPO / "inventories" / "sandbox.yaml")],
        "packages": ["nginx", "git", "jq", "unzip"],
        "app": {"name": "benchfab", "kind": "node", "port": 3998, "start": "node server.js"},  # a unit too, like the peers
        "nginx": {"server_name": "benchfab.local"},
        "env": {"path": "/etc/benchfab/benchfab.env", "group": "benchfab", "mode": "0600",
                "source": {"type": "file", "file": str(PEERS / "bench.env")}},
        "deploy": {"source": "artifact", "strategy": "restart"},  # one plain unit, as the peers write
    }))
    return ["fab", "bootstrap", "-i", str(inv), "--limit", ",".join(names), "--no-gate"]


def pyinfra_cmd(tmp: Path, hosts, ssh, peers_bin: Path):
    inv = tmp / "pyinfra_inventory.py"
    entries = ",\n".join(
        f"    ({addr!r}, {{'ssh_user': 'root', 'ssh_key': {ssh['key_file']!r}, "
        f"'ssh_known_hosts_file': {ssh['known_hosts']!r}, 'ssh_strict_host_key_checking': 'yes'}})"
        for _, addr in hosts)
    inv.write_text(f"hosts = [\n{entries}\n]\n")
    return [str(peers_bin / "pyinfra"), "-y", "--parallel", "10", str(inv), str(PEERS / "pyinfra_deploy.py")]


def ansible_cmd(tmp: Path, hosts, ssh, peers_bin: Path):
    inv = tmp / "ansible_hosts.ini"
    lines = ["[all]"] + [f"{n} ansible_host={addr}" for n, addr in hosts]
    lines += ["[all:vars]", "ansible_user=root", f"ansible_ssh_private_key_file={ssh['key_file']}",
              f"ansible_ssh_common_args='-o UserKnownHostsFile={ssh['known_hosts']} -o StrictHostKeyChecking=yes'"]
    inv.write_text("\n".join(lines) + "\n")
    return [str(peers_bin / "ansible-playbook"), "-i", str(inv), str(PEERS / "ansible_playbook.yml")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", default="h1,h2,h3")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--peers-venv", default="/opt/peers")
    args = ap.parse_args()
    names = args.hosts.split(",")
    hosts, ssh = sandbox_hosts(names)
    peers_bin = Path(args.peers_venv) / "bin"
    env = dict(os.environ, ANSIBLE_CONFIG=str(PEERS / "ansible.cfg"))
    results = {}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        tools = {"fabship": (fabship_cmd(tmp, names), REPO)}
        if (peers_bin / "pyinfra").exists():
            tools["pyinfra"] = (pyinfra_cmd(tmp, hosts, ssh, peers_bin), PEERS)
        if (peers_bin / "ansible-playbook").exists():
            tools["ansible"] = (ansible_cmd(tmp, hosts, ssh, peers_bin), PEERS)
        for tool, (cmd, cwd) in tools.items():
            timed(cmd, env=env, cwd=cwd)  # converge first
            times = [timed(cmd, env=env, cwd=cwd)[0] for _ in range(args.runs)]
            results[tool] = statistics.median(times)
            print(f"{tool:8s} idempotent run on {len(hosts)} hosts: median {results[tool]:.2f}s "
                  f"(min {min(times):.2f}s, max {max(times):.2f}s, {args.runs} runs)", flush=True)
    base = results["fabship"]
    for tool, t in results.items():
        if tool != "fabship":
            print(f"{tool} / fabship = {t / base:.1f}x")


if __name__ == "__main__":
    main()
