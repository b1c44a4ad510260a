"""fab diagnose: the sections per app kind, masking, and a real run over SSH
(in-process server on this machine) where secrets appear in the logs."""
import subprocess

import pytest
import yaml

from tasks.cli import diagnose as D
from tasks.verify.probes import parse_facts
from tasks.core.commands import Secret
from tasks.config.inventory import load_inventory

from .test_verify_runner import sshd, write_inv  # noqa: F401  (fixture)


def inv_of(tmp_path, data):
    p = tmp_path / "d.yaml"
    p.write_text(yaml.safe_dump({"hosts": {"static": {"web1": "10.0.0.5"}}, **data}))
    return load_inventory(str(p))


def titles(secs):
    return [s.title for s in secs]


def test_sections_for_a_blue_green_node_app(tmp_path):
    inv = inv_of(tmp_path, {"app": {"name": "shop", "kind": "node", "port": 3000}, "nginx": {}})
    secs = D.sections(inv, inv.resolve_hosts()[0], 50)
    assert titles(secs) == [
        "systemctl status shop@3001.service shop@3002.service", "journalctl -u shop@* -n 50", "failed units",
        "nginx -t", "systemctl status nginx", "tail -n 50 /var/log/nginx/error.log", "df -h", "free -m",
        "uptime", "listening ports (ss -ltnp)", "current release", "deploy lock", "last deploys (audit log)"]
    snip = {s.title: s.snippet for s in secs}
    assert snip["journalctl -u shop@* -n 50"] == "journalctl --no-pager -o short-iso -n 50 -u 'shop@*'"
    assert snip["last deploys (audit log)"] == "tail -n 20 -- /opt/shop/.fabship/audit.log"


def test_sections_for_docker_and_for_a_bare_host(tmp_path):
    inv = inv_of(tmp_path, {"app": {"name": "svc", "kind": "docker", "port": 8080}})
    t = titles(D.sections(inv, inv.resolve_hosts()[0], 200))
    assert t[:2] == ["docker ps (app containers)", "docker logs --tail 200 (running app containers)"]
    assert "nginx -t" not in t
    bare = inv_of(tmp_path, {})
    assert titles(D.sections(bare, bare.resolve_hosts()[0], 200)) == [
        "failed units", "df -h", "free -m", "uptime", "listening ports (ss -ltnp)"]


@pytest.mark.parametrize("text,keys,expected", [
    ("ADMIN_PASSWORD=hunter2 PORT=3000", [], "ADMIN_PASSWORD=*** PORT=3000"),
    ("DATABASE_HOST=db1 WORKERS=4", ["DATABASE_HOST"], "DATABASE_HOST=*** WORKERS=4"),
    ('{"apiKey": "k1", "user": "bob"}', [], '{"apiKey": "***", "user": "bob"}'),
    ("Authorization: Bearer abc.def", [], "Authorization: ***"),
    ("connect postgres://app:s3cr3t@db:5432/x", [], "connect postgres://app:***@db:5432/x"),
    ("session_token='a b' next", [], "session_token=*** next"),
    ("Active: active (running) since Mon", [], "Active: active (running) since Mon"),
    ("Main PID: 4242 (node)", [], "Main PID: 4242 (node)"),
])
def test_mask_pairs(text, keys, expected):
    assert D.mask_pairs(text, keys) == expected


def test_report_masks_registered_secret_values_anywhere(tmp_path):
    inv = inv_of(tmp_path, {})
    secs = D.sections(inv, inv.resolve_hosts()[0], 10)
    import base64

    raw = "listening with key VALUEzzz-1234 ok"
    facts = parse_facts(f"@@fabship-fact@@ s0 0\n{base64.b64encode(raw.encode()).decode()}\n")
    out = D.render_report(inv.resolve_hosts()[0], secs, facts, [], [Secret("VALUEzzz-1234")])
    assert "VALUEzzz-1234" not in out and "listening with key *** ok" in out
    assert out.startswith("===== web1 (10.0.0.5) =====\n--- failed units\n")


def test_diagnose_script_frames_every_section_locally(tmp_path):
    inv = inv_of(tmp_path, {"app": {"name": "shop", "kind": "node", "port": 3000}, "nginx": {}})
    secs = D.sections(inv, inv.resolve_hosts()[0], 5)
    out = subprocess.run(["sh", "-c", D.diagnose_script(secs)], capture_output=True, text=True, timeout=60).stdout
    facts = parse_facts(out)
    assert sorted(facts) == sorted(f"s{i}" for i in range(len(secs)))
    assert "Mem:" in facts[f"s{titles(secs).index('free -m')}"].out


def test_fab_diagnose_masks_secrets_end_to_end(fab, tmp_path, sshd):  # noqa: F811
    root = tmp_path / "approot"
    (root / ".fabship").mkdir(parents=True)
    (root / ".fabship" / "audit.log").write_text(
        "2026-01-01T00:00:00Z ops deploy r1 ok ADMIN_PASSWORD=pw-in-a-log-line\n"
        "2026-01-01T00:01:00Z ops deploy r2 ok leaked raw value: rawsecret-987654\n")
    envf = tmp_path / "prod.env"
    envf.write_text("ADMIN_PASSWORD=pw-in-a-log-line\nSESSION_SECRET=rawsecret-987654\n")
    extra = yaml.safe_dump({"app": {"name": "shop", "kind": "node", "port": 3000, "root": str(root)},
                            "env": {"source": {"type": "file", "file": str(envf)},
                                    "contract": {"required": ["ADMIN_PASSWORD", "SESSION_SECRET"]}}})
    outdir = tmp_path / "reports"
    r = fab("diagnose", "-i", write_inv(tmp_path, sshd, extra), "--lines", "5", "--out", str(outdir))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "===== local (127.0.0.1) =====" in r.stdout
    assert "--- last deploys (audit log)" in r.stdout
    assert "deploy r2 ok leaked raw value: ***" in r.stdout
    for secret in ("pw-in-a-log-line", "rawsecret-987654"):
        assert secret not in r.stdout + r.stderr
        assert secret not in (outdir / "local.txt").read_text()
        for rec in (tmp_path / "runs").iterdir():
            assert secret not in rec.read_text()
    assert (outdir / "local.txt").stat().st_mode & 0o777 == 0o600


def test_bad_lines_is_one_line(fab, tmp_path, sshd):  # noqa: F811
    r = fab("diagnose", "-i", write_inv(tmp_path, sshd), "--lines", "0")
    assert r.returncode != 0 and r.stderr.strip() == \
        "fabship: command line: --lines: expected a positive number of lines, got 0"


@pytest.mark.parametrize("key,value,rule,masked", [
    ("APP_SECRET", "sandbox-app-secret-0001", None, True),
    ("HOST", "127.0.0.1", None, False),           # would blank every loopback address
    ("LOG_LEVEL", "info", None, False),
    ("SESSION_SIGNING", "abcdef0123", {"hex": True}, True),
    ("OPAQUE", "x" * 24, None, True),              # long values are masked whatever their name
    ("PASSWORD", "abc", None, False),              # too short to mask safely (would hit ordinary words)
])
def test_which_env_values_are_masked(key, value, rule, masked):
    assert D.secret_looking(key, Secret(value), rule) is masked
