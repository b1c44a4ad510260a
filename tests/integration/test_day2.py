"""Day-2 operations (issue 15) on sandbox hosts h4 and h5, as an operator uses them
after a first deploy: release hooks, notifications, fab exec, fab logs -f and
fab maintenance. The app is apps/node-app as `dayapp` (its own name, ports
3601/3602 and nginx site, so other tests' apps on these hosts are untouched).

Every assertion reads the real hosts (files, nginx's answers, the journal) or
what fab printed; a local HTTP server receives the webhooks. A canary value in
the env file (API_TOKEN) is echoed by hooks and exec and logged by the app: it
must reach the app (hashes prove it) and never fab's output, its run records,
the webhook payloads or any command line on the host (ps polled).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import yaml
from canary_support import PsPoller, with_decoded
from test_deploy_support import (
    current,
    fab,
    fab_popen,
    http_get,
    make_repo,
    must,
    out,
    served_version,
    wait_for,
    write_inventory,
)

HOSTS = ["h4", "h5"]
LIMIT = ",".join(HOSTS)
APP = "dayapp"
PORT = 3600
ROOT = f"/opt/{APP}"
CANARY = "canary-" + uuid.uuid4().hex
SITE = f"{APP}.{{}}.sandbox.test"


class Webhook:
    """A local HTTP server that keeps every JSON body posted to it."""

    def __init__(self):
        self.bodies: list[dict] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                outer.raw.append(raw)
                outer.bodies.append(json.loads(raw))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.raw: list[bytes] = []
        self.server = HTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.token = uuid.uuid4().hex
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/{self.token}"

    def events(self) -> list[str]:
        return [b.get("event") or "slack" for b in self.bodies]


@pytest.fixture(scope="module")
def day2(sandbox_fleet, tmp_path_factory):
    names = {h.name for h in sandbox_fleet.hosts}
    if any(h not in names for h in HOSTS):
        pytest.skip("the fleet has no h4/h5 (FABSHIP_SANDBOX_COUNT=8)")
    base = tmp_path_factory.mktemp("day2")
    runs = base / "runs"
    repo = make_repo(base)
    hook = Webhook()
    inv = write_inventory(base, repo, app=APP, port=PORT, extra={
        "app": {"shared_dirs": ["data"]},
        "hooks": {
            # the migration: once per deploy, with the env (its hash proves it), output echoed
            "before_switch": [{"name": "migrate", "once": True,
                               "run": 'echo "$(hostname) $FABSHIP_RELEASE $(printf %s "$API_TOKEN" | sha256sum '
                                      '| cut -c1-16)" >> data/migrations.log; echo "migrating with token $API_TOKEN"'}],
            "after_switch": ['echo "after-switch $FABSHIP_RELEASE as $(id -un) in $(pwd -P)"'],
        },
        "notify": [{"url": hook.url, "name": "ops"}, {"url": hook.url, "format": "slack", "events": ["success"]}],
        "nginx": {"server_name": APP + ".{host}.sandbox.test", "maintenance": {"retry_after": 120}},
    })
    env_file = base / f"{APP}.env"
    env_file.write_text(env_file.read_text() + f"API_TOKEN={CANARY}\n")
    for h in HOSTS:   # a clean slate for this app
        sandbox_fleet.run(h, f"systemctl stop '{APP}@*' 2>/dev/null; rm -rf {ROOT}/releases {ROOT}/current "
                             f"{ROOT}/.fabship {ROOT}/repo {ROOT}/shared/data/migrations.log "
                             f"/etc/nginx/fabship/{APP}.maintenance; true")
    env = {"FABSHIP_RUNS_DIR": str(runs)}
    r = fab("bootstrap", "-i", str(inv), "--limit", LIMIT, "--no-gate", timeout=1200, env=env)
    assert r.returncode == 0, out(r)[-4000:]
    outputs = [out(r)]
    r = fab("deploy", "-i", str(inv), "--limit", LIMIT, "--ref", "v1", "-vv", timeout=900, env=env)
    outputs.append(out(r))
    assert r.returncode == 0, out(r)[-4000:]
    yield {"fleet": sandbox_fleet, "inv": str(inv), "hook": hook, "runs": runs, "env": env, "outputs": outputs,
           "deploy": out(r)}
    hook.server.shutdown()


def _token_hash() -> str:
    return hashlib.sha256(CANARY.encode()).hexdigest()[:16]


def test_once_hook_ran_on_exactly_one_host_with_the_env(day2):
    fleet = day2["fleet"]
    rid = current(fleet, "h4", APP)
    assert "-v1" in rid and current(fleet, "h5", APP) == rid
    lines = []
    for h in HOSTS:
        rc, o, _ = fleet.run(h, f"cat {ROOT}/shared/data/migrations.log 2>/dev/null")
        lines += [ln for ln in o.splitlines() if rid in ln]
    assert len(lines) == 1, lines                       # once: one host of the two
    assert lines[0].endswith(_token_hash())             # the env file was there, read by systemd
    text = day2["deploy"]
    assert "hook before_switch[0] migrate" in text and "once: ran on" in text
    for h in HOSTS:   # after_switch on each host, as the app user, in the new release, host-prefixed
        assert f"[{h}] after-switch {rid} as {APP} in {ROOT}/releases/{rid}" in text
    assert "migrating with token ***" in text and CANARY not in with_decoded(text)


def test_hooks_and_notifications_in_the_run_record_and_payloads(day2):
    recs = [json.loads(p.read_text()) for p in sorted(day2["runs"].glob("*-deploy-*.json"))]
    rec = recs[-1]
    assert rec["extra"]["hooks"]["before_switch"][0].startswith('echo "$(hostname)')
    runs = rec["extra"]["hook_runs"]
    assert sorted((r["stage"], r["result"]) for r in runs) == [
        ("after_switch", "ok"), ("after_switch", "ok"), ("before_switch", "ok"), ("before_switch", "skipped")]
    hook = day2["hook"]
    deploys = [b for b in hook.bodies if b.get("task") == "deploy" or "text" in b]
    events = [b.get("event") or "slack" for b in deploys]
    assert events[:3] == ["deploy.start", "deploy.success", "slack"], events
    ok = deploys[1]
    assert (ok["app"], ok["result"], sorted(ok["hosts"]), ok["failed_hosts"]) == (APP, "ok", HOSTS, [])
    assert ok["release"] == current(day2["fleet"], "h4", APP) and ok["duration"] > 0 and "@" in ok["who"]
    assert f"deploy of {APP}" in deploys[2]["text"] and "succeeded on 2 host(s)" in deploys[2]["text"]
    # the webhook URL (its token) is a secret: never printed or recorded
    for text in day2["outputs"] + [p.read_text() for p in day2["runs"].glob("*.json")]:
        assert hook.token not in text and CANARY not in with_decoded(text)
    assert all(CANARY.encode() not in raw for raw in hook.raw)


def test_failing_before_switch_hook_leaves_the_old_release_serving(day2):
    fleet, inv = day2["fleet"], day2["inv"]
    before = {h: current(fleet, h, APP) for h in HOSTS}
    n = len(day2["hook"].bodies)
    r = fab("deploy", "-i", inv, "--limit", LIMIT, "--ref", "v2", "--set",
            'hooks.before_switch=["echo checking; exit 3"]', timeout=900, env=day2["env"])
    assert r.returncode != 0, out(r)[-3000:]
    assert "hooks.before_switch[0] failed" in out(r) and "exit 3" in out(r)
    for h in HOSTS:
        assert current(fleet, h, APP) == before[h]
        assert served_version(fleet, h, APP) == "v1"
        rc, o, _ = fleet.run(h, f"systemctl list-units --no-legend --state=active '{APP}@*.service' | wc -l")
        assert o.strip() == "1"   # the new instance never started beside the old one
    failure = [b for b in day2["hook"].bodies[n:] if b.get("event") == "deploy.failure"]
    assert failure and sorted(failure[0]["failed_hosts"]) == HOSTS and failure[0]["result"] == "failed"


def test_exec_sees_the_env_never_on_a_command_line(day2):
    fleet, inv = day2["fleet"], day2["inv"]
    cmd = 'sleep 2; printf "%s" "$API_TOKEN" | sha256sum | cut -c1-16; id -un; pwd -P; echo "raw $API_TOKEN"'
    with PsPoller(fleet, "h4") as ps:
        r = fab("exec", "-i", inv, "--limit", LIMIT, "--", cmd, timeout=300, env=day2["env"])
    assert r.returncode == 0, out(r)[-3000:]
    text = out(r)
    rid = current(fleet, "h4", APP)
    for h in HOSTS:
        assert f"[{h}] {_token_hash()}" in text and f"[{h}] {APP}" in text
        assert f"[{h}] {ROOT}/releases/{rid}" in text and f"[{h}] raw ***" in text
        assert f"exit 0" in text
        rc, o, _ = fleet.run(h, f"tail -n 1 {ROOT}/.fabship/audit.log")
        assert "action=exec" in o and "result=exit=0" in o and CANARY not in o
    assert "systemd-run" in ps.text and "sha256sum" in ps.text   # the poller saw the command
    assert CANARY not in ps.text and CANARY not in with_decoded(text)
    # exit status per host
    r = fab("exec", "-i", inv, "--limit", LIMIT, "--", 'if [ "$(hostname)" = h5 ]; then exit 4; fi', timeout=300,
            env=day2["env"])
    assert r.returncode != 0
    assert any("h5" in ln and "exit 4" in ln for ln in out(r).splitlines())
    assert any(ln.startswith("h4") and "exit 0" in ln for ln in out(r).splitlines())


def test_logs_follow_two_hosts_until_sigint(day2):
    fleet, inv = day2["fleet"], day2["inv"]
    p = fab_popen("logs", "-i", inv, "--limit", LIMIT, "-f", "--lines", "0", env=day2["env"])
    got: list[str] = []
    threading.Thread(target=lambda: [got.append(ln) for ln in p.stdout], daemon=True).start()
    try:
        # following once the readers run on both hosts
        assert wait_for(lambda: all(fleet.run(h, f"pgrep -f 'journalctl -u {APP}@'")[0] == 0 for h in HOSTS), 60)
        marker = uuid.uuid4().hex[:12]
        for h in HOSTS:  # the app logs each request: one line per host, written after logs started
            for port in (PORT + 1, PORT + 2):
                fleet.run(h, f"curl -s -o /dev/null 'http://127.0.0.1:{port}/mark-{marker}-{h}?t={CANARY}'")
        assert wait_for(lambda: all(any(f"[{h}]" in ln and f"mark-{marker}-{h}" in ln for ln in got)
                                    for h in HOSTS), 30), "".join(got)[-3000:]
        os.killpg(p.pid, signal.SIGINT)
        code = p.wait(20)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    text = "".join(got)
    assert code == 0, text[-3000:]
    assert "stopped following 2 host(s)" in text and "Traceback" not in text
    assert f"t=***" in text and CANARY not in text
    # nothing left tailing on the hosts
    assert wait_for(lambda: all(fleet.run(h, f"pgrep -f 'journalctl -u {APP}@'")[0] != 0 for h in HOSTS), 15)


def test_logs_without_follow_merged_and_grepped(day2):
    r = fab("logs", "-i", day2["inv"], "--limit", LIMIT, "--since", "1h", "--grep", "mark-", timeout=120,
            env=day2["env"])
    assert r.returncode == 0, out(r)[-3000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("[h")]
    assert lines and all("mark-" in ln for ln in lines)
    assert {ln[1:3] for ln in lines} == {"h4", "h5"} and CANARY not in r.stdout + r.stderr


def test_maintenance_on_gives_503_with_health_200_off_restores(day2):
    fleet, inv = day2["fleet"], day2["inv"]
    addr = {h: fleet.host(h).address for h in HOSTS}
    r = fab("maintenance", "on", "-i", inv, "--limit", LIMIT, timeout=300, env=day2["env"])
    assert r.returncode == 0, out(r)[-3000:]
    try:
        for h in HOSTS:
            req = urllib.request.Request(f"http://{addr[h]}/", headers={"Host": SITE.format(h)})
            try:
                urllib.request.urlopen(req, timeout=5)
                raise AssertionError(f"{h}: / answered 2xx in maintenance mode")
            except urllib.error.HTTPError as e:
                assert e.code == 503 and e.headers.get("Retry-After") == "120"
                assert "down for scheduled maintenance" in e.read().decode()
            status, body = http_get(addr[h], "/health", SITE.format(h))
            assert status == 200 and '"status":"ok"' in body.replace(" ", "")
            assert must(fleet, h, f"test -f /etc/nginx/fabship/{APP}.maintenance && echo yes").strip() == "yes"
        r = fab("maintenance", "status", "-i", inv, "--limit", LIMIT, timeout=120, env=day2["env"])
        assert r.returncode == 0 and out(r).count("maintenance on") >= 2
        r = fab("verify", "-i", inv, "--limit", LIMIT, "--only", "maintenance", timeout=300, env=day2["env"])
        assert r.returncode != 0 and "maintenance mode is on" in out(r), out(r)[-3000:]
    finally:
        r = fab("maintenance", "off", "-i", inv, "--limit", LIMIT, timeout=300, env=day2["env"])
    assert r.returncode == 0, out(r)[-3000:]
    for h in HOSTS:
        assert served_version(fleet, h, APP) == "v1"
        rc, o, _ = fleet.run(h, f"grep -c 'action=maintenance' {ROOT}/.fabship/audit.log")
        assert int(o.strip() or 0) >= 2
    r = fab("verify", "-i", inv, "--limit", LIMIT, "--only", "maintenance", timeout=300, env=day2["env"])
    assert r.returncode == 0, out(r)[-3000:]
