#!/usr/bin/env python3
"""Rollback after a failed health check (issue 5: the old release is
restored within 2 s plus the health-check timeout).

Two apps on one sandbox host, each deployed good (v1) and then broken (its
/health answers 503), with a client polling /version through nginx:

- blue_green: the broken release starts beside v1 and never takes traffic,
  so the old release is never gone: downtime must be 0.
- restart: the old process is stopped to start the broken one; downtime is
  the window from the first failed request to the first v1 answer again.
  Budget = the health-check timeout (retries x interval, plus one request
  timeout) + 2 s.

    python3 bench/rollback_time.py --host h3
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from deploy_common import Client, fab, make_repo, sandbox_addresses, write_inventory

HEALTH = {"retries": 6, "interval": 0.5, "timeout": 2}


def downtime(client: Client) -> tuple[float, int]:
    """(longest window without a good 'v1' answer, failed requests)."""
    res = client.results
    worst, start = 0.0, None
    for t, ok, body in res:
        good = ok and body == "v1"
        if not good and start is None:
            start = t
        elif good and start is not None:
            worst = max(worst, t - start)
            start = None
    return worst, sum(1 for _, ok, _ in res if not ok)


def one(strategy: str, host: str, addr: str, app: str, port: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="fabship-bench-"))
    inv = str(write_inventory(base, make_repo(base), app, port, strategy=strategy, health=HEALTH))
    fab("bootstrap", "-i", inv, "--limit", host, "--no-gate")
    fab("deploy", "-i", inv, "--limit", host, "--no-gate", "--ref", "v1")
    c = Client(host, addr, app, pause=0.02).start()
    time.sleep(0.5)
    dt, r = fab("deploy", "-i", inv, "--limit", host, "--no-gate", "--ref", "broken", check=False)
    time.sleep(1)
    c.finish()
    assert r.returncode != 0, "the broken deploy should fail"
    down, failed = downtime(c)
    budget = HEALTH["retries"] * HEALTH["interval"] + HEALTH["timeout"]
    verdict = "PASS" if down <= budget + 2 else "FAIL"
    print(f"rollback_time [{strategy}]: broken deploy exited {r.returncode} after {dt:.2f}s; old release not "
          f"serving for {down:.2f}s ({failed} failed of {len(c.results)} requests); budget health-check "
          f"{budget:.1f}s + 2s -> {verdict}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="h3")
    a = ap.parse_args()
    addr = sandbox_addresses([a.host])[a.host]
    one("blue_green", a.host, addr, "benchrbg", 3700)
    one("restart", a.host, addr, "benchrrs", 3800)


if __name__ == "__main__":
    main()
