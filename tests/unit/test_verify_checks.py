"""Verification checks: expectations from the inventory, check selection per
gate stage, the facts script framing, and each check's verdict and message
from recorded command output (no hosts)."""
import base64
import subprocess

import pytest
import yaml

from tasks.verify import checks as C

from tasks.verify import spec as CS

from tasks.verify import probes as CP
from tasks.core.errors import ConfigError
from tasks.config.inventory import load_inventory

BASE = {
    "hosts": {"static": {"web1": "10.0.0.5"}},
    "packages": ["jq"],
    "swap": {"size": "1G"},
    "app": {"name": "shop", "kind": "node", "port": 3000},
    "nginx": {"server_name": "{host}.example.test"},
    "tls": {"enabled": True, "email": "ops@example.test", "domains": ["{host}.example.test"]},
    "env": {"contract": {"required": ["ADMIN_PASSWORD"]}},
    "health": {"path": "/healthz", "body_contains": "ok"},
    "verify": {"cert_issuer": "Pebble", "cert_min_days": 10,
               "checks": [{"name": "manifest", "path": "/api/manifest",
                           "headers": {"expo-platform": "ios"}, "via": "https"},
                          {"path": "/api/releases", "expect_status": 401}]},
}


def inv_from(tmp_path, data=None, **changes):
    d = yaml.safe_load(yaml.safe_dump(data or BASE))
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    p = tmp_path / "inv.yaml"
    p.write_text(yaml.safe_dump(d))
    return load_inventory(str(p))


@pytest.fixture
def inv(tmp_path):
    return inv_from(tmp_path)


@pytest.fixture
def spec(inv):
    return CS.build_spec(inv, inv.resolve_hosts()[0])


# -- expectations -----------------------------------------------------------------

def test_spec_follows_the_layout_and_expands_host_placeholders(spec):
    assert (spec.app, spec.user, spec.group) == ("shop", "shop", "shop")
    assert spec.root == "/opt/shop" and spec.config_dir == "/etc/shop"
    assert spec.env_path == "/etc/shop/shop.env"
    assert (spec.env_owner, spec.env_group, spec.env_mode) == ("root", "shop", "0600")
    assert spec.blue_green and spec.ports == (3001, 3002)
    assert spec.domains == ["web1.example.test"] and spec.server_name == "web1.example.test"
    assert spec.swap_path == "/swapfile" and spec.swap_bytes == 1024**3
    assert [c.name for c in spec.http_checks] == ["manifest", "GET /api/releases"]
    assert spec.http_checks[0].headers == {"expo-platform": "ios"}


def test_duplicate_http_check_names_name_the_key(tmp_path):
    d = yaml.safe_load(yaml.safe_dump(BASE))
    d["verify"]["checks"] = [{"path": "/a"}, {"path": "/a"}]
    inv = inv_from(tmp_path, d)
    with pytest.raises(ConfigError) as e:
        CS.build_spec(inv, inv.resolve_hosts()[0])
    assert "verify.checks[1].name" in str(e.value) and "duplicate" in str(e.value)


def test_https_check_without_tls_is_a_config_error(tmp_path):
    inv = inv_from(tmp_path, tls={"enabled": False})
    with pytest.raises(ConfigError) as e:
        CS.build_spec(inv, inv.resolve_hosts()[0])
    assert "verify.checks[0].via" in str(e.value) and "tls.enabled" in str(e.value)


def test_gate_section_rejects_unknown_stage(tmp_path):
    d = yaml.safe_load(yaml.safe_dump(BASE))
    d["verify"]["gate"] = {"deploi": False}
    with pytest.raises(ConfigError) as e:
        inv_from(tmp_path, d)
    assert "verify.gate.deploi" in str(e.value) and "did you mean 'deploy'" in str(e.value)


def test_gate_defaults_to_every_stage(inv):
    assert inv.get("verify.gate") == {s: True for s in CS.STAGES}


# -- selection -----------------------------------------------------------------------

def names(checks):
    return [c.name for c in checks]


def test_every_check_applies_to_a_full_inventory(spec):
    got = names(C.checks_for(spec))
    assert got == ["packages", "swap_active", "swap_fstab_once", "app_user", "app_dirs", "env_file",
                   "env_file_owner", "env_file_mode", "unit_enabled", "unit_active", "failed_units",
                   "nginx_config", "nginx_running", "maintenance", "listen_http", "listen_https",
                   "cert_valid", "http_redirect", "health", "nginx_proxy", "current_release", "active_slot",
                   "http:manifest", "http:GET /api/releases"]


@pytest.mark.parametrize("stage,expected", [
    ("bootstrap", ["packages", "swap_active", "swap_fstab_once", "app_user", "app_dirs", "env_file",
                   "env_file_owner", "env_file_mode", "unit_enabled", "nginx_config", "nginx_running",
                   "listen_http", "listen_https", "cert_valid", "http_redirect"]),
    ("deploy", ["app_dirs", "env_file", "env_file_owner", "env_file_mode", "unit_active", "nginx_config",
                "nginx_running", "listen_http", "listen_https", "cert_valid", "http_redirect", "health",
                "nginx_proxy", "http:manifest", "http:GET /api/releases"]),
    ("rotate-env", ["env_file", "env_file_owner", "env_file_mode", "unit_active", "nginx_config",
                    "nginx_running", "listen_http", "listen_https", "health", "nginx_proxy", "http:manifest",
                    "http:GET /api/releases"]),
    ("rollback", ["env_file", "env_file_owner", "env_file_mode", "unit_active", "nginx_config", "nginx_running",
                  "listen_http", "listen_https", "health", "nginx_proxy", "http:manifest",
                  "http:GET /api/releases"]),
])
def test_stage_selection(spec, stage, expected):
    assert names(C.select(C.checks_for(spec), stage=stage)) == expected


def test_structural_checks_are_verify_only(spec):
    """The deploy/rollback/rotate-env gates run right after the traffic switch, before
    the new instance is enabled and `current` moves; an unrelated failed unit must not
    roll a deploy back. `fab verify` checks these."""
    for name in ("failed_units", "current_release", "active_slot"):
        assert not [c for c in C.checks_for(spec) if c.name == name][0].stages


def test_only_and_skip_accept_prefixes(spec):
    all_ = C.checks_for(spec)
    assert names(C.select(all_, only=["env_file*"])) == ["env_file", "env_file_owner", "env_file_mode"]
    assert "http:manifest" not in names(C.select(all_, skip=["http:*"]))
    assert names(C.select(all_, only=["swap*"], skip=["swap_active"])) == ["swap_fstab_once"]


def test_minimal_inventory_has_only_host_checks(tmp_path):
    inv = inv_from(tmp_path, {"hosts": {"static": ["10.0.0.9"]}})
    spec = CS.build_spec(inv, inv.resolve_hosts()[0])
    assert names(C.checks_for(spec)) == ["packages", "failed_units"]


def test_restart_strategy_uses_the_plain_unit(tmp_path):
    inv = inv_from(tmp_path, deploy={"source": "git", "repo": "x", "strategy": "restart"})
    spec = CS.build_spec(inv, inv.resolve_hosts()[0])
    assert not spec.blue_green and spec.unit_for(None) == "shop.service"
    assert "active_slot" not in names(C.checks_for(spec))


def test_docker_kind_checks_the_container_not_a_unit(tmp_path):
    inv = inv_from(tmp_path, app={"name": "svc", "kind": "docker", "port": 8080})
    got = names(C.checks_for(CS.build_spec(inv, inv.resolve_hosts()[0])))
    assert "container_running" in got and "unit_active" not in got


# -- the facts script ----------------------------------------------------------------------

def test_facts_script_is_one_read_only_script(spec):
    s = CP.facts_script(spec)
    body = s.split("probe now", 1)[1]  # after the helpers (whose only rm is of their own mktemp files)
    body = body.replace("trap 'rm -rf \"$fw\"' EXIT", "").replace('rm -rf "$fw"', "")  # and the private dir's
    for bad in ("rm ", "chmod ", "chown ", "systemctl start", "systemctl restart", "swapon", "swapoff", "mv "):
        assert bad not in body
    for probe in ("now", "virt", "os", "packages", "swaps", "fstab", "user", "dirs", "env", "port", "unit",
                  "failed", "nginx_t", "listen", "cert", "redirect", "health", "nginx_proxy", "current",
                  "release_log", "slot", "http.0", "http.1"):
        assert f"probe {probe} " in s or f"probe '{probe}' " in s, probe


def test_facts_script_runs_and_frames_every_probe(spec):
    """Run the real script with sh on this machine: every probe reports, even
    where its command is missing or fails, and nothing breaks the framing."""
    out = subprocess.run(["sh", "-c", CP.facts_script(spec)], capture_output=True, text=True, timeout=120).stdout
    facts = CP.parse_facts(out)
    assert {"now", "port", "fstab", "http.0", "http.1", "health"} <= set(facts)
    assert facts["now"].ok and facts["now"].out.strip().isdigit()
    assert CP.parse_http(facts["health"].out).curl_rc != 0  # nothing listens on the app port here


def test_parse_facts_round_trips_any_bytes():
    payload = "line1\n@@fabship-fact@@ fake 0\n\x00binary"
    text = f"{CP.MARK} one 3\n{base64.b64encode(payload.encode()).decode()}\n{CP.MARK} empty 0\n\n"
    f = CP.parse_facts(text)
    assert f["one"].rc == 3 and f["one"].out == payload
    assert f["empty"].out == "" and f["empty"].ok


def test_http_probe_commands_exact(spec):
    c0, c1 = spec.http_checks
    assert CP._http_snippet(spec, c0.via, c0.method, c0.path, "h.http.0", c0.body, 5) == (
        "http --max-time 5 -H \"@$fw/h.http.0\" --insecure --resolve web1.example.test:443:127.0.0.1 "
        "https://web1.example.test/api/manifest")
    assert CP._http_snippet(spec, "app", "POST", "/api/login", None, '{"password":"x"}', 3) == (
        "http --max-time 3 -X POST --data-binary '{\"password\":\"x\"}' \"http://127.0.0.1:$port\"/api/login")
    # via nginx with TLS on: port 80 only redirects, so through nginx's HTTPS server
    assert CP._http_snippet(spec, "nginx", "HEAD", "/", None, None, 5) == (
        "http --max-time 5 --head --insecure --resolve web1.example.test:443:127.0.0.1 https://web1.example.test/")
    spec.tls = False
    assert CP._http_snippet(spec, "nginx", "HEAD", "/", None, None, 5) == (
        "http --max-time 5 --head -H 'Host: web1.example.test' http://127.0.0.1/")


def test_expectations_are_bootstraps_own(spec, inv):
    """verify reads the inventory through bootstrap's functions: same dirs, same packages."""
    from tasks.cli import bootstrap
    from tasks.config import platforms

    assert spec.dirs() == [tuple(x) for x in bootstrap.layout_dirs(bootstrap.app_spec(inv))]
    deb = 'ID=debian\nVERSION_ID="12"\n'
    assert C.expected_packages(spec, deb) == [
        "curl", "openssl", "ca-certificates", "nginx", "nodejs", "npm", "certbot", "python3-certbot-nginx", "jq"]
    al = 'ID=amzn\nVERSION_ID="2023"\n'
    assert C.expected_packages(spec, al) == bootstrap.wanted_packages(
        spec.bootstrap, platforms.detect(al), spec.tls_spec)
