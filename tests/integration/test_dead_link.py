"""A host whose link dies in the middle of a deploy's build (issue 18): the
control side of its veth goes down, so packets vanish with no reset, as with a
pulled cable. fab must fail that host within ssh.keepalive x (dead_after + 1)
(plus the rest of the run), roll the other host back (--max-fail 0), and leave
the dead host's lock, which `fab releases` reports as stale once the link is
back and `fab unlock` clears.

Hosts h4 and h5, app `deadlink` (its own name, ports and nginx site, so the
deploy tests' `shipdemo` on the same hosts is untouched)."""
from __future__ import annotations

import subprocess
import time

import pytest
from test_deploy_support import (
    fab, fab_popen, lock_exists, make_repo, must, out, served_version, wait_for, write_inventory,
)

from tasks.sandbox import fleet as sandbox

HOSTS = ["h4", "h5"]
LIMIT = ",".join(HOSTS)
APP = "deadlink"
ROOT = f"/opt/{APP}"
DEAD = "h5"
KEEPALIVE, DEAD_AFTER = 2, 3
SLOW = f"/tmp/{APP}-slow-build"  # on DEAD only: its build sleeps, the other host's does not
LINK = [f"ssh.keepalive={KEEPALIVE}", f"ssh.dead_after={DEAD_AFTER}"]


def veth_of(name: str) -> str:
    """The bridge (control) side of the host's veth pair, from the sandbox state."""
    state = sandbox.load_state() or {}
    for h in state.get("hosts", []):
        if h.get("name") == name and h.get("veth"):
            return h["veth"]
    pytest.skip(f"no veth recorded for {name} in the sandbox state")


def link(name: str, up: bool) -> None:
    subprocess.run(["ip", "link", "set", "dev", veth_of(name), "up" if up else "down"], check=True)


@pytest.fixture(scope="module")
def env(sandbox_fleet, tmp_path_factory):
    names = {h.name for h in sandbox_fleet.hosts}
    if not set(HOSTS) <= names:
        pytest.skip(f"the fleet has no {', '.join(sorted(set(HOSTS) - names))}")
    base = tmp_path_factory.mktemp("deadlink")
    repo = make_repo(base)
    inv = write_inventory(base, repo, app=APP, port=3300)
    for h in HOSTS:  # a clean slate for this app
        sandbox_fleet.run(h, f"systemctl stop '{APP}@*' 2>/dev/null; rm -rf {ROOT}/releases {ROOT}/current "
                             f"{ROOT}/.fabship {ROOT}/repo {SLOW}; true")
    r = fab("bootstrap", "-i", str(inv), "--limit", LIMIT, "--no-gate", timeout=1200)
    assert r.returncode == 0, out(r)[-4000:]
    r = fab("deploy", "-i", str(inv), "--limit", LIMIT, "--no-gate", "--ref", "v1")
    assert r.returncode == 0, out(r)[-4000:]
    return {"fleet": sandbox_fleet, "inv": inv}


def test_dead_link_mid_build_fails_fast_rolls_back_and_leaves_a_stale_lock(env):
    fleet, inv = env["fleet"], env["inv"]
    assert {h: served_version(fleet, h, APP) for h in HOSTS} == {h: "v1" for h in HOSTS}
    must(fleet, DEAD, f"touch {SLOW}")
    build = f'["npm ci --no-audit --no-fund --offline", "if [ -e {SLOW} ]; then sleep 240; fi", "npm run build"]'
    p = fab_popen("deploy", "-i", str(inv), "--limit", LIMIT, "--no-gate", "--ref", "v2", "--max-fail", "0",
                  "--set", f"deploy.build={build}", *sum((["--set", s] for s in LINK), []))
    cut_at = None
    try:
        assert wait_for(lambda: fleet.run(DEAD, "pgrep -f 'sleep 24[0]' >/dev/null")[0] == 0, timeout=180), \
            "the slow build never started"
        # the other host switched to v2 meanwhile (its build has no sleep): it must be rolled back
        assert wait_for(lambda: served_version(fleet, "h4", APP) == "v2", timeout=180), "h4 never switched"
        link(DEAD, up=False)
        cut_at = time.monotonic()
        try:
            o, _ = p.communicate(timeout=KEEPALIVE * (DEAD_AFTER + 1) + 120)
        except subprocess.TimeoutExpired:
            p.kill()
            o, _ = p.communicate()
            pytest.fail(f"fab did not notice the dead link:\n{o[-3000:]}")
        took = time.monotonic() - cut_at
    finally:
        if cut_at is not None:
            link(DEAD, up=True)
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 1, o[-3000:]
    assert "link lost: no answer to 3 SSH keepalives" in o, o[-3000:]
    # the dead host is failed in keepalive x (dead_after + 1), h4's rollback takes a few seconds more;
    # its cleanup steps and the lock release give up at once instead of waiting on the link
    assert took < KEEPALIVE * (DEAD_AFTER + 1) + 60, f"{took:.0f}s\n{o[-3000:]}"
    assert "fleet rollback: h4" in o, o[-3000:]
    time.sleep(2)  # the link is back: let ARP settle
    assert wait_for(lambda: fleet.run(DEAD, "true")[0] == 0, timeout=60), "h5 unreachable after the link came back"
    assert served_version(fleet, "h4", APP) == "v1"   # rolled back
    assert served_version(fleet, DEAD, APP) == "v1"   # never switched
    assert not lock_exists(fleet, "h4", APP)
    assert lock_exists(fleet, DEAD, APP), "the dead host's lock should still be there"
    r = fab("releases", "-i", str(inv), "--limit", DEAD)
    assert r.returncode == 0, out(r)[-3000:]
    assert "STALE" in out(r) and "fab unlock" in out(r), out(r)[-3000:]
    r = fab("unlock", "-i", str(inv), "--limit", DEAD)
    assert r.returncode == 0, out(r)[-3000:]
    assert not lock_exists(fleet, DEAD, APP)
    fleet.run(DEAD, f"rm -f {SLOW}; pkill -f 'sleep 24[0]'; true")
    # and the next deploy works on both
    r = fab("deploy", "-i", str(inv), "--limit", LIMIT, "--no-gate", "--ref", "v2")
    assert r.returncode == 0, out(r)[-3000:]
    assert {h: served_version(fleet, h, APP) for h in HOSTS} == {h: "v2" for h in HOSTS}
