#!/usr/bin/env python3
"""Cold bootstrap benchmark: fabship vs pyinfra vs Ansible from a bare host, same package set.

Before every timed run the host is put back to bare: every package the sandbox's
base image does not have is purged (autoremove included), apt's archive of .debs
is emptied (each tool then fetches the same .debs from the sandbox's apt cache
proxy, so the mirror's speed is the same for all), and the bench apps' users,
directories, units, env files and nginx are removed. The package set is the
same for the three: nginx, git, jq, unzip and nodejs (fabship's node app installs
Node.js itself, and npm only when a command uses it: `node server.js` does not;
the peers get nodejs added to their list). Rounds rotate the order of the tools.

Needs a running sandbox and the peers' venv (see bench/compare_peers.py). Uses
one host, which it leaves bootstrapped by the last tool:

    flock /tmp/fabship-integ.lock python3 bench/cold_bootstrap.py --host h8 --rounds 2
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_peers import PEERS, REPO, ansible_cmd, fabship_cmd, pyinfra_cmd, sandbox_hosts, timed  # noqa: E402

PACKAGES = ["nginx", "git", "jq", "unzip", "nodejs"]
SSH_CONFIG = REPO / ".fabship" / "sandbox" / "ssh_config"


def base_packages(host: str) -> list[str]:
    """The packages of the base image the host's root is an overlay of."""
    root = REPO / ".fabship" / "sandbox" / "hosts" / host / "root"
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mnt, fstype, opts = line.split()[:4]
        if mnt == str(root) and fstype == "overlay":
            lower = next(o.split("=", 1)[1] for o in opts.split(",") if o.startswith("lowerdir="))
            out = subprocess.run(["dpkg-query", f"--admindir={lower}/var/lib/dpkg", "-W", "-f=${Package}\n"],
                                 capture_output=True, text=True, check=True).stdout
            return sorted(set(out.split()))
    sys.exit(f"{host}: not a running sandbox host (no overlay root at {root})")


def reset_script(base: list[str]) -> str:
    apps = ("benchfab", "benchapp")
    units = " ".join(f"{a}.service {a}@.service" for a in apps)
    return f"""set -e
export DEBIAN_FRONTEND=noninteractive
for u in {units}; do systemctl disable --now "$u" >/dev/null 2>&1 || true; done
for a in {' '.join(apps)}; do
  rm -rf /etc/systemd/system/$a.service /etc/systemd/system/$a@.service /etc/systemd/system/$a*.d \
         /opt/$a /etc/$a /var/lib/$a
  id -u $a >/dev/null 2>&1 && userdel $a
  getent group $a >/dev/null && groupdel $a
done
systemctl daemon-reload
printf '%s\\n' {' '.join(shlex.quote(p) for p in base)} | sort > /tmp/bench-base-packages
extra=$(dpkg-query -W -f='${{Package}}\\n' | sort | comm -23 - /tmp/bench-base-packages)
[ -z "$extra" ] || apt-get purge -y -q $extra >/dev/null
apt-get autoremove --purge -y -q >/dev/null
apt-get clean
apt-get update -q >/dev/null   # fresh lists for every tool: none of them has to refresh them
rm -rf /etc/nginx /var/log/nginx /var/lib/nginx /tmp/bench-base-packages
left=$(dpkg-query -W -f='${{Package}} ${{db:Status-Abbrev}}\\n' {' '.join(PACKAGES)} 2>/dev/null | grep ' ii' || true)
[ -z "$left" ] || {{ echo "still installed: $left"; exit 1; }}
"""


def ssh(host: str, script: str) -> None:
    r = subprocess.run(["ssh", "-F", str(SSH_CONFIG), host, "bash -s"], input=script, capture_output=True,
                       text=True)
    if r.returncode != 0:
        sys.exit(f"{host}: reset failed ({r.returncode}): {r.stdout[-1500:]}{r.stderr[-1500:]}")


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="h8")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tools", default="fabship,pyinfra,ansible")
    ap.add_argument("--peers-venv", default="/opt/peers")
    args = ap.parse_args()
    hosts, ssh_cfg = sandbox_hosts([args.host])
    peers_bin = Path(args.peers_venv) / "bin"
    base = base_packages(args.host)
    env = dict(os.environ, ANSIBLE_CONFIG=str(PEERS / "ansible.cfg"), BENCH_PACKAGES=" ".join(PACKAGES))
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        tools = {"fabship": (fabship_cmd(tmp, [args.host]), REPO),
                 "pyinfra": (pyinfra_cmd(tmp, hosts, ssh_cfg, peers_bin), PEERS),
                 "ansible": (ansible_cmd(tmp, hosts, ssh_cfg, peers_bin)
                             + ["-e", '{"packages": %s}' % str(PACKAGES).replace("'", '"')], PEERS)}
        chosen = [x for x in args.tools.split(",") if x]
        for name in chosen:
            if name not in tools:
                sys.exit(f"--tools: unknown tool {name!r} (fabship, pyinfra, ansible)")
            if name != "fabship" and not Path(tools[name][0][0]).exists():
                sys.exit(f"{name} is not installed in {args.peers_venv} (see bench/compare_peers.py)")
        for rnd in range(args.rounds):
            order = chosen[rnd % len(chosen):] + chosen[:rnd % len(chosen)]
            for name in order:
                ssh(args.host, reset_script(base))
                before = load()
                cmd, cwd = tools[name]
                dt = timed(cmd, env=env, cwd=cwd)[0]
                times.setdefault(name, []).append(dt)
                print(f"round {rnd + 1} {name:8s} cold bootstrap of {args.host}: {dt:6.1f} s "
                      f"(load {before} -> {load()})", flush=True)
    base_t = statistics.median(times["fabship"]) if "fabship" in times else None
    for name, ts in times.items():
        med = statistics.median(ts)
        ratio = f", {med / base_t:.2f}x fabship" if base_t and name != "fabship" else ""
        print(f"{name:8s} median {med:6.1f} s of {len(ts)} (min {min(ts):.1f}, max {max(ts):.1f}){ratio}")


if __name__ == "__main__":
    main()
