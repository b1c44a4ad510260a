#!/usr/bin/env python3
"""Zero downtime: clients send requests continuously through nginx on the
sandbox hosts (their addresses only) during 10 consecutive blue/green
deploys; counts failed requests and the longest gap between two successful
responses.

Target (issue 5): zero failed requests.

    python3 bench/zero_downtime.py --hosts h3,h4,h5 --deploys 10
"""
from __future__ import annotations

import argparse
import collections
import tempfile
import time
from pathlib import Path

from deploy_common import Client, fab, make_repo, sandbox_addresses, write_inventory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", default="h3,h4,h5")
    ap.add_argument("--deploys", type=int, default=10)
    ap.add_argument("--clients", type=int, default=2, help="concurrent clients per host")
    ap.add_argument("--app", default="benchzd")
    ap.add_argument("--port", type=int, default=3600)
    a = ap.parse_args()
    hosts = a.hosts.split(",")
    addrs = sandbox_addresses(hosts)
    base = Path(tempfile.mkdtemp(prefix="fabship-bench-"))
    inv = str(write_inventory(base, make_repo(base), a.app, a.port))
    limit = ",".join(hosts)
    print(f"bootstrap + first deploy of {a.app} on {limit} ...", flush=True)
    fab("bootstrap", "-i", inv, "--limit", limit, "--no-gate")
    fab("deploy", "-i", inv, "--limit", limit, "--no-gate", "--ref", "v1")
    clients = [Client(h, addrs[h], a.app).start() for h in hosts for _ in range(a.clients)]
    time.sleep(1)
    times = []
    for i in range(a.deploys):
        ref = "v2" if i % 2 == 0 else "v1"
        dt, _ = fab("deploy", "-i", inv, "--limit", limit, "--no-gate", "--ref", ref)
        times.append(dt)
        print(f"deploy {i + 1}/{a.deploys} ({ref}): {dt:.2f}s", flush=True)
    time.sleep(1)
    for c in clients:
        c.finish()
    total = sum(len(c.results) for c in clients)
    failed = [f for c in clients for f in c.failures()]
    gap = max(c.longest_gap() for c in clients)
    versions = collections.Counter(r[2] for c in clients for r in c.results if r[1])
    print(f"\nzero_downtime: {a.deploys} blue/green deploys on {len(hosts)} hosts, {total} requests "
          f"({len(clients)} clients, new connection each), failed {len(failed)}, longest gap between successes "
          f"{gap * 1000:.0f} ms; versions seen {dict(versions)} -> {'PASS' if not failed else 'FAIL'}")
    for t, _, why in failed[:10]:
        print(f"  failure: {why}")


if __name__ == "__main__":
    main()
