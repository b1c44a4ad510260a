"""`fab bootstrap` on real sandbox hosts h1 and h2 (issue 4), checked with
independent testinfra assertions over SSH (not with bootstrap's own facts):

- a fresh bootstrap of a Node app: packages, swap file + one fstab line (swap
  active, or honestly skipped because the container forbids swapon), app
  layout, unit enabled, `nginx -t`, env file 0600 root:APP, a Pebble-issued
  certificate, HTTP -> HTTPS redirect and the app over HTTPS;
- the second run reports 0 changed with one remote command per host;
- --dry-run shows a unified diff and key names only, and changes nothing;
- a broken nginx input fails the run with nginx -t's message while the old
  site file stays byte for byte and nginx keeps serving.

Hosts h1 and h2 are cleaned of this test's app first (packages are kept,
except jq, which is purged so the package step has work to do).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from fab_cli import run_fab

REPO = Path(__file__).resolve().parents[2]
HOSTS = ("h1", "h2")
APP = "bootdemo"
ENV_PATH = f"/etc/{APP}/{APP}.env"
SECRET = "s3cr3t-bootstrap-" + hashlib.sha256(os.urandom(8)).hexdigest()[:12]


def domain(h: str) -> str:
    return f"{h}.sandbox.test"


def reset_script() -> str:
    lines = ["set +e"]
    for app in (APP, "tlsfail", "demo", "benchapp", "dsvc", "pyapp"):   # also what bench/ and manual runs leave
        lines += app_reset_lines(app)
    return "\n".join(lines + [
        # keep a linked /swapfile (the sandbox links it to a plain fs): remove the target
        "swapoff /swapfile 2>/dev/null; rm -f \"$(readlink -f /swapfile)\"",
        "awk '$1 != \"/swapfile\"' /etc/fstab > /etc/fstab.new && mv /etc/fstab.new /etc/fstab",
        "if command -v certbot >/dev/null; then for c in /etc/letsencrypt/renewal/*.conf; do [ -e \"$c\" ] || continue;"
        " certbot delete --non-interactive --cert-name \"$(basename \"$c\" .conf)\" >/dev/null 2>&1; done; fi",
        "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q jq >/dev/null 2>&1",
        "systemctl daemon-reload",
        "if systemctl is-active -q nginx; then nginx -t >/dev/null 2>&1 && systemctl reload nginx; fi",
        "true",
    ])


def app_reset_lines(app: str) -> list[str]:
    q = shlex.quote(app)
    return [
        f"systemctl stop '{app}@*.service' {q}.service 2>/dev/null",
        f"systemctl disable '{app}@3001.service' 2>/dev/null",
        f"rm -f /etc/systemd/system/{q}.service '/etc/systemd/system/{app}@.service'",
        f"rm -f /etc/nginx/sites-enabled/{q}.conf /etc/nginx/sites-available/{q}.conf /etc/nginx/conf.d/{q}.conf "
        f"/etc/nginx/fabship/{q}-upstream.conf",
        f"rm -rf /opt/{q} /etc/{q}",
        f"userdel -r {q} >/dev/null 2>&1; groupdel {q} 2>/dev/null",
    ]


@pytest.fixture(scope="module")
def fleet(sandbox_fleet):
    names = [h.name for h in sandbox_fleet.hosts]
    if not all(h in names for h in HOSTS):
        pytest.skip("the sandbox fleet has no h1/h2")
    for h in HOSTS:
        code, out, err = sandbox_fleet.run(h, reset_script(), timeout=300)
        assert code == 0, f"cleaning {h} failed: {err or out}"
    return sandbox_fleet


@pytest.fixture(scope="module")
def work(tmp_path_factory, fleet):
    d = tmp_path_factory.mktemp("bootstrap")
    (d / "app.env").write_text(f"APP_SECRET={SECRET}\nLOG_LEVEL=info\n")
    (d / "inv.yaml").write_text(f"""
include: [{REPO / 'inventories' / 'sandbox.yaml'}]
packages: [nginx, git, jq, unzip]
swap: {{size: 64M}}
app: {{name: {APP}, kind: node, port: 3000, start: node dist/server.js}}
deploy: {{source: artifact, artifact: dist.tar.gz, build: [npm ci --omit=dev]}}   # npm: its build uses it
nginx: {{server_name: "{{host}}.sandbox.test", client_max_body_size: 20M}}
tls: {{enabled: true, email: ops@sandbox.test, domains: ["{{host}}.sandbox.test"]}}
env: {{source: {{type: file, file: {d / 'app.env'}}}}}
""")
    lines = []
    for h in fleet.hosts:
        if h.name in HOSTS:
            lines += [f"Host {h.name}", f"  HostName {h.address}", "  User root",
                      f"  IdentityFile {fleet.key_file}", f"  UserKnownHostsFile {fleet.known_hosts}",
                      "  StrictHostKeyChecking yes", "  BatchMode yes"]
    (d / "ssh_config").write_text("\n".join(lines) + "\n")
    return d


def fab(work: Path, *args: str, expect: int = 0, timeout: float = 1800) -> subprocess.CompletedProcess:
    r = run_fab(*args, "-i", work / "inv.yaml", "--limit", ",".join(HOSTS), runs_dir=work / "runs", timeout=timeout)
    out = r.stdout + r.stderr
    assert r.returncode == expect, f"fab {' '.join(args)} exited {r.returncode}, expected {expect}:\n{out[-6000:]}"
    assert SECRET not in out, "an env value leaked into fab's output"
    assert "Traceback" not in out
    return r


def last_record(work: Path) -> dict:
    recs = sorted((work / "runs").glob("*-bootstrap-*.json"), key=lambda p: p.stat().st_mtime)
    text = recs[-1].read_text()
    assert SECRET not in text, "an env value leaked into the run record"
    return json.loads(text)


def infra_host(work: Path, name: str):
    import testinfra

    return testinfra.get_host(f"ssh://{name}", ssh_config=str(work / "ssh_config"))


def curl(fleet, h: str, url: str, *args: str) -> tuple[int, str, str]:
    """From the control machine, with the Pebble issuer root as the only CA."""
    root = fleet.services["pebble"]["acme_issuer_root"]
    address = fleet.host(h).address
    host = domain(h)
    cmd = ["curl", "-sS", "--max-time", "10", "--cacert", root, "--resolve", f"{host}:443:{address}",
           "--resolve", f"{host}:80:{address}", "-o", "-", "-w", "\n%{http_code} %{redirect_url}", *args, url]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    body, _, tail = r.stdout.rpartition("\n")
    code, _, redirect = tail.partition(" ")
    return int(code or 0), redirect, body


def deploy_by_hand(fleet, h: str) -> None:
    """A trivial release (the sample app) so HTTPS answers with the app; the
    real `fab deploy` is tested elsewhere."""
    tar = subprocess.run(["tar", "-C", str(REPO / "apps" / "node-app"), "-cf", "-", "."],
                         capture_output=True, check=True).stdout
    client = fleet.connect(h)
    try:
        cmd = (f"set -e; d=/opt/{APP}/releases/test1; mkdir -p $d; tar -xf - -C $d; chown -R {APP}:{APP} $d; "
               f"cd $d && runuser -u {APP} -- node scripts/build.js >/dev/null; "
               f"ln -sfn $d /opt/{APP}/.fabship/slots/3001; systemctl restart {APP}@3001.service; "
               f"for i in $(seq 50); do curl -fsS -o /dev/null localhost:3001/health && exit 0; sleep 0.2; done; "
               f"journalctl -u {APP}@3001 --no-pager | tail -20; exit 1")
        stdin, stdout, stderr = client.exec_command(cmd, timeout=120)
        stdin.write(tar)
        stdin.channel.shutdown_write()
        code = stdout.channel.recv_exit_status()
        assert code == 0, stdout.read().decode() + stderr.read().decode()
    finally:
        client.close()


def test_fresh_bootstrap_then_idempotent_then_safe_nginx_failure(fleet, work):
    # -- 1. fresh bootstrap on h1 and h2 in parallel ------------------------------------------
    r = fab(work, "bootstrap")
    rec = last_record(work)
    for h in HOSTS:
        steps = {s["name"]: s for s in rec["hosts"][h]["steps"]}
        assert rec["hosts"][h]["result"] == "changed", rec["hosts"][h]
        assert steps["packages"]["status"] == "changed" and "jq" in steps["packages"]["message"]
        assert steps["tls"]["status"] == "changed"
        assert "sha256" in steps["env file"]["message"]

    for h in HOSTS:
        t = infra_host(work, h)
        # packages
        for pkg in ("nginx", "git", "jq", "unzip", "nodejs", "npm", "certbot"):
            assert t.package(pkg).is_installed, f"{h}: {pkg} not installed"
        # swap: the file, exactly one fstab line; active, or skipped because the container forbids it
        sf = t.file("/swapfile")
        assert sf.is_file and sf.mode == 0o600 and sf.user == "root" and sf.size == 64 * 1024 * 1024
        fstab = [ln.split() for ln in t.file("/etc/fstab").content_string.splitlines()]
        assert [ln for ln in fstab if ln and ln[0] == "/swapfile"] == [["/swapfile", "none", "swap", "sw", "0", "0"]]
        active = "/swapfile" in t.file("/proc/swaps").content_string
        if not active:
            virt = t.run("systemd-detect-virt -c").stdout.strip()
            assert virt not in ("", "none"), f"{h}: swap not active on a non-container host"
            assert re.search(rf"\[{h}\] skipped +swap \(activate\): swapon not permitted in this container "
                             rf"\({virt}", r.stdout), r.stdout
        # layout
        assert t.user(APP).exists and t.group(APP).exists
        for path, owner, group, mode in [(f"/opt/{APP}", "root", APP, 0o755),
                                         (f"/opt/{APP}/releases", APP, APP, 0o755),
                                         (f"/opt/{APP}/shared", APP, APP, 0o755),
                                         (f"/opt/{APP}/.fabship/slots", "root", APP, 0o750),
                                         (f"/etc/{APP}", "root", APP, 0o750)]:
            d = t.file(path)
            assert d.is_directory and (d.user, d.group, d.mode) == (owner, group, mode), path
        # unit: enabled (blue/green instance for the first port), not started before a release
        assert t.file(f"/etc/systemd/system/{APP}@.service").contains("Restart=always")
        assert t.service(f"{APP}@3001").is_enabled
        # nginx
        assert t.run("nginx -t").rc == 0
        assert t.service("nginx").is_running and t.service("nginx").is_enabled
        assert not t.file("/etc/nginx/sites-enabled/default").exists
        site = t.file(f"/etc/nginx/sites-available/{APP}.conf").content_string
        for needle in ("X-Forwarded-Proto", "X-Forwarded-For", "proxy_set_header Host $host",
                       "client_max_body_size 20m", "Upgrade $http_upgrade", "/.well-known/acme-challenge/",
                       f"server_name {domain(h)}", "listen 443 ssl"):
            assert needle in site, needle
        # env file: 0600 root:APP, the content installed, never shown
        env = t.file(ENV_PATH)
        assert (env.user, env.group, env.mode) == ("root", APP, 0o600)
        assert t.run(f"grep -c '^APP_SECRET=' {ENV_PATH}").stdout.strip() == "1"
        # TLS: a Pebble certificate, the renewal timer
        assert t.service("certbot.timer").is_enabled
        issuer = t.run(f"openssl x509 -in /etc/letsencrypt/live/{domain(h)}/fullchain.pem -noout -issuer").stdout
        assert "Pebble" in issuer, issuer

    # HTTP redirects to HTTPS; HTTPS (verified against Pebble's root) reaches nginx
    for h in HOSTS:
        code, redirect, _ = curl(fleet, h, f"http://{domain(h)}/some/path?q=1")
        assert code == 301 and redirect == f"https://{domain(h)}/some/path?q=1"
        code, _, _ = curl(fleet, h, f"https://{domain(h)}/")
        assert code == 502   # no release yet: nginx answers, the upstream is empty
    deploy_by_hand(fleet, "h1")
    code, _, body = curl(fleet, "h1", f"https://{domain('h1')}/")
    assert code == 200 and "fabship node-app" in body

    # -- 2. the second run changes nothing: one remote command per host -----------------------------
    r = fab(work, "bootstrap")
    rec = last_record(work)
    for h in HOSTS:
        hr = rec["hosts"][h]
        assert hr["changed"] == 0 and hr["result"] == "ok", hr["steps"]
        assert hr["remote_commands"] == 1, hr["commands"]
    assert re.search(r"h1 +\S+ +ok +\d+ +0 ", r.stdout), r.stdout

    # -- 3. dry-run: diffs for templates, key names for the env file, nothing changed ------------------
    before = {h: fleet.run(h, f"sha256sum /etc/nginx/sites-available/{APP}.conf {ENV_PATH}")[1] for h in HOSTS}
    (work / "app2.env").write_text(f"APP_SECRET={SECRET}-new\nLOG_LEVEL=info\nNEW_KEY=x1\n")
    r = fab(work, "bootstrap", "--dry-run", "--env-file", str(work / "app2.env"),
            "--set", "nginx.client_max_body_size=50M")
    assert "-    client_max_body_size 20m;" in r.stdout and "+    client_max_body_size 50m;" in r.stdout
    assert re.search(r"env file: /etc/bootdemo/bootdemo.env: added NEW_KEY; changed APP_SECRET", r.stdout), r.stdout
    for h in HOSTS:
        assert fleet.run(h, f"sha256sum /etc/nginx/sites-available/{APP}.conf {ENV_PATH}")[1] == before[h]

    # -- 4. a broken nginx input: nginx -t fails, old bytes restored, nginx keeps serving ----------------
    # (a name that would end the directive, `bad;name`, no longer reaches nginx: the schema refuses it)
    r = fab(work, "bootstrap", "--set", "nginx.server_name=bad;name", expect=2)
    assert "nginx.server_name" in r.stderr
    # a regex name nginx itself rejects: the schema allows `~regex` names, nginx -t catches this one
    r = fab(work, "bootstrap", "--set", "nginx.server_name=~^(broken$", expect=1)
    assert "nginx -t rejected the new config" in r.stdout and "pcre" in r.stdout.lower(), r.stdout
    for h in HOSTS:
        after = fleet.run(h, f"sha256sum /etc/nginx/sites-available/{APP}.conf {ENV_PATH}")[1]
        assert after == before[h], f"{h}: the site file changed although nginx -t failed"
        assert fleet.run(h, "systemctl is-active nginx && nginx -t")[0] == 0
        assert fleet.run(h, "ls -d /etc/nginx/.fabship-backup.* 2>/dev/null")[1] == ""
    code, _, body = curl(fleet, "h1", f"https://{domain('h1')}/")
    assert code == 200 and "fabship node-app" in body


def test_bad_input_changes_nothing(fleet, work):
    """Invalid inventory input: one clear line, exit 2, no host touched (no connection)."""
    r = fab(work, "bootstrap", "--set", "swap.size=lots", expect=2)
    assert r.stderr.strip().splitlines()[-1].startswith("fabship: ")
    assert "swap.size: expected a size such as 512M or 2G, got 'lots'" in r.stderr


def test_tls_failure_leaves_http_serving_and_says_why(fleet, work):
    """A domain Pebble cannot validate: the tls step fails with certbot's reason,
    exit 1, and the site keeps answering plain HTTP."""
    inv = work / "tlsfail.yaml"
    inv.write_text(f"""
include: [{REPO / 'inventories' / 'sandbox.yaml'}]
app: {{name: tlsfail, kind: node, port: 3100}}
nginx: {{server_name: "nope.{{host}}.sandbox.test"}}
tls: {{enabled: true, email: ops@sandbox.test}}
""")
    try:
        r = run_fab("bootstrap", "-i", inv, "--limit", "h2", runs_dir=work / "runs")
        assert r.returncode == 1, r.stdout + r.stderr
        assert re.search(r"FAILED +tls: certbot failed for nope\.h2\.sandbox\.test: .*nope\.h2\.sandbox\.test.*; "
                         r"the site keeps serving plain HTTP", r.stdout), r.stdout
        assert "Traceback" not in r.stdout + r.stderr
        code, out, _ = fleet.run("h2", "curl -s -o /dev/null -w '%{http_code}' -H 'Host: nope.h2.sandbox.test' "
                                       "http://127.0.0.1/ && nginx -t 2>&1 | tail -1")
        assert code == 0 and out.startswith("502") and "successful" in out   # nginx answers; no release yet
        assert "listen 443" not in fleet.run("h2", "cat /etc/nginx/sites-available/tlsfail.conf")[1]
    finally:
        fleet.run("h2", "\n".join(["set +e"] + app_reset_lines("tlsfail") +
                                   ["systemctl daemon-reload; nginx -t >/dev/null 2>&1 && systemctl reload nginx; true"]))
