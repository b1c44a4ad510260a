"""Each check's verdict and message from recorded command output: a healthy
host passes everything; breaking one thing fails exactly the matching check
(its dependents are skipped, naming it)."""
import json

import pytest

from tasks.verify import checks as C


from tasks.verify import spec as CS

from tasks.verify import probes as CP
from .test_verify_checks import BASE, inv_from

RID = "20260101T000000Z-1.0.0"
NOW = 1767225600  # 2026-01-01T00:00:00Z

OS = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
PKGS = ["curl", "openssl", "ca-certificates", "nginx", "certbot", "python3-certbot-nginx", "nodejs", "npm", "jq"]

GOOD = {
    "now": str(NOW),
    "virt": (1, "none"),
    "os": OS,
    "packages": "".join(f"{p}\tii \n" for p in PKGS) + "bash\tii \n",
    "swaps": "Filename\tType\tSize\tUsed\tPriority\n/swapfile  file  1048572  0  -2\n",
    "fstab": "# <file system> <mount point> <type>\nUUID=x / ext4 defaults 0 1\n/swapfile none swap sw 0 0\n",
    "swapfile": "1073741824|root|600",
    "user": "999\nshop\nshop:x:999:",
    "dirs": "/opt/shop|root|shop|755|directory\n/opt/shop/releases|shop|shop|755|directory\n"
            "/opt/shop/shared|shop|shop|755|directory\n/opt/shop/.fabship|root|shop|750|directory\n"
            "/opt/shop/.fabship/slots|root|shop|750|directory\n/etc/shop|root|shop|750|directory\n"
            "/etc/nginx/fabship|root|root|755|directory\n/var/www/fabship-acme|root|root|755|directory\n",
    "env": "/etc/shop/shop.env|root|shop|600|regular file",
    "port": "3001",
    "unit": "Id=shop@3001.service\nLoadState=loaded\nActiveState=active\nSubState=running\n"
            "UnitFileState=enabled\nResult=success\nNRestarts=0",
    "failed": "",
    "nginx_t": "nginx: the configuration file /etc/nginx/nginx.conf syntax is ok\n"
               "nginx: configuration file /etc/nginx/nginx.conf test is successful",
    "nginx_active": "active",
    "listen": "LISTEN 0 511 0.0.0.0:80 0.0.0.0:*\nLISTEN 0 511 0.0.0.0:443 0.0.0.0:*\n"
              "LISTEN 0 511 127.0.0.1:3001 0.0.0.0:*\nLISTEN 0 128 [::]:22 [::]:*",
    "cert": "notAfter=Mar  1 12:00:00 2026 GMT\nissuer=CN = Pebble Intermediate CA 12ab34\n"
            "subject=\nX509v3 Subject Alternative Name: \n    DNS:web1.example.test",
    "cert_chain": "/tmp/tmp.Xy/chain.pem: OK",   # openssl verify of the served chain
    "redirect": "301 https://web1.example.test/",
    "health": "0 200\n\nok",
    "nginx_proxy": "0 200\n\nok",
    "current": f"releases/{RID}\nisdir",
    "release_log": json.dumps({"id": RID, "action": "deploy", "result": "ok"}),
    "slot": f"../releases/{RID}",
    "http.0": '0 200\n\n{"id":"x"}',
    "http.1": '0 401\n\n{"error":"unauthorized"}',
}


def facts(**changes):
    d = dict(GOOD)
    d.update(changes)
    out = {}
    for k, v in d.items():
        if v is None:
            continue
        rc, text = v if isinstance(v, tuple) else (0, v)
        out[k.replace("__", ".")] = CP.Fact(rc, text)
    return out


@pytest.fixture
def spec(tmp_path):
    inv = inv_from(tmp_path)
    return CS.build_spec(inv, inv.resolve_hosts()[0])


def run(spec, stage=None, **changes):
    return {r.name: r for r in C.evaluate(C.select(C.checks_for(spec), stage=stage),
                                          C.Probe(spec, facts(**changes), stage))}


def failed(results):
    return {n: r.message for n, r in results.items() if r.status == C.FAIL}


def test_healthy_host_passes_everything(spec):
    res = run(spec)
    assert failed(res) == {}
    assert {r.status for r in res.values()} == {C.PASS}
    assert res["cert_valid"].message.startswith("valid for web1.example.test until 2026-03-01")


BREAKS = {
    "env file chmod 644": (
        {"env": "/etc/shop/shop.env|root|shop|644|regular file"},
        "env_file_mode", "env file /etc/shop/shop.env has mode 0644, expected 0600 (world bits set)"),
    "env file owned by the app": (
        {"env": "/etc/shop/shop.env|shop|shop|600|regular file"},
        "env_file_owner", "env file /etc/shop/shop.env is owned by shop:shop, expected root:shop"),
    "env file missing": (
        {"env": (1, "stat: cannot statx '/etc/shop/shop.env': No such file or directory")},
        "env_file", "env file /etc/shop/shop.env is missing"),
    "unit stopped": (
        {"unit": "Id=shop@3001.service\nLoadState=loaded\nActiveState=inactive\nSubState=dead\n"
                 "UnitFileState=enabled\nResult=success",
         "health": "7 000\ncurl: (7) Failed to connect to 127.0.0.1 port 3001\n",
         "nginx_proxy": "0 502\n\nBad Gateway", "http__0": "0 502\n\n", "http__1": "0 502\n\n"},
        "unit_active", "unit shop@3001.service is inactive (dead), expected active (running); "
                       "see: journalctl -u shop@3001.service"),
    "unit disabled": (
        {"unit": "Id=shop@3001.service\nLoadState=loaded\nActiveState=active\nSubState=running\n"
                 "UnitFileState=disabled"},
        "unit_enabled", "unit shop@3001.service is disabled, expected enabled"),
    "swapoff": (
        {"swaps": "Filename\tType\tSize\tUsed\tPriority\n"},
        "swap_active", "swap /swapfile is not active (no swap is active); expected 1G"),
    "swap too small": (
        {"swaps": "Filename Type Size Used Priority\n/swapfile file 524284 0 -2\n"},
        "swap_active", "swap /swapfile is 512.0 MiB, expected 1G"),
    "fstab line removed": (
        {"fstab": "UUID=x / ext4 defaults 0 1\n"},
        "swap_fstab_once", "/etc/fstab has no swap line for /swapfile"),
    "fstab line twice": (
        {"fstab": "/swapfile none swap sw 0 0\n/swapfile  none  swap  defaults 0 0\n"},
        "swap_fstab_once", "/etc/fstab has 2 swap lines for /swapfile, expected exactly one"),
    "expired certificate": (
        {"cert": "notAfter=Dec 30 00:00:00 2025 GMT\nissuer=CN = Pebble Intermediate CA 12ab34\n"
                 "subject=CN = web1.example.test\nX509v3 Subject Alternative Name: \n    DNS:web1.example.test"},
        "cert_valid", "certificate for web1.example.test: expired on 2025-12-30 (2 days ago)"),
    "certificate expiring soon": (
        {"cert": "notAfter=Jan  5 00:00:00 2026 GMT\nissuer=CN = Pebble Intermediate CA 12ab34\n"
                 "X509v3 Subject Alternative Name: \n    DNS:web1.example.test"},
        "cert_valid", "in 4 days: fewer than 10 (verify.cert_min_days)"),
    "wrong issuer": (
        {"cert": "notAfter=Mar  1 12:00:00 2026 GMT\nissuer=CN = web1.example.test\n"
                 "X509v3 Subject Alternative Name: \n    DNS:web1.example.test"},
        "cert_valid", "issuer is 'CN = web1.example.test', expected 'Pebble' (verify.cert_issuer)"),
    "certificate for another name": (
        {"cert": "notAfter=Mar  1 12:00:00 2026 GMT\nissuer=CN = Pebble Intermediate CA 1\n"
                 "X509v3 Subject Alternative Name: \n    DNS:other.example.test"},
        "cert_valid", "does not cover web1.example.test (names: other.example.test)"),
    "no redirect": (
        {"redirect": "200 "}, "http_redirect",
        "http://web1.example.test/ answers 200, expected a redirect to https://web1.example.test/"),
    "nginx config broken": (
        {"nginx_t": (1, 'nginx: [emerg] unknown directive "bogus" in /etc/nginx/sites-enabled/shop.conf:3\n'
                        "nginx: configuration file /etc/nginx/nginx.conf test failed")},
        "nginx_config", 'nginx -t fails: unknown directive "bogus" in /etc/nginx/sites-enabled/shop.conf:3'),
    "nginx config broken (stderr format)": (
        {"nginx_t": (1, '2026/11/22 00:34:59 [emerg] 9012#9012: unknown directive "bogus" in /etc/x.conf:53\n'
                        "nginx: configuration file /etc/nginx/nginx.conf test failed")},
        "nginx_config", 'nginx -t fails: unknown directive "bogus" in /etc/x.conf:53'),
    "nothing on 443": (
        {"listen": "LISTEN 0 511 0.0.0.0:80 0.0.0.0:*\n", "cert": (1, "Could not read certificate")},
        "listen_https", "nothing listens on TCP port 443"),
    "a failed unit": (
        {"failed": "cron.service loaded failed failed Regular background program processing daemon\n"},
        "failed_units", "failed systemd units: cron.service (systemctl status cron.service)"),
    "package removed": (
        {"packages": "".join(f"{p}\tii \n" for p in PKGS if p != "jq") + "jq\trc \n"},
        "packages", "packages not installed: jq"),
    "health body wrong": (
        {"health": "0 200\n\nstarting", "nginx_proxy": "0 200\n\nstarting"},
        "health", "answered 200 but the body lacks 'ok'"),
    "current not completed": (
        {"release_log": json.dumps({"id": RID, "action": "deploy", "result": "failed"})},
        "current_release", f"current -> {RID}, which is not a completed release in "
                           f"/opt/shop/.fabship/releases.jsonl (recorded: failed)"),
    "slot runs another release": (
        {"slot": "../releases/20250101T000000Z-0.9.0"},
        "active_slot", f"nginx sends traffic to port 3001, whose slot runs 20250101T000000Z-0.9.0, "
                       f"but current is {RID}"),
    "app check wrong status": (
        {"http__1": '0 200\n\n{"releases":[]}'},
        "http:GET /api/releases", "answered 200, expected 401"),
    "dirs mode": (
        {"dirs": GOOD["dirs"].replace("/etc/shop|root|shop|750", "/etc/shop|root|shop|755")},
        "app_dirs", "/etc/shop has mode 0755, expected 0750 (world bits set)"),
}


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_one_break_fails_exactly_one_check(spec, case):
    changes, check, message = BREAKS[case]
    got = failed(run(spec, **changes))
    assert list(got) == [check], got
    assert message in got[check]


def test_stopped_unit_skips_what_depends_on_it(spec):
    res = run(spec, **BREAKS["unit stopped"][0])
    for name in ("health", "nginx_proxy", "http:manifest", "http:GET /api/releases", "active_slot"):
        assert res[name].status == C.SKIP and res[name].message == "unit_active failed", name


def test_swap_on_overlay_in_a_container_is_skipped_with_the_reason(spec):
    res = run(spec, virt="systemd-nspawn", swaps="Filename Type Size Used Priority\n",
              swapreal="/swapfile\noverlayfs\n")
    assert res["swap_active"].status == C.SKIP
    assert "systemd-nspawn" in res["swap_active"].message and "overlayfs" in res["swap_active"].message
    assert res["swap_fstab_once"].status == C.PASS   # bootstrap writes the file and the line there too


def test_swapoff_in_a_container_that_can_swap_fails(spec):
    # the sandbox: /swapfile links into a plain directory, swap really works there
    res = run(spec, virt="systemd-nspawn", swaps="Filename Type Size Used Priority\n",
              swapreal="/var/lib/fabship-sandbox-swap/swapfile\next2/ext3\n")
    assert res["swap_active"].status == C.FAIL
    assert "is not active" in res["swap_active"].message


def test_linked_swap_path_matches_its_target_in_proc_swaps(spec):
    res = run(spec, swaps="Filename Type Size Used Priority\n/var/lib/x/swapfile file 1048572 0 -2\n",
              swapreal="/var/lib/x/swapfile\next2/ext3\n")
    assert res["swap_active"].status == C.PASS, res["swap_active"].message


def test_enough_swap_elsewhere_is_what_bootstrap_accepts(spec):
    res = run(spec, swaps="Filename Type Size Used Priority\n/dev/vda2 partition 2097148 0 -2\n",
              swapfile=(1, "stat: cannot statx"), fstab="UUID=x / ext4 defaults 0 1\n")
    assert res["swap_active"].status == C.PASS and "/dev/vda2" in res["swap_active"].message
    assert res["swap_fstab_once"].status == C.SKIP


def test_world_readable_env_mode_in_the_inventory_is_refused(tmp_path):
    inv = inv_from(tmp_path, env={"mode": "0644"})
    spec = CS.build_spec(inv, inv.resolve_hosts()[0])
    res = run(spec, env="/etc/shop/shop.env|root|shop|644|regular file")
    assert res["env_file_mode"].status == C.FAIL
    assert "env.mode 0644 in the inventory lets every user read" in res["env_file_mode"].message


def test_no_live_port_is_reported_once(spec):
    res = run(spec, port="", unit="Id=shop@.service\nLoadState=bad")
    assert "no live port" in res["unit_enabled"].message and "no live port" in res["unit_active"].message
    assert res["health"].status == C.SKIP
