"""fab logs, fab exec and fab maintenance without hosts: option checks, the
remote commands as values, the -f reader dying with its channel (run with the
local sh), the text after `--` reaching `fab exec` and `fabship exec`, the
maintenance switch in the nginx site."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tasks.cli import app_exec as X
from tasks.cli import logs as L
from tasks.cli import maintenance as M
from tasks.config.app import Layout
from tasks.core.errors import ConfigError
from tasks.resources.nginx import render_site
from tests.unit.localctx import load_inv

REPO = Path(__file__).resolve().parents[2]


# -- fab logs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("given,journal,docker", [("10m", "-10min", "10m"), ("2h", "-2h", "2h"), ("1d", "-1d", "24h"),
                                                  ("30s", "-30s", "30s"),
                                                  ("2025-01-31 12:00", "2025-01-31 12:00", "2025-01-31T12:00"),
                                                  ("2025-01-31T12:00:05", "2025-01-31 12:00:05",
                                                   "2025-01-31T12:00:05")])
def test_since_forms(given, journal, docker):
    assert L.parse_since(given) == (journal, docker)


@pytest.mark.parametrize("bad", ["5x", "yesterday", "10m; rm -rf /", "-1h"])
def test_since_refused_in_one_line(bad):
    with pytest.raises(ConfigError) as e:
        L.parse_since(bad)
    assert "--since" in str(e.value)


def test_lines_and_grep_checked():
    assert L.parse_lines("0") == 0 and L.parse_lines(50) == 50
    for bad in ("-1", "x"):
        with pytest.raises(ConfigError, match="--lines"):
            L.parse_lines(bad)
    with pytest.raises(ConfigError, match="--grep"):
        L.check_grep("a\nb")


def test_journal_of_the_blue_green_instances(tmp_path):
    inv = load_inv(tmp_path)
    lay = Layout.from_inventory(inv)
    src = L.source_cmd(inv, lay, follow=False, since=L.parse_since("1h"), lines=20)
    assert src == "journalctl -u 'demo@*.service' --no-pager --utc -o short-iso -n 20 --since=-1h"
    cmd = L.logs_cmd(inv, lay, follow=False, since=L.parse_since("1h"), lines=20, grep="ERROR|WARN")
    script = cmd.parts[2]   # sh -c SCRIPT
    assert src in script and "grep -E --line-buffered -e 'ERROR|WARN'" in script and "setsid" not in script
    assert f"[ -f {lay.env_path} ]" in script   # the mask reads the env file on the host


def test_docker_and_compose_sources(tmp_path):
    inv = load_inv(tmp_path, {"app": {"kind": "docker", "start": None}, "deploy": {"source": "image"}})
    cmd = L.logs_cmd(inv, Layout.from_inventory(inv), follow=True, since=None, lines=5, grep=None).render()
    assert "label=fabship.app=demo" in cmd and "docker logs --timestamps --tail 5 --follow" in cmd
    assert "setsid" in cmd
    inv = load_inv(tmp_path, {"app": {"kind": "compose", "start": None}, "deploy": {"source": "compose"},
                              "docker": {"compose_project": "shop"}})
    cmd = L.logs_cmd(inv, Layout.from_inventory(inv), follow=False, since=("-1h", "1h"), lines=5, grep=None).render()
    assert "-p shop -f docker-compose.yml --env-file compose.env logs --no-color --timestamps --tail 5 --since 1h" in cmd


def test_follow_reader_dies_with_its_channel(tmp_path):
    """The reader (and what it started) is gone once the channel's stdin closes:
    Ctrl-C on the control machine leaves nothing tailing on the host."""
    marker = tmp_path / "ticks"
    body = f"while :; do echo tick >> {marker}; echo tick; sleep 0.1; done"
    cmd = L.follow_wrapper(body).render()
    p = subprocess.Popen(["sh", "-c", cmd], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"tick\n"
    finally:
        p.stdin.close()          # what closing the SSH channel does to the remote side
    p.wait(10)
    time.sleep(0.4)
    n = marker.read_text().count("tick")
    time.sleep(0.5)
    assert marker.read_text().count("tick") == n, "the reader kept running after its channel closed"


def test_merge_by_timestamp():
    out = list(L.merged({"h1": ["2025-01-01T10:00:01+0000 a", "2025-01-01T10:00:03+0000 c"],
                         "h2": ["2025-01-01T10:00:02.5Z b"]}))
    assert [(host, ln.split()[-1]) for host, ln in out] == [("h1", "a"), ("h2", "b"), ("h1", "c")]


# -- fab exec ------------------------------------------------------------------------------------

def test_remainder_words():
    assert X.remainder_from("echo a b", ["fab", "exec", "--", "echo", "a b"]) == "echo 'a b'"
    assert X.remainder_from("echo $X | wc -c", ["fab", "exec", "--", "echo $X | wc -c"]) == "echo $X | wc -c"
    assert X.remainder_from("x", ["fab"]) == "x"


def test_exec_env_is_read_by_systemd_never_on_the_line(tmp_path):
    env = tmp_path / "app.env"
    env.write_text("DB_PASSWORD=pw-value-1234\n")
    inv = load_inv(tmp_path, {"env": {"source": {"type": "file", "file": str(env)}}})
    lay = Layout.from_inventory(inv)
    cmd = X.exec_cmd(inv, lay, "bin/rails db:migrate:status").render()
    assert f"--property=EnvironmentFile={lay.env_path}" in cmd and "--uid=demo" in cmd and "--pipe" in cmd
    assert f"cd -- {lay.current}" in cmd and "bin/rails db:migrate:status" in cmd
    assert "pw-value-1234" not in cmd
    tty = X.exec_cmd(inv, lay, "bash", tty=True).render()
    assert "--pty" in tty and "awk" not in tty


def test_exec_in_the_running_container(tmp_path):
    inv = load_inv(tmp_path, {"app": {"kind": "docker", "start": None}, "deploy": {"source": "image"}})
    cmd = X.exec_cmd(inv, Layout.from_inventory(inv), "printenv | wc -l").render()
    assert "docker exec -i \"$c\" sh -c" in cmd and "systemd-run" not in cmd


def _inventory(tmp_path) -> Path:
    p = tmp_path / "inv.yaml"
    p.write_text(yaml.safe_dump({
        "hosts": {"static": {"a": "10.255.255.1", "b": "10.255.255.2"}},
        "app": {"name": "demo", "kind": "node", "port": 3000}, "deploy": {"source": "git", "repo": "x"}}))
    return p


def test_fab_exec_gets_the_text_after_the_double_dash(fab, tmp_path):
    """fabric would run a remainder itself on -H hosts (and fail without): the task gets it."""
    inv = _inventory(tmp_path)
    r = fab("exec", "-i", str(inv), "--tty", "--", "echo", "hi", subprocess=True)
    assert r.returncode == 2, r.stderr
    assert "--tty: an interactive terminal needs exactly one host; 2 selected" in r.stderr
    assert "Traceback" not in r.stderr and "not given any hosts" not in r.stderr
    r = fab("exec", "-i", str(inv), subprocess=True)
    assert r.returncode == 2 and "nothing to run: put the command after --" in r.stderr


def test_fabship_exec_gets_it_too(tmp_path):
    inv = _inventory(tmp_path)
    r = subprocess.run([sys.executable, "-c", "from tasks.cli.program import main; main()", "exec", "-i", str(inv),
                        "--tty", "--", "true"], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "FABSHIP_RUNS_DIR": str(tmp_path / "runs")})
    assert r.returncode == 2, r.stderr
    assert "needs exactly one host" in r.stderr and "Traceback" not in r.stderr


# -- fab maintenance ------------------------------------------------------------------------------

def test_site_checks_the_flag_outside_health_and_acme():
    text = render_site(app="api", server_names=["api.example"], health_path="/healthz?full=1",
                       maintenance={"allow_paths": ["/api/status"], "retry_after": 120})
    root = text[text.index("    location / {"):]
    assert "if (-f /etc/nginx/fabship/api.maintenance) { return 503; }" in root
    health = text[text.index("location = /healthz {"):text.index("location ^~ /api/status {")]
    assert "proxy_pass http://api_backend;" in health and "maintenance" not in health
    assert "add_header Retry-After 120 always;" in text and "try_files /api-maintenance.html =503;" in text
    acme = text[text.index("location ^~ /.well-known/acme-challenge/"):text.index("error_page 503")]
    assert "return 503" not in acme


def test_an_unsafe_health_path_is_not_a_location():
    text = render_site(app="api", server_names=[], health_path="/h;evil")
    assert "evil" not in text and "location = " not in text


def test_allow_paths_checked_by_the_schema(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_inv(tmp_path, {"nginx": {"maintenance": {"allow_paths": ["/a; return 200"]}}})
    assert "nginx.maintenance.allow_paths[0]" in str(e.value)


def test_maintenance_files_and_page(tmp_path):
    inv = load_inv(tmp_path, {"nginx": {"maintenance": {"retry_after": 600}}})
    lay = Layout.from_inventory(inv)
    page = M.page_bytes(inv)
    assert b"demo is down for scheduled maintenance" in page and b"10 minutes" in page
    on = M.files_for(lay, "on", page)
    assert [(f.path, f.kind) for f in on] == [("/etc/nginx/fabship/demo-maintenance.html", "file"),
                                              ("/etc/nginx/fabship/demo.maintenance", "file")]
    assert [(f.path, f.kind) for f in M.files_for(lay, "off", b"")] == [("/etc/nginx/fabship/demo.maintenance", "absent")]


def test_custom_page_relative_to_the_inventory(tmp_path):
    (tmp_path / "down.html").write_text("<h1>later</h1>")
    inv = load_inv(tmp_path, {"nginx": {"maintenance": {"page": "down.html"}}})
    src = Path(inv.file_of("nginx.maintenance.page")).parent
    if src != tmp_path:   # load_inv writes its yaml elsewhere: put the page beside it
        (src / "down.html").write_text("<h1>later</h1>")
    assert M.page_bytes(inv) == b"<h1>later</h1>"
    inv = load_inv(tmp_path, {"nginx": {"maintenance": {"page": "missing.html"}}})
    with pytest.raises(ConfigError, match="nginx.maintenance.page"):
        M.page_bytes(inv)


def test_verify_reports_maintenance_as_such():
    from types import SimpleNamespace

    from tasks.verify import checks as C

    on = SimpleNamespace(facts={"maintenance": SimpleNamespace(out="1700000000\n")})
    with pytest.raises(C.CheckFailed) as e:
        C.check_maintenance(on)
    assert "maintenance mode is on since 2023-11-14 22:13:20Z" in str(e.value) and "fab maintenance off" in str(e.value)
    assert C.check_maintenance(SimpleNamespace(facts={"maintenance": SimpleNamespace(out="off\n")})).startswith("off")
    assert [c for c in C.static_checks() if c.name == "maintenance"][0].stages == ()   # never a gate


def test_static_logs_are_nginx_files(tmp_path):
    inv = load_inv(tmp_path, {"app": {"kind": "static", "start": None}})
    lay = Layout.from_inventory(inv)
    assert L.source_cmd(inv, lay, follow=True, since=None, lines=7) == \
        "tail -n 7 -F /var/log/nginx/access.log /var/log/nginx/error.log"
    with pytest.raises(ConfigError, match="--since"):
        L.source_cmd(inv, lay, follow=False, since=("-1h", "1h"), lines=7)
