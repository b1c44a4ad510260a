"""verify.checks sessions and ${KEY} values on a real host (h7), with the OTA
sample (inventories/sandbox-ota.yaml, whose common/ota.yaml holds the guide's
login flow): `fab verify` logs in with ${ADMIN_PASSWORD} read from the env file
on the host and reads /api/releases with the session cookie; a failed login
fails with a clear message and skips the session's later step; a missing key
fails naming it; the deploy gate runs the same steps; and a canary password
appears nowhere (output at -vv, run records, `ps` on the host during the runs,
the logged argv of every curl/awk/sh/... the host ran meanwhile, files others
can read).

Only h7 is touched (FABSHIP_SANDBOX_COUNT=8 reuses the shared fleet).
"""
from __future__ import annotations

import json
import shlex
import uuid
from pathlib import Path

import pytest
import yaml
from fab_cli import OneHostFab
from canary_support import PsPoller, with_decoded

REPO = Path(__file__).resolve().parents[2]
HOST = "h7"
APP = "xavia-ota"
DOMAIN = f"{HOST}.sandbox.test"
ENV_PATH = f"/etc/{APP}/ota.env"
SAMPLE_ENV = REPO / "inventories" / "sandbox-env" / "ota.env"
HTTP = ["http:manifest", "http:releases_need_login", "http:login", "http:releases_with_session"]
LOGIN = f"POST https://{DOMAIN}/api/login [headers: content-type]"  # messages name header keys, never values
READABLE_DIRS = "/etc /opt /tmp /var/tmp /var/log /var/lib /home /root /run /srv"


def common_checks() -> list[dict]:
    return yaml.safe_load((REPO / "inventories" / "common" / "ota.yaml").read_text())["verify"]["checks"]


class Ota(OneHostFab):
    """fab with an inventory that includes sandbox-ota.yaml, limited to h7."""

    def __init__(self, fleet, tmp: Path):
        super().__init__(fleet, HOST, tmp)
        self.inv = self.inventory("ota-h7.yaml")

    def inventory(self, name: str, checks: list | None = None) -> Path:
        # /proc/swaps is kernel-global in the sandbox: other hosts' /swapfile entries show
        # up there with their sizes, so swap_active says nothing about h7 here.
        verify = {"skip": ["swap_active"]}
        if checks is not None:
            verify["checks"] = checks
        p = self.tmp / name
        p.write_text(yaml.safe_dump({"include": [str(REPO / "inventories" / "sandbox-ota.yaml")], "verify": verify}))
        return p

    def current(self) -> str:
        return self.must(f"readlink /opt/{APP}/current").strip().rsplit("/", 1)[-1]

    def temp_dirs(self) -> set:
        return set(self.must("find /tmp /var/tmp -maxdepth 1 -name 'tmp.*' 2>/dev/null || true").split())

    def edit_env(self, sed: str):
        """Change the host's env file behind the app's back (it keeps running with the old values)."""
        self.must(f"cp -p {ENV_PATH} /root/ota.env.keep && sed -i {shlex.quote(sed)} {ENV_PATH}")

    def restore_env(self):
        self.must(f"if [ -f /root/ota.env.keep ]; then mv -f /root/ota.env.keep {ENV_PATH}; fi")


@pytest.fixture(scope="module")
def ota(sandbox_fleet, tmp_path_factory):
    """h7 with the OTA sample bootstrapped (env file = the sample's) and deployed."""
    if HOST not in [h.name for h in sandbox_fleet.hosts]:
        pytest.skip(f"the sandbox fleet has no {HOST} (FABSHIP_SANDBOX_COUNT=8)")
    from test_e2e_support import APPS, reset_host

    # other tests leave their apps on h7 (same server_name): start from a clean host
    reset_host(sandbox_fleet, HOST, list(APPS) + ["node-app"])
    o = Ota(sandbox_fleet, tmp_path_factory.mktemp("verify-sessions"))
    o.restore_env()
    o.fab("bootstrap", timeout=1500)
    o.fab("deploy")  # restarts the app with the sample env
    yield o
    o.restore_env()


def test_verify_logs_in_and_reads_releases_with_the_session(ota):
    before = ota.temp_dirs()
    r, res = ota.verify("--only", "http:*", expect=0)
    assert {n: res[n]["status"] for n in HTTP} == {n: "passed" for n in HTTP}, res
    assert res["http:login"]["message"] == f"{LOGIN} -> 200"
    assert res["http:releases_with_session"]["message"] == f"GET https://{DOMAIN}/api/releases -> 200"
    assert res["http:releases_need_login"]["message"] == f"GET https://{DOMAIN}/api/releases -> 401"
    assert f"ok           http:login: {LOGIN} -> 200" in r.stdout
    # the session dir (cookie jar) is gone
    assert ota.temp_dirs() == before
    # independent of fabship: without the cookie the API refuses, with the sample password login works
    code = ota.must(f"curl -sk -o /dev/null -w '%{{http_code}}' --resolve {DOMAIN}:443:127.0.0.1 "
                    f"https://{DOMAIN}/api/releases").strip()
    assert code == "401"


def test_a_failed_login_fails_clearly_and_skips_the_session(ota):
    ota.edit_env("s/^ADMIN_PASSWORD=.*/ADMIN_PASSWORD=not-the-running-password/")
    try:
        r, res = ota.verify(expect=1)
    finally:
        ota.restore_env()
    assert res["http:login"]["status"] == "failed"
    assert res["http:login"]["message"] == (f'{LOGIN} answered 401, expected 200 (body: {{"error":"invalid password"}})')
    assert (res["http:releases_with_session"]["status"],
            res["http:releases_with_session"]["message"]) == ("skipped", "session step 1 failed (http:login)")
    # the other checks are unaffected: one fault, one failed check
    assert [n for n, c in res.items() if c["status"] == "failed"] == ["http:login"]
    assert res["http:manifest"]["status"] == res["http:releases_need_login"]["status"] == "passed"
    assert "http:login" in r.stdout and "not-the-running-password" not in r.stdout + r.stderr


def test_a_key_missing_from_the_env_file_is_named(ota):
    ota.edit_env("/^ADMIN_PASSWORD=/d")
    try:
        r, res = ota.verify("--only", "http:*", expect=1)
    finally:
        ota.restore_env()
    assert res["http:login"]["message"] == (f"{LOGIN}: cannot build the request: ${{ADMIN_PASSWORD}} is not set "
                                            f"in {ENV_PATH}")
    assert res["http:releases_with_session"]["status"] == "skipped"


def test_the_deploy_gate_runs_the_session_and_switches_back(ota):
    checks = common_checks()
    checks[-1]["body_contains"] = "no-such-release-anywhere"
    bad = ota.inventory("ota-h7-bad.yaml", checks)
    before = ota.current()
    r = ota.fab("deploy", inv=bad, expect=1)
    out = r.stdout + r.stderr
    assert "http:releases_with_session" in out and "no-such-release-anywhere" in out, out[-3000:]
    assert ota.current() == before  # the failed release did not stay
    _, res = ota.verify("--only", "http:*", expect=0)


# -- canary -------------------------------------------------------------------------------

# Every exec of these on the host is logged (argv) while the canary runs: a deterministic
# record of the command lines a short-lived curl or awk had, which ps sampling can miss.
SHIMMED = ("sh", "curl", "awk", "grep", "head", "tr", "cat", "base64", "mktemp", "rm")
ARGV_LOG = "/root/fabship-argv.log"


def install_argv_log(ota):
    script = ["set -e", f": > {ARGV_LOG}", f"chmod 600 {ARGV_LOG}"]
    for name in SHIMMED:
        script.append(f"real=$(command -v {name}); cat > /usr/local/bin/{name} <<EOF\n#!/bin/sh\n"
                      f'{{ printf "%s " "\\$0" "\\$@"; echo; }} >> {ARGV_LOG}\nexec $real "\\$@"\nEOF\n'
                      f"chmod 755 /usr/local/bin/{name}")
    ota.must("\n".join(script))


def remove_argv_log(ota) -> str:
    ota.must("rm -f " + " ".join(f"/usr/local/bin/{n}" for n in SHIMMED))
    return ota.must(f"cat {ARGV_LOG} 2>/dev/null; rm -f {ARGV_LOG}")


def env_with(tmp: Path, name: str, **changes) -> Path:
    lines = []
    for ln in SAMPLE_ENV.read_text().splitlines():
        k = ln.split("=", 1)[0]
        lines.append(f"{k}={changes[k]}" if k in changes else ln)
    p = tmp / name
    p.write_text("\n".join(lines) + "\n")
    p.chmod(0o600)
    return p


def test_canary_password_never_leaks(ota):
    marker = f"CNRY{uuid.uuid4().hex[:20]}"
    wrong = f"CNRY{uuid.uuid4().hex[:20]}"
    # a quote and a backslash too: the JSON body must escape them or the login fails
    password = f'{marker} "q" \\b'
    canary_env = env_with(ota.tmp, "canary.env", ADMIN_PASSWORD=json.dumps(password))
    assert '\\"q\\"' in canary_env.read_text()  # written double-quoted, as systemd reads it
    runs_before = set(ota.runs.glob("*.json"))
    results, polls, argv_log = [], [], ""
    install_argv_log(ota)
    try:
        control = f"CTRL{uuid.uuid4().hex[:12]}"
        with PsPoller(ota.fleet, HOST, 0.01) as ps:
            # rotate-env's gate logs in with the new password (read on the host)...
            results.append(ota.fab("rotate-env", "-vv", "--env-file", str(canary_env)))
            results.append(ota.fab("verify", "-vv", "--only", "http:*"))
            ota.sh(f"sh -c 'sleep 0.3' {control}")  # positive control: a short command line is seen
        polls.append(ps.text)
        assert control in ps.text, "the ps poller misses short-lived command lines"
        # ... and a failing login: the env file holds another password than the app runs
        # with (edited outside the poller: the test's own sed names the value)
        ota.edit_env(f"s/^ADMIN_PASSWORD=.*/ADMIN_PASSWORD={wrong}/")
        try:
            with PsPoller(ota.fleet, HOST, 0.01) as ps:
                results.append(ota.fab("verify", "-vv", expect=1))
            polls.append(ps.text)
        finally:
            ota.restore_env()
        argv_log = remove_argv_log(ota)
        res = {c["name"]: c for c in ota.record("verify")["extra"]["verify"][HOST]}
        assert res["http:login"]["status"] == "failed"
        first = json.loads(sorted(p for p in ota.runs.glob("*-verify-*.json") if p not in runs_before)[0]
                           .read_text())
        assert {c["name"]: c["status"] for c in first["extra"]["verify"][HOST]
                if c["name"].startswith("http:")} == {n: "passed" for n in HTTP}  # logged in with the canary
        # positive controls: the marker is on the host, the poller saw fab's remote scripts
        assert ota.must(f"grep -c {marker} {ENV_PATH}").strip() == "1"
        assert all(t.count("@@snap") > 20 and "sh -c" in t for t in polls), "the ps poller saw too little"
        # the argv log saw every curl of the login step (body from stdin) and the env reader
        assert argv_log.count("--data-binary @- ") >= 3 and "awk function jesc" in argv_log, argv_log[-2000:]

        output = "\n".join(r.stdout + "\n" + r.stderr for r in results)
        assert "@@fabship-fact@@" in output  # -vv streamed the probe output (decoded below)
        records = "\n".join(p.read_text() for p in ota.runs.glob("*.json") if p not in runs_before)
        found = {}
        for what, text in (("output", output), ("run records", records), ("ps", "\n".join(polls)),
                           ("command lines on the host", argv_log)):
            text = with_decoded(text)
            hits = [m for m in (marker, wrong) if m in text]
            if hits:
                found[what] = hits
        code, out, _ = ota.sh(f"runuser -u nobody -- grep -rl -e {marker} -e {wrong} {READABLE_DIRS} 2>/dev/null")
        if out.strip():
            found["files readable by nobody"] = out.split()
        assert not found, f"the canary leaked: {found}"
    finally:
        if not argv_log:
            remove_argv_log(ota)
        ota.fab("rotate-env", "--env-file", str(SAMPLE_ENV))  # back to the sample's password
