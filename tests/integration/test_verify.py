"""fab verify on a real sandbox host (h7): the node sample bootstrapped and
deployed passes every check; then one thing at a time is broken on the host
and exactly the matching check must fail, with its message, and pass again
once repaired. Also: the deploy gate rolls back a release that fails a check,
and the shipped pytest suite runs the same checks over fabship's connection
and over testinfra's ssh:// and (strict) paramiko:// backends.

Only h7 is touched (FABSHIP_SANDBOX_COUNT=8 reuses the shared fleet).
"""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from fab_cli import OneHostFab

REPO = Path(__file__).resolve().parents[2]
HOST = "h7"
APP = "node-app"
DOMAIN = f"{HOST}.sandbox.test"
ENV_PATH = f"/etc/{APP}/{APP}.env"
SECRET = "sandbox-app-secret-0001"  # inventories/sandbox-env/node-app.env (dummy value)


class H7(OneHostFab):
    def __init__(self, fleet, tmp: Path):
        super().__init__(fleet, HOST, tmp, tmp / "verify-h7.yaml")
        self.inv.write_text(yaml.safe_dump({
            "include": [str(REPO / "inventories" / "sandbox-node.yaml")],
            "swap": {"size": "256M"},
            "verify": {"cert_issuer": "Pebble", "cert_min_days": 7, "checks": [
                {"name": "home_https", "path": "/", "via": "https", "body_contains": "fabship node-app"},
                {"name": "version", "path": "/version", "body_contains": "1.0.0"},
                {"name": "unknown_path_404", "path": "/no-such-page", "expect_status": 404, "via": "nginx"},
            ]},
        }))

    def live_port(self) -> int:
        m = re.search(r"server 127\.0\.0\.1:(\d+)", self.must(f"cat /etc/nginx/fabship/{APP}-upstream.conf"))
        return int(m.group(1))

    def version(self) -> str:
        return self.must(f"curl -sk --resolve {DOMAIN}:443:127.0.0.1 https://{DOMAIN}/version").strip()

    def wait_healthy(self, port, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sh(f"curl -sf -o /dev/null http://127.0.0.1:{port}/health")[0] == 0:
                return
            time.sleep(0.5)
        raise AssertionError(f"{APP} on {port} not healthy after {timeout}s")


def failed(results) -> dict:
    return {n: c["message"] for n, c in results.items() if c["status"] == "failed"}


def app_copy(tmp: Path, version: str) -> Path:
    dst = tmp / f"{APP}-{version}"
    if not dst.exists():
        shutil.copytree(REPO / "apps" / APP, dst, ignore=shutil.ignore_patterns("node_modules", "dist", "FAIL_*"))
        (dst / "VERSION").write_text(version + "\n")
    return dst


def reset(fleet) -> None:
    """h7 without the node sample (a previous session's leftovers)."""
    script = "\n".join([
        "set +e",
        f"systemctl stop '{APP}@*.service' 2>/dev/null",
        f"rm -f /etc/systemd/system/{APP}@.service /etc/systemd/system/multi-user.target.wants/{APP}@*.service",
        f"rm -f /etc/nginx/sites-enabled/{APP}.conf /etc/nginx/sites-available/{APP}.conf "
        f"/etc/nginx/fabship/{APP}-upstream.conf",
        f"rm -rf /opt/{APP} /etc/{APP} /root/verify-test",
        "systemctl daemon-reload; systemctl reset-failed 2>/dev/null",
        "if systemctl is-active -q nginx; then nginx -t >/dev/null 2>&1 && systemctl reload nginx; fi",
        "true",
    ])
    code, out, err = fleet.run(HOST, script)
    assert code == 0, err or out


@pytest.fixture(scope="module")
def h7(sandbox_fleet, tmp_path_factory):
    if HOST not in [h.name for h in sandbox_fleet.hosts]:
        pytest.skip(f"the sandbox fleet has no {HOST} (run with FABSHIP_SANDBOX_COUNT=8)")
    reset(sandbox_fleet)
    h = H7(sandbox_fleet, tmp_path_factory.mktemp("verify-h7"))
    h.fab("bootstrap")
    h.fab("deploy", "--artifact", str(app_copy(h.tmp, "1.0.0")))
    h.must("mkdir -p /root/verify-test")
    return h


EXPECTED_PASS = {"packages", "swap_fstab_once", "app_user", "app_dirs", "env_file", "env_file_owner",
                 "env_file_mode", "unit_enabled", "unit_active", "failed_units", "nginx_config", "nginx_running",
                 "listen_http", "listen_https", "cert_valid", "http_redirect", "health", "nginx_proxy",
                 "current_release", "active_slot", "http:home_https", "http:version", "http:unknown_path_404"}


def swap_is_possible(h: H7) -> bool:
    return "swapfile" in h.must("cat /proc/swaps")  # a linked /swapfile shows as its target


def test_bootstrapped_and_deployed_host_passes_everything(h7):
    r, results = h7.verify(expect=0)
    assert failed(results) == {}
    passed = {n for n, c in results.items() if c["status"] == "passed"}
    skipped = {n: c["message"] for n, c in results.items() if c["status"] == "skipped"}
    assert EXPECTED_PASS <= passed | set(skipped), results
    if swap_is_possible(h7):
        assert "swap_active" in passed
    else:  # nspawn: the kernel refuses swapon in the container; said, never a false pass
        assert set(skipped) == {"swap_active"}, skipped
        assert "container" in skipped["swap_active"]
    assert EXPECTED_PASS <= passed
    assert "Pebble" in results["cert_valid"]["message"] and DOMAIN in results["cert_valid"]["message"]
    # the table: HOST PASSED FAILED SKIPPED FAILED CHECKS
    row = [ln.split() for ln in r.stdout.splitlines() if ln.startswith(f"{HOST} ")]
    assert row == [[HOST, str(len(passed)), "0", str(len(skipped)), "-"]], r.stdout
    # one host: the whole checklist is printed; one round trip gathered every fact
    assert f"[{HOST}] ok           env_file_mode: 0600" in r.stdout
    assert h7.record("verify")["hosts"][HOST]["remote_commands"] == 1


def expired_cert_pems() -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DOMAIN)])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=90)).not_valid_after(now - timedelta(days=3))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(DOMAIN)]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())


def put_expired_cert(h: H7) -> None:
    cert, key = expired_cert_pems()
    live = f"/etc/letsencrypt/live/{DOMAIN}"
    b64c, b64k = base64.b64encode(cert.encode()).decode(), base64.b64encode(key.encode()).decode()
    h.must("rm -rf /root/verify-test/le && cp -a /etc/letsencrypt /root/verify-test/le && "
           f"echo {b64c} | base64 -d > \"$(readlink -f {live}/fullchain.pem)\" && "
           f"echo {b64k} | base64 -d > \"$(readlink -f {live}/privkey.pem)\" && "
           "nginx -t 2>/dev/null && systemctl reload nginx && sleep 1")


def restore_cert(h: H7) -> None:
    h.must("rm -rf /etc/letsencrypt && cp -a /root/verify-test/le /etc/letsencrypt && systemctl reload nginx "
           "&& sleep 1")


def stop_unit(h: H7) -> None:
    h.port = h.live_port()
    h.must(f"systemctl stop {APP}@{h.port}.service")


def start_unit(h: H7) -> None:
    h.must(f"systemctl start {APP}@{h.port}.service")
    h.wait_healthy(h.port)


def swapoff(h: H7) -> None:
    if not swap_is_possible(h):
        pytest.skip("swap is not active on h7 (swapon is refused inside this container): "
                    "swap_active reports 'skipped' there, see test_bootstrapped_and_deployed_host_passes_everything")
    h.must("swapoff /swapfile")


BREAKS = {
    # name: (break, repair, the one check that must fail, text its message must hold)
    "env file chmod 644": (
        lambda h: h.must(f"chmod 644 {ENV_PATH}"), lambda h: h.must(f"chmod 600 {ENV_PATH}"),
        "env_file_mode", f"env file {ENV_PATH} has mode 0644, expected 0600 (world bits set)"),
    "unit stopped": (
        stop_unit, start_unit, "unit_active", "is inactive (dead), expected active (running)"),
    "swapoff": (
        swapoff, lambda h: h.must("swapon /swapfile"), "swap_active", "swap /swapfile is not active"),
    "expired certificate": (
        put_expired_cert, restore_cert, "cert_valid", f"certificate for {DOMAIN}: expired on"),
    "fstab line removed": (
        lambda h: h.must("cp /etc/fstab /root/verify-test/fstab && sed -i '\\#^/swapfile[[:space:]]#d' /etc/fstab"),
        lambda h: h.must("cp /root/verify-test/fstab /etc/fstab"),
        "swap_fstab_once", "/etc/fstab has no swap line for /swapfile"),
    "env file owned by the app user": (
        lambda h: h.must(f"chown {APP}:{APP} {ENV_PATH}"), lambda h: h.must(f"chown root:{APP} {ENV_PATH}"),
        "env_file_owner", f"env file {ENV_PATH} is owned by {APP}:{APP}, expected root:{APP}"),
    "nginx config broken": (
        lambda h: h.must(f"cp /etc/nginx/sites-available/{APP}.conf /root/verify-test/site && "
                         f"echo 'bogus_directive on;' >> /etc/nginx/sites-available/{APP}.conf"),
        lambda h: h.must(f"cp /root/verify-test/site /etc/nginx/sites-available/{APP}.conf"),
        "nginx_config", f'nginx -t fails: unknown directive "bogus_directive" in /etc/nginx/sites-enabled/{APP}.conf'),
}


@pytest.mark.parametrize("case", list(BREAKS))
def test_one_break_fails_exactly_the_matching_check(h7, case):
    brk, repair, check, message = BREAKS[case]
    brk(h7)
    try:
        r, results = h7.verify(expect=1)
        got = failed(results)
        assert list(got) == [check], f"{case}: expected only {check} to fail, got {got}"
        assert message in got[check], got[check]
        assert f"[{HOST}] failed       {check}: " in r.stdout
        row = [ln.split() for ln in r.stdout.splitlines() if ln.startswith(f"{HOST} ")][0]
        assert row[2] == "1" and row[4] == check, r.stdout
        assert r.stderr.strip() == f"fabship: verify failed on: {HOST}"
        if case == "unit stopped":  # what depends on the unit is skipped naming it, not failed again
            for dep in ("health", "nginx_proxy", "http:home_https", "http:version"):
                assert results[dep] == {"name": dep, "status": "skipped", "message": "unit_active failed"}
    finally:
        repair(h7)
    _, results = h7.verify(expect=0)
    assert failed(results) == {}


def test_pytest_suite_over_fabship_and_testinfra_backends(h7):
    """The same checks as pytest tests: over fabship's SSH layer, over
    testinfra's ssh:// with the ssh_config fab writes, and over paramiko://
    (made strict by the suite)."""
    fleet = h7.fleet
    cfg = h7.tmp / "ssh_config"
    h7.fab("verify", "--write-ssh-config", str(cfg))
    assert "StrictHostKeyChecking yes" in cfg.read_text()
    addr = fleet.host(HOST).address
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
            str(REPO / "tasks" / "verify" / "suite"), f"--fabship-inventory={h7.inv}", f"--fabship-limit={HOST}"]
    for extra in ([], [f"--hosts=ssh://{HOST}", f"--ssh-config={cfg}"],
                  [f"--hosts=paramiko://root@{addr}", f"--ssh-identity-file={fleet.key_file}"]):
        r = subprocess.run(base + extra, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{extra}: {r.stdout[-3000:]}{r.stderr[-2000:]}"
        m = re.search(r"(\d+) passed", r.stdout)
        assert m and int(m.group(1)) >= len(EXPECTED_PASS), r.stdout[-2000:]
    # paramiko:// with a known_hosts that lacks the host: refused, not trusted
    bad = h7.tmp / "bad.yaml"
    bad.write_text(yaml.safe_dump({"include": [str(h7.inv)], "ssh": {"known_hosts": str(h7.tmp / "empty_kh")}}))
    (h7.tmp / "empty_kh").write_text("")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(REPO / "tasks" / "verify" / "suite"), f"--fabship-inventory={bad}",
                        f"--fabship-limit={HOST}", f"--hosts=paramiko://root@{addr}",
                        f"--ssh-identity-file={fleet.key_file}"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0 and "host key not in" in r.stdout, r.stdout[-2000:]


def test_verify_through_a_jump_host(h7):
    """ssh.jump_host: fab's connection to h7 goes through h1 (h7's sshd sees h1
    as the client), and the ssh_config fab writes makes OpenSSH do the same."""
    fleet = h7.fleet
    bastion = fleet.hosts[0]
    assert bastion.name != HOST
    jump = f"ssh.jump_host=root@{bastion.address}"
    since = h7.must("date +%s").strip()
    r, results = h7.verify("--set", jump, expect=0)
    assert failed(results) == {}
    log = h7.must(f"journalctl -u ssh --since @{since} --no-pager -o cat")
    assert f"Accepted publickey for root from {bastion.address} " in log, log
    cfg = h7.tmp / "jump_ssh_config"
    h7.fab("verify", "--set", jump, "--write-ssh-config", str(cfg))
    p = subprocess.run(["ssh", "-F", str(cfg), HOST, "echo $SSH_CONNECTION"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and p.stdout.split()[0] == bastion.address, p.stdout + p.stderr


def test_deploy_gate_failure_rolls_back(h7):
    """A release that passes its health check but fails a gate check never
    keeps the traffic: the old instance keeps serving."""
    port, version = h7.live_port(), h7.version()
    assert version == "1.0.0"
    r = h7.fab("deploy", "--artifact", str(app_copy(h7.tmp, "2.0.0")), expect=1)
    out = r.stdout + r.stderr
    assert "verify gate failed: http:version: GET" in out and "body lacks '1.0.0'" in out, out[-3000:]
    assert h7.live_port() == port and h7.version() == "1.0.0"
    other = ({3001, 3002} - {port}).pop()
    assert h7.sh(f"systemctl is-active -q {APP}@{other}.service")[0] != 0, "the new instance still runs"
    rel = [json.loads(ln) for ln in h7.must(f"cat /opt/{APP}/.fabship/releases.jsonl").splitlines()]
    assert rel[-1]["result"] == "failed"
    # --no-gate: the same release deploys (health check only); verify then names the check
    h7.fab("deploy", "--artifact", str(app_copy(h7.tmp, "2.0.0")), "--no-gate")
    assert h7.version() == "2.0.0"
    _, results = h7.verify(expect=1)
    assert list(failed(results)) == ["http:version"]
    # back to 1.0.0 (rollback's own gate passes with 1.0.0 serving)
    h7.fab("rollback")
    assert h7.version() == "1.0.0"
    assert [s for s in h7.record("rollback")["hosts"][HOST]["steps"] if s["name"] == "verify gate"][0]["status"] \
        == "ok"


def test_rotate_env_gate_restores_the_old_env(h7):
    """A rotation whose restarted app fails a gate check is undone: the old env
    file comes back (blue/green: the old instance never stopped serving)."""
    before = h7.must(f"sha256sum {ENV_PATH}").split()[0]
    env = h7.tmp / "rotated.env"
    env.write_text((REPO / "inventories" / "sandbox-env" / "node-app.env").read_text()
                   .replace(SECRET, "rotated-secret-value-1234"))
    r = h7.fab("rotate-env", "--env-file", str(env), "--set",
               "verify.checks=[{name: never, path: /version, body_contains: no-such-text}]", expect=1)
    out = r.stdout + r.stderr
    assert "verify gate failed: http:never" in out, out[-3000:]
    assert "rotated-secret-value-1234" not in out
    assert h7.must(f"sha256sum {ENV_PATH}").split()[0] == before
    assert h7.must(f"stat -c %a {ENV_PATH}").strip() == "600"
    _, results = h7.verify(expect=0)
    assert failed(results) == {}
