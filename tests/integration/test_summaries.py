"""The closing `releases now serving:` lines of deploy and rollback on a real
host (issue 11): each names the release the host serves and what the run did
there. A failed deploy reads `R1  [still serving; deploy of R2 failed]` (not
as if R1 had failed), a lock-refused deploy names the serving release (not
`unknown`), a successful rollback says `rolled back from ...` (not
`unchanged`). Each line is checked against what h6 really serves.

The app is rotdemo on h6 (tests/integration/test_rotate_env_support.py:
strategy restart, no nginx), deployed from artifact copies of apps/node-app.
"""
from __future__ import annotations

import json
import re
import shutil
import socket
import time

from test_rotate_env_support import (  # noqa: F401  (rot_app is a fixture)
    APP, HOST, PORT, REPO, RID, fab, rot_app, write_inventory,
)


def artifact(tmp_path, version: str, broken: bool = False):
    d = tmp_path / f"art-{version}"
    shutil.copytree(REPO / "apps" / "node-app", d, ignore=shutil.ignore_patterns("dist", "node_modules"))
    (d / "VERSION").write_text(version + "\n")
    if broken:
        (d / "FAIL_HEALTH").write_text("on\n")  # /health answers 503
    return d


def deploy(tmp_path, inv, art):
    return fab(tmp_path, "deploy", "-i", str(inv), "--limit", HOST, "--artifact", str(art), "--no-gate",
               timeout=600)


def serving_line(r) -> str:
    text = r.stdout
    assert "releases now serving:" in text, text[-3000:] + r.stderr
    lines = text.split("releases now serving:", 1)[1].splitlines()
    return next(ln.strip() for ln in lines if ln.strip().startswith(f"{HOST} -> "))


def on_host(fleet, cmd: str) -> str:
    rc, out, err = fleet.run(HOST, cmd)
    assert rc == 0, f"{cmd!r} on {HOST}: {err or out}"
    return out.strip()


def current(fleet) -> str:
    return on_host(fleet, f"readlink /opt/{APP}/current").rsplit("/", 1)[-1]


def served(fleet) -> str:
    return on_host(fleet, f"curl -fsS http://127.0.0.1:{PORT}/version")


def test_deploy_and_rollback_summaries_name_what_serves(rot_app, tmp_path):
    fleet = rot_app
    # the rest of the layout bootstrap makes (tasks/cli/bootstrap.py layout_dirs) that rot_app leaves out
    on_host(fleet, f"install -d -o {APP} -g {APP} -m 0755 /opt/{APP}/releases /opt/{APP}/shared && "
                f"install -d -o root -g {APP} -m 0750 /opt/{APP}/.fabship")
    inv = write_inventory(tmp_path)

    r = deploy(tmp_path, inv, artifact(tmp_path, "s1"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    r1 = current(fleet)
    assert r1 != RID and served(fleet) == "s1"
    assert serving_line(r) == f"{HOST} -> {r1}  [deployed] (was {RID})"

    time.sleep(1.1)  # release ids are per second
    r = deploy(tmp_path, inv, artifact(tmp_path, "s-broken", broken=True))
    assert r.returncode != 0
    assert current(fleet) == r1 and served(fleet) == "s1"  # the old release serves
    line = serving_line(r)
    m = re.fullmatch(rf"{HOST} -> {re.escape(r1)}  \[still serving; deploy of (\S+) failed\]", line)
    assert m and m.group(1) != r1, line

    # another run holds the lock (another control machine, a fresh holder): refused,
    # and the summary still names the release h6 serves
    holder = {"id": "feedface", "user": "ann@elsewhere", "control_host": "elsewhere-" + socket.gethostname(),
              "pid": 4242, "pid_start": "", "time": "2030-01-01T00:00:00Z", "epoch": int(time.time()),
              "action": "deploy", "release": "20300101T000000Z-x", "task": "deploy"}
    on_host(fleet, f"install -d -m 0700 /opt/{APP}/.fabship/lock && printf '%s\\n' '{json.dumps(holder)}' "
                f"> /opt/{APP}/.fabship/lock/holder.json")
    try:
        r = deploy(tmp_path, inv, artifact(tmp_path, "s2"))
        assert r.returncode != 0
        line = serving_line(r)
        assert line.startswith(f"{HOST} -> {r1}  [still serving; not deployed: its deploy lock is held by "
                               "ann@elsewhere"), line
        assert "unknown" not in line
        assert current(fleet) == r1
    finally:
        on_host(fleet, f"rm -rf /opt/{APP}/.fabship/lock")

    time.sleep(1.1)
    r = deploy(tmp_path, inv, tmp_path / "art-s2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    r3 = current(fleet)
    assert served(fleet) == "s2" and serving_line(r) == f"{HOST} -> {r3}  [deployed] (was {r1})"

    r = fab(tmp_path, "rollback", "-i", str(inv), "--limit", HOST, "--no-gate")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert current(fleet) == r1 and served(fleet) == "s1"
    assert serving_line(r) == f"{HOST} -> {r1}  [rolled back from {r3}]"
    assert "[unchanged]" not in r.stdout
