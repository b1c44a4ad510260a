"""Issue 16 on real sandbox hosts, as a CI job meets fabship:

- `--json` and the exit codes of a success, a host failure, a held lock and an unreachable
  host (deploy on h1), each document checked against what h1 really serves;
- `ssh.via: ssm` through the stand-in `aws` (tests/standins/aws: Session Manager cannot run
  here; it forwards the session to h1's port 22): an unknown host key is refused, the key
  recorded under the instance id works, and a deploy's SFTP upload goes through it;
- `ssh.wait`: a bootstrap of a host whose sshd starts 20 s late succeeds; an address where
  nothing answers fails in bounded time, in one line, exit 4;
- two apps on one host (two inventories, one nginx, distinct server names), each deployed and
  served by name, one's deploy leaving the other serving.

Apps: cijson (3310), citwo-a (3320), citwo-b (3330), ciwait (3340), all node-app artifacts
with strategy restart except the two-app pair (blue/green behind nginx).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from fab_cli import run_fab

REPO = Path(__file__).resolve().parents[2]
HOST = "h1"
STANDINS = REPO / "tests" / "standins"
IID = "i-0fab5e7c1f10a0b01"  # h1 as an EC2 instance, for the stand-in


@pytest.fixture
def fleet(sandbox_fleet):
    if HOST not in [h.name for h in sandbox_fleet.hosts]:
        pytest.skip(f"the sandbox fleet has no {HOST}")
    return sandbox_fleet


def on_host(fleet, cmd: str, check=True) -> str:
    rc, out, err = fleet.run(HOST, cmd)
    if check:
        assert rc == 0, f"{cmd!r} on {HOST}: {err or out}"
    return out.strip()


def artifact(tmp_path: Path, version: str, broken: bool = False) -> Path:
    d = tmp_path / f"art-{version}"
    shutil.copytree(REPO / "apps" / "node-app", d, ignore=shutil.ignore_patterns("dist", "node_modules"))
    (d / "VERSION").write_text(version + "\n")
    if broken:
        (d / "FAIL_HEALTH").write_text("on\n")
    return d


def inventory(tmp_path: Path, app: str, port: int, *, nginx: bool = False, ssh: dict | None = None,
              hosts: dict | None = None) -> Path:
    env = tmp_path / f"{app}.env"
    env.write_text("APP_SECRET=ci-flows-secret-0123456789\n")
    env.chmod(0o600)
    inv = {
        "include": [str(REPO / "inventories" / "sandbox.yaml")],
        "packages": [],
        "app": {"name": app, "kind": "node", "port": port, "start": "npm run start", "node_version": "18"},
        "env": {"source": {"type": "file", "file": str(env)}},
        "deploy": {"source": "artifact", "artifact": str(REPO / "apps" / "node-app"),
                   "build": ["npm ci --no-audit --no-fund", "npm run build"],
                   **({} if nginx else {"strategy": "restart"})},
        "health": {"path": "/health", "body_contains": '"status":"ok"', "retries": 10, "interval": 0.5,
                   "timeout": 3},
        "nginx": {"server_name": f"{app}.{{host}}.sandbox.test"} if nginx else {"enabled": False},
    }
    if not nginx:
        inv["health"]["port"] = port
    if ssh:
        inv["ssh"] = ssh
    if hosts:
        inv["hosts"] = hosts
    p = tmp_path / f"{app}.yaml"
    p.write_text(yaml.safe_dump(inv, sort_keys=False))
    return p


def fab(tmp_path, *args, env=None, timeout=600):
    return run_fab(*args, runs_dir=tmp_path / "runs", env=env, timeout=timeout)


def document(r) -> dict:
    """stdout is exactly one fabship.run document; the human output went to stderr."""
    try:
        doc = json.loads(r.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"stdout is not one JSON document:\n{r.stdout[-2000:]}\n--- stderr:\n{r.stderr[-3000:]}")
    assert doc["format"] == "fabship.run" and doc["version"] == 1
    assert doc["exit_code"] == r.returncode, (doc["exit_code"], r.returncode)
    return doc


def record_of(tmp_path, task: str) -> dict:
    recs = sorted((tmp_path / "runs").glob(f"*-{task}-*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(recs[-1].read_text())


def current(fleet, app: str) -> str:
    return on_host(fleet, f"readlink /opt/{app}/current || true").rsplit("/", 1)[-1]


def test_json_and_exit_codes_of_success_failure_lock_and_unreachable(fleet, tmp_path):
    app, port = "cijson", 3310
    inv = inventory(tmp_path, app, port)
    r = fab(tmp_path, "bootstrap", "-i", inv, "--limit", HOST, "--no-gate", "--json")
    doc = document(r)
    assert r.returncode == 0 and doc["result"] == "ok", r.stderr[-3000:]
    assert "bootstrap on 1 host(s)" in r.stderr  # the summary table is on stderr

    # success
    r = fab(tmp_path, "deploy", "-i", inv, "--limit", HOST, "--artifact", artifact(tmp_path, "j1"), "--no-gate",
            "--json")
    doc = document(r)
    assert (r.returncode, doc["result"]) == (0, "ok"), r.stderr[-3000:]
    r1 = current(fleet, app)
    h = doc["hosts"][HOST]
    assert h["result"] in ("ok", "changed") and h["reason"] is None and h["release_after"] == r1
    assert doc["releases"]["after"] == {HOST: r1} and doc["failures"] == []
    assert {s["name"] for s in h["steps"]} and all(isinstance(s["duration"], float) for s in h["steps"])
    assert "ci-flows-secret" not in r.stdout + r.stderr
    assert record_of(tmp_path, "deploy")["exit_code"] == 0

    # a host failure: the health check fails, the old release keeps serving
    time.sleep(1.1)  # release ids are per second
    r = fab(tmp_path, "deploy", "-i", inv, "--limit", HOST, "--artifact", artifact(tmp_path, "j2", broken=True),
            "--no-gate", "--json")
    doc = document(r)
    assert (r.returncode, doc["result"]) == (1, "failed"), r.stderr[-3000:]
    assert current(fleet, app) == r1
    h = doc["hosts"][HOST]
    assert h["reason"] == "failed" and h["release_before"] == r1 and h["release_after"] == r1
    (f,) = doc["failures"]
    assert f["host"] == HOST and f["reason"] == "failed" and f["message"]
    assert doc["message"] == f"fabship: deploy failed on: {HOST}"
    assert record_of(tmp_path, "deploy")["result"] == "failed"

    # the lock is held by another run: exit 3, nothing changed
    holder = {"id": "c1c1c1c1", "user": "ci@elsewhere", "control_host": "runner-elsewhere", "pid": 4242,
              "pid_start": "", "time": "2030-01-01T00:00:00Z", "epoch": int(time.time()), "action": "deploy",
              "release": "20300101T000000Z-x", "task": "deploy"}
    on_host(fleet, f"install -d -m 0700 /opt/{app}/.fabship/lock && printf '%s\\n' '{json.dumps(holder)}' "
                   f"> /opt/{app}/.fabship/lock/holder.json")
    try:
        r = fab(tmp_path, "deploy", "-i", inv, "--limit", HOST, "--artifact", tmp_path / "art-j1", "--no-gate",
                "--lock-wait", "2", "--json")
        doc = document(r)
        assert (r.returncode, doc["result"]) == (3, "lock_held"), r.stderr[-3000:]
        assert doc["hosts"][HOST]["reason"] == "lock_held" and "ci@elsewhere" in doc["hosts"][HOST]["error"]
        assert current(fleet, app) == r1
    finally:
        on_host(fleet, f"rm -rf /opt/{app}/.fabship/lock")

    # unreachable: nothing answers at that address (the bridge has no .250)
    r = fab(tmp_path, "deploy", "-i", inv, "--limit", HOST, "--artifact", tmp_path / "art-j1", "--no-gate",
            "--set", "hosts.static.h1.address=10.231.0.250", "--set", "ssh.connect_timeout=3", "--json")
    doc = document(r)
    assert (r.returncode, doc["result"]) == (4, "unreachable"), r.stderr[-3000:]
    assert doc["hosts"][HOST]["reason"] == "unreachable"
    assert current(fleet, app) == r1

    # a configuration error: exit 2, still a document
    r = fab(tmp_path, "deploy", "-i", inv, "--limit", HOST, "--set", "ssh.port=many", "--json")
    doc = document(r)
    assert (r.returncode, doc["result"]) == (2, "config_error") and "ssh.port" in doc["message"]


def _ssm_env(tmp_path, where: str) -> dict:
    mapping = tmp_path / "ssm-map.json"
    mapping.write_text(json.dumps({IID: where}))
    return {"PATH": f"{STANDINS}{os.pathsep}{os.environ['PATH']}", "FABSHIP_SSM_STANDIN_MAP": str(mapping),
            "FABSHIP_SSM_STANDIN_LOG": str(tmp_path / "aws.log")}


def test_ssm_via_the_standin_refuses_an_unknown_key_and_works_with_a_known_one(fleet, tmp_path):
    app, port = "cijson", 3310
    address = fleet.host(HOST).address
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    ssh = {"via": "ssm", "known_hosts": str(kh), "ssm": {"region": "eu-west-1"}}
    hosts = {"static": {HOST: {"address": address, "tags": {"instance-id": IID}}}}
    inv = inventory(tmp_path, app, port, ssh=ssh, hosts=hosts)
    env = _ssm_env(tmp_path, f"{address}:22")

    r = fab(tmp_path, "releases", "-i", inv, "--json", env=env)
    doc = document(r)
    assert (r.returncode, doc["result"]) == (4, "unreachable"), r.stderr[-3000:]
    assert "host key not in" in doc["hosts"][HOST]["error"] and IID in doc["hosts"][HOST]["error"]
    assert kh.read_text() == ""
    argv = json.loads((tmp_path / "aws.log").read_text().splitlines()[0])
    assert argv == ["ssm", "start-session", "--target", IID, "--document-name", "AWS-StartSSHSession",
                    "--parameters", "portNumber=22", "--region", "eu-west-1"]

    # h1's real key, recorded under the instance id (as --accept-new-host-keys would)
    sandbox_kh = Path(fleet.known_hosts).read_text().splitlines()
    keys = [ln.split(None, 1)[1] for ln in sandbox_kh if ln.split(None, 1)[0] == address]
    assert keys, f"no key for {address} in {fleet.known_hosts}"
    kh.write_text("".join(f"{IID} {k}\n" for k in keys))
    # a deploy uploads its artifact by SFTP: through the session too
    r = fab(tmp_path, "deploy", "-i", inv, "--artifact", artifact(tmp_path, "ssm1"), "--no-gate", "--json", env=env)
    doc = document(r)
    assert (r.returncode, doc["result"]) == (0, "ok"), r.stderr[-3000:]
    rid = current(fleet, app)
    assert "ssm1" in rid and doc["hosts"][HOST]["release_after"] == rid
    assert on_host(fleet, f"curl -fsS http://127.0.0.1:{port}/version") == "ssm1"
    assert all(json.loads(ln)[3] == IID for ln in (tmp_path / "aws.log").read_text().splitlines())


def test_bootstrap_waits_for_a_late_sshd(fleet, tmp_path):
    inv = inventory(tmp_path, "ciwait", 3340)
    # sshd goes away now and comes back in 20 s (a VM still booting); this session survives it
    on_host(fleet, "systemctl reset-failed fabship-late-sshd.timer fabship-late-sshd.service 2>/dev/null; "
                   "systemd-run --quiet --unit=fabship-late-sshd --on-active=20s /bin/systemctl start ssh.service "
                   "&& systemctl stop ssh.service")
    t0 = time.monotonic()
    try:
        r = fab(tmp_path, "bootstrap", "-i", inv, "--limit", HOST, "--no-gate", "--set", "ssh.wait=120",
                "--set", "ssh.connect_timeout=3", timeout=700)
        took = time.monotonic() - t0
    finally:
        # whatever happened, h1's sshd must be back for the rest of the tier
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and fleet.run(HOST, "true", timeout=10)[0] != 0:
            time.sleep(2)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert took >= 18, f"bootstrap finished in {took:.0f}s: sshd was not down?"
    assert "waiting for SSH" in out and "ssh.wait=120" in out
    # the host really is bootstrapped
    on_host(fleet, "id -u ciwait >/dev/null && test -d /opt/ciwait/releases && test -f /etc/ciwait/ciwait.env")


def test_an_unreachable_host_fails_in_bounded_time_with_one_line(fleet, tmp_path):
    inv = inventory(tmp_path, "ciwait", 3340)
    t0 = time.monotonic()
    r = fab(tmp_path, "bootstrap", "-i", inv, "--limit", HOST, "--set", "hosts.static.h1.address=10.231.0.250",
            "--set", "ssh.wait=8", "--set", "ssh.connect_timeout=2", timeout=120)
    took = time.monotonic() - t0
    assert r.returncode == 4, r.stdout + r.stderr
    assert took < 40
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if "gave up after 8s of ssh.wait" in ln]
    assert lines and "Traceback" not in r.stdout + r.stderr


def test_two_apps_on_one_host_share_nginx(fleet, tmp_path):
    a = inventory(tmp_path, "citwo-a", 3320, nginx=True)
    b = inventory(tmp_path, "citwo-b", 3330, nginx=True)
    for inv in (a, b):
        r = fab(tmp_path, "bootstrap", "-i", inv, "--limit", HOST, "--no-gate")
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    for inv, v in ((a, "a1"), (b, "b1")):
        r = fab(tmp_path, "deploy", "-i", inv, "--limit", HOST, "--artifact", artifact(tmp_path, v))
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]

    def by_name(app: str) -> str:
        return on_host(fleet, f"curl -fsS -H 'Host: {app}.{HOST}.sandbox.test' http://127.0.0.1/version")

    assert (by_name("citwo-a"), by_name("citwo-b")) == ("a1", "b1")
    assert on_host(fleet, "nginx -t 2>&1 && echo valid").endswith("valid")
    # a's next release leaves b serving (its site, its upstream, its units untouched)
    time.sleep(1.1)
    r = fab(tmp_path, "deploy", "-i", a, "--limit", HOST, "--artifact", artifact(tmp_path, "a2"))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert (by_name("citwo-a"), by_name("citwo-b")) == ("a2", "b1")
    for inv in (a, b):
        r = fab(tmp_path, "verify", "-i", inv, "--limit", HOST, "--only", "nginx_config,nginx_proxy,health")
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
