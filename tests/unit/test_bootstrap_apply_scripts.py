"""The remote scripts of nginx_apply and apply_units, run locally with sh in
a temp dir, with stand-ins for `nginx` and `systemctl`/`systemd-analyze` on
PATH (the real ones run in tests/integration/test_bootstrap.py). What is
asserted is the state of the files afterwards: restored byte for byte, or
replaced."""
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tasks.facts.script import FileSpec, tar_payload
from tasks.resources.nginx import NGINX_TEST_FAILED, nginx_apply_cmd
from tasks.resources.units import UnitFile, units_cmd

ME = f"{os.getuid()}"


def user_group():
    import grp
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name


@pytest.fixture
def sandbox(tmp_path):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "calls.log"
    conf = tmp_path / "nginx"
    conf.mkdir()
    (bin_ / "nginx").write_text(f"""#!/bin/sh
echo "nginx $*" >> {log}
if grep -rqs BROKEN {conf}; then
  echo 'nginx: [emerg] unknown directive "BROKEN" in {conf}/site.conf:1' >&2
  echo 'nginx: configuration file /etc/nginx/nginx.conf test failed' >&2
  exit 1
fi
echo 'nginx: configuration file /etc/nginx/nginx.conf test is successful' >&2
""")
    (bin_ / "systemctl").write_text(f"""#!/bin/sh
echo "systemctl $*" >> {log}
case "$*" in *is-enabled*) exit ${{ENABLED:-0}};; *is-active*) exit 0;; esac
exit 0
""")
    (bin_ / "systemd-analyze").write_text(f"""#!/bin/sh
echo "systemd-analyze $*" >> {log}
# like systemd: an unknown key is only a warning (exit 0); a missing binary is an error
if grep -qs BadKey "$2"; then echo "$2:3: Unknown key 'BadKey' in section [Service], ignoring." >&2; fi
if grep -qs /nonexistent "$2"; then echo "x: Command /nonexistent is not executable" >&2; exit 1; fi
""")
    for f in bin_.iterdir():
        f.chmod(0o755)
    return tmp_path, conf, log


def run(tmp_path, cmd, stdin: bytes, **env):
    e = dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", **env)
    return subprocess.run(cmd.render(), shell=True, input=stdin, capture_output=True, env=e)


def spec_files(conf: Path, site: bytes):
    u, g = user_group()
    return [FileSpec(str(conf / "site.conf"), site, u, g, "0644"),
            FileSpec(str(conf / "enabled.conf"), link=str(conf / "site.conf")),
            FileSpec(str(conf / "default"), absent=True)]


def test_nginx_apply_writes_tests_and_reloads(sandbox):
    tmp, conf, log = sandbox
    (conf / "default").write_text("default site\n")
    files = spec_files(conf, b"server { listen 80; }\n")
    r = run(tmp, nginx_apply_cmd(files, backup_parent=str(conf)), tar_payload(files))
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode().splitlines()
    assert out == [f"wrote {conf}/site.conf", f"linked {conf}/enabled.conf", f"removed {conf}/default", "reloaded"]
    assert (conf / "site.conf").read_bytes() == b"server { listen 80; }\n"
    assert os.readlink(conf / "enabled.conf") == str(conf / "site.conf") and not (conf / "default").exists()
    assert "nginx -t" in log.read_text() and "systemctl reload nginx" in log.read_text()
    assert sorted(p.name for p in conf.iterdir()) == ["enabled.conf", "site.conf"]   # no backup or temp left
    # unchanged: nothing written, no nginx -t, no reload
    log.write_text("")
    r = run(tmp, nginx_apply_cmd(files, backup_parent=str(conf)), tar_payload(files))
    assert r.returncode == 0 and r.stdout == b""
    assert "nginx -t" not in log.read_text() and "reload" not in log.read_text()


def test_nginx_apply_restores_every_byte_when_nginx_t_fails(sandbox):
    tmp, conf, log = sandbox
    old_site = b"# the old site\nserver { listen 80; }\n"
    (conf / "site.conf").write_bytes(old_site)
    (conf / "site.conf").chmod(0o640)
    (conf / "default").write_text("default site\n")
    before = {p.name: (p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) for p in conf.iterdir()}
    files = spec_files(conf, b"BROKEN;\n")
    r = run(tmp, nginx_apply_cmd(files, backup_parent=str(conf)), tar_payload(files))
    assert r.returncode == NGINX_TEST_FAILED
    assert b'unknown directive "BROKEN"' in r.stderr
    after = {p.name: (p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) for p in conf.iterdir()}
    assert after == before   # same files, bytes and modes; the new link is gone again
    assert "reload" not in log.read_text()


def unit(tmp: Path, text: str) -> UnitFile:
    return UnitFile("api@.service", text, verify_as="api@3001.service", directory=str(tmp / "units"))


def test_units_verify_before_install_and_reload_only_on_change(sandbox):
    tmp, _, log = sandbox
    (tmp / "units").mkdir()
    u = unit(tmp, "[Service]\nExecStart=/bin/true\n")
    cmd = units_cmd([u], ["api@3001.service"])
    r = run(tmp, cmd, tar_payload([FileSpec(u.path, u.content.encode())]), ENABLED="1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == ["installed api@.service", "enabled api@3001.service"]
    calls = log.read_text()
    assert "systemd-analyze verify" in calls and calls.index("systemd-analyze") < calls.index("daemon-reload")
    assert "/api@3001.service" in calls   # a template is verified as an instance
    assert (tmp / "units" / "api@.service").read_text() == u.content
    # again: same bytes, enabled -> nothing, no daemon-reload
    log.write_text("")
    r = run(tmp, cmd, tar_payload([FileSpec(u.path, u.content.encode())]), ENABLED="0")
    assert r.returncode == 0 and r.stdout == b""
    assert "daemon-reload" not in log.read_text() and "systemd-analyze" not in log.read_text()


def test_units_refused_by_verify_are_not_installed(sandbox):
    tmp, _, log = sandbox
    (tmp / "units").mkdir()
    (tmp / "units" / "api@.service").write_text("[Service]\nExecStart=/bin/old\n")
    u = unit(tmp, "[Service]\nBadKey=1\nExecStart=/bin/true\n")
    r = run(tmp, units_cmd([u], []), tar_payload([FileSpec(u.path, u.content.encode())]))
    assert r.returncode == 5 and b"Unknown key 'BadKey' in section [Service], ignoring." in r.stderr
    assert (tmp / "units" / "api@.service").read_text() == "[Service]\nExecStart=/bin/old\n"
    assert "daemon-reload" not in log.read_text()
    u = unit(tmp, "[Service]\nExecStart=/nonexistent\n")
    r = run(tmp, units_cmd([u], []), tar_payload([FileSpec(u.path, u.content.encode())]))
    assert r.returncode == 5 and b"not executable" in r.stderr
    assert (tmp / "units" / "api@.service").read_text() == "[Service]\nExecStart=/bin/old\n"
