#!/usr/bin/env python3
"""Deploy speed: the sample Node app to 1 sandbox host vs 3 hosts in parallel.

Target (issue 5): 3 hosts take at most 1.5x the time of 1 host. Each round
deploys a new release (alternating v1/v2) and times the whole `fab deploy`
process, as a user sees it.

--source git (default): from a local git repo (bundle upload, npm ci, npm run
build on each host, blue/green switch). The sandbox hosts share the control
machine's CPU cores, so their builds compete for CPU: with 2 cores, 3
concurrent builds cannot take the time of 1 (real hosts have their own CPUs).
--source artifact: the app built once on the control machine (no host build):
what the deploy machinery itself adds per host. The load average is printed
because other work on the machine skews the numbers.

    python3 bench/deploy_parallel.py --hosts h3,h4,h5 --rounds 5 [--source artifact]

At fleet scale (issue 17: 100 endpoints within 3x one), on a sandbox of 100
hosts (`fab sandbox.up --count 100`), with the fleet rollback timed as well:

    python3 bench/deploy_parallel.py --hosts 'h1..h100' --source artifact --target 3 --rollback
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import os

from deploy_common import START, fab, make_repo, prebuilt_artifact, sandbox_addresses, write_inventory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", default="h3,h4,h5", help="three sandbox hosts (the first is the 1-host case)")
    ap.add_argument("--rounds", type=int, default=3, help="timed deploys per case (median is reported)")
    ap.add_argument("--app", default="benchpar", help="app name used on the hosts")
    ap.add_argument("--port", type=int, default=3500)
    ap.add_argument("--source", choices=("git", "artifact"), default="git")
    ap.add_argument("--start", default=START, help="the app's start command (app.start)")
    ap.add_argument("--target", type=float, default=1.5, help="the ratio N hosts / 1 host to pass")
    ap.add_argument("--rollback", action="store_true", help="also time `fab rollback` on 1 host and on all")
    ap.add_argument("--parallel", type=int, default=None, help="fab's --parallel (default: fabship's)")
    a = ap.parse_args()
    hosts = expand_hosts(a.hosts)
    sandbox_addresses(hosts)
    base = Path(tempfile.mkdtemp(prefix="fabship-bench-"))
    inv = str(write_inventory(base, make_repo(base), a.app, a.port, source=a.source, start=a.start))
    print(f"bootstrap {a.app} on {', '.join(hosts)} ...", flush=True)
    width = ["--parallel", str(a.parallel)] if a.parallel else []
    fab("bootstrap", "-i", inv, "--limit", ",".join(hosts), "--no-gate", *width)
    def what(ref):
        if a.source == "git":
            return ["--ref", ref]
        return ["--artifact", str(prebuilt_artifact(base, ref))]

    fab("deploy", "-i", inv, "--limit", ",".join(hosts), "--no-gate", *width, *what("v1"))  # warm-up: caches, units
    one, three = [], []
    refs = ["v2", "v1"]
    for i in range(a.rounds):
        ref = refs[i % 2]
        dt, _ = fab("deploy", "-i", inv, "--limit", hosts[0], "--no-gate", *what(ref))
        one.append(dt)
        dt3, _ = fab("deploy", "-i", inv, "--limit", ",".join(hosts), "--no-gate", *width, *what(ref))
        three.append(dt3)
        print(f"round {i + 1}: 1 host {dt:.2f}s, {len(hosts)} hosts {dt3:.2f}s", flush=True)
    m1, m3 = statistics.median(one), statistics.median(three)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\ndeploy_parallel [{a.source}, start: {a.start}]: 1 host median {m1:.2f}s, {len(hosts)} hosts median {m3:.2f}s, "
          f"ratio {m3 / m1:.2f}x (target <= {a.target}x) -> {'PASS' if m3 <= a.target * m1 else 'FAIL'}; "
          f"{os.cpu_count()} CPUs shared by all hosts, load average {load}")
    if a.rollback:
        # each rollback re-points to the release before the current one (every host has both)
        r1, rn = [], []
        for i in range(a.rounds):
            r1.append(fab("rollback", "-i", inv, "--limit", hosts[0], "--no-gate")[0])
            rn.append(fab("rollback", "-i", inv, "--limit", ",".join(hosts), "--no-gate", *width)[0])
            print(f"rollback round {i + 1}: 1 host {r1[-1]:.2f}s, {len(hosts)} hosts {rn[-1]:.2f}s", flush=True)
        m1, mn = statistics.median(r1), statistics.median(rn)
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"rollback: 1 host median {m1:.2f}s, {len(hosts)} hosts median {mn:.2f}s, ratio {mn / m1:.2f}x; "
              f"load average {load}")


def expand_hosts(spec: str) -> list[str]:
    """'h3,h4' or 'h1..h100' (sandbox host names)."""
    if ".." in spec:
        lo, hi = spec.split("..", 1)
        return [f"h{i}" for i in range(int(lo.lstrip("h")), int(hi.lstrip("h")) + 1)]
    return spec.split(",")


if __name__ == "__main__":
    main()
