"""The app user must never be able to steer root (issue 11, part A).

Every script here is the real host script, run with the local `sh` against a
temp tree in which "the app user" planted symlinks to a canary owned by
someone else (uid/gid 54321): the canary's bytes, owner and mode must not
change, and the script must refuse with a line naming the planted path. The
scripts run as root here (they do on hosts), with the app user = root, so the
old code's chown/chmod/write through the link shows on the canary.
"""
from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
from pathlib import Path

import pytest

from tasks.cli.bootstrap import layout_cmd
from tasks.config.app import app_spec
from tasks.verify.spec import build_spec
from tasks.cli.deploy import Plan, _after_failure, plan_deploy
from tasks.core.errors import ConfigError, StepFailed
from tasks.facts.script import FileSpec, parse_facts, put_files_lines
from tasks.release.releases import REFUSED, link_shared, refusal
from tasks.facts.releases import Entry, HostState
from tasks.config.app import Layout, app_identity
from tasks.release.envsnap import EnvTarget
from tasks.release.activation import upstream_switch_cmd
from tasks.release.sources import Source, make_release_dir_cmd, release_meta_cmd, user_file_cmd

from .localctx import LocalCtx, load_inv

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="planting a foreign-owned canary needs root")
OTHER = 54321
RID = "20250101T000000Z-v1"


def sh(cmd, stdin=b""):
    return subprocess.run(["sh", "-c", cmd.render() if hasattr(cmd, "render") else cmd], input=stdin,
                          capture_output=True)


def me() -> tuple[str, str]:
    return pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name


def lay_in(tmp_path) -> Layout:
    u, g = me()
    return Layout(app="web", kind="node", user=u, group=g, root=str(tmp_path / "opt"), config_dir="/x",
                  env_path="/x/e", strategy="restart", port=3000, ports=(), nginx=False)


@pytest.fixture
def canary(tmp_path):
    """A file and a dir that belong to somebody else (not the app user)."""
    d = tmp_path / "canary.d"
    d.mkdir()
    f = tmp_path / "canary.txt"
    f.write_bytes(b"do not touch\n")
    if os.geteuid() == 0:
        for p in (d, f):
            os.chown(p, OTHER, OTHER)
    os.chmod(d, 0o700)
    os.chmod(f, 0o600)

    def state():
        return {str(p): (p.read_bytes() if p.is_file() else sorted(os.listdir(p)), os.stat(p).st_uid,
                         os.stat(p).st_gid, stat.S_IMODE(os.stat(p).st_mode)) for p in (d, f)}

    before = state()
    yield {"dir": d, "file": f, "state": state, "before": before}
    assert state() == before, "the canary changed: root followed a link the app user planted"


# -- one rule for the app's user and group ---------------------------------------------------

def test_app_user_alone_gives_its_group_to_every_model(tmp_path):
    inv = load_inv(tmp_path, {"app": {"name": "shop", "user": "svc"}})
    assert app_identity(inv) == ("svc", "svc")
    a = app_spec(inv)
    lay = Layout.from_inventory(inv)
    t = EnvTarget.from_inventory(inv)
    spec = build_spec(inv, inv.resolve_hosts()[0])
    # bootstrap used to make group `shop` while deploy and rotate-env used `svc`
    assert (a.user, a.group, a.env_group) == ("svc", "svc", "svc")
    assert (lay.user, lay.group, t.group, spec.user, spec.group) == ("svc", "svc", "svc", "svc", "svc")
    inv = load_inv(tmp_path, {"app": {"name": "shop", "user": "svc", "group": "web"}})
    assert app_spec(inv).group == Layout.from_inventory(inv).group == EnvTarget.from_inventory(inv).group == "web"
    inv = load_inv(tmp_path, {"app": {"name": "shop"}})
    assert app_identity(inv) == ("shop", "shop") == (app_spec(inv).user, app_spec(inv).group)


# -- validation ------------------------------------------------------------------------------

@pytest.mark.parametrize("key,value,needle", [
    ("shared_dirs", ["../../etc"], "app.shared_dirs[0]: expected a relative path"),
    ("shared_dirs", ["logs/../../etc"], "climbs out with '..'"),
    ("shared_dirs", ["/etc"], "it is absolute"),
    ("shared_dirs", [""], "app.shared_dirs[0]"),
    ("shared_files", ["config//x.json"], "app.shared_files[0]"),
    ("shared_files", ["./x.json"], "not normalised"),
    ("shared_files", [".fabship-release.json"], "fabship's own"),
])
def test_shared_paths_must_be_normalised_relative_paths(tmp_path, key, value, needle):
    with pytest.raises(ConfigError) as ei:
        load_inv(tmp_path, {"app": {key: value}})
    assert needle in str(ei.value) and "app.yaml" in str(ei.value)


def test_a_shared_path_inside_another_is_refused(tmp_path):
    with pytest.raises(ConfigError) as ei:
        load_inv(tmp_path, {"app": {"shared_dirs": ["config"], "shared_files": ["config/settings.json"]}})
    assert "app.shared_files[0]: 'config/settings.json' is inside app.shared_dirs[0]" in str(ei.value)
    load_inv(tmp_path, {"app": {"shared_dirs": ["public/uploads", "logs"], "shared_files": ["config/x.json"]}})


def test_builders_refuse_paths_the_schema_refuses(tmp_path):
    with pytest.raises(ValueError):
        link_shared(lay_in(tmp_path), RID, ["../../etc"], [])
    with pytest.raises(ValueError):
        link_shared(lay_in(tmp_path), RID, [], ["a/../../b"])


@pytest.mark.parametrize("env,needle", [
    ({"mode": "0640"}, "env.mode: 0640 lets group demo read the env file"),
    ({"mode": "0660"}, "env.group_readable: true"),
    ({"mode": "0644", "group_readable": True}, "0644 lets every user on the host read"),
])
def test_a_wide_env_mode_is_refused_by_the_tasks_that_install_it(tmp_path, env, needle):
    inv = load_inv(tmp_path, {"env": env})
    build_spec(inv, inv.resolve_hosts()[0])   # verify still reads it (and fails env_file_mode on the host)
    for call in (lambda: EnvTarget.from_inventory(inv), lambda: plan_deploy(inv, inv.resolve_hosts("h1"))):
        with pytest.raises(ConfigError) as ei:
            call()
        assert needle in str(ei.value) and "app.yaml" in str(ei.value)


def test_group_readable_env_mode_when_the_inventory_says_so(tmp_path):
    inv = load_inv(tmp_path, {"env": {"mode": "0640", "group_readable": True}})
    assert EnvTarget.from_inventory(inv).mode == "0640"
    assert EnvTarget.from_inventory(load_inv(tmp_path, {"env": {"mode": "0400"}})).mode == "0400"


# -- planted links ---------------------------------------------------------------------------

@root_only
def test_link_shared_refuses_a_planted_shared_dir(tmp_path, canary):
    lay = lay_in(tmp_path)
    rel = Path(lay.release_dir(RID))
    rel.mkdir(parents=True)
    shared = Path(lay.shared)
    shared.mkdir(mode=0o755)
    (shared / "uploads").symlink_to(canary["dir"])
    r = sh(link_shared(lay, RID, ["uploads"], []))
    assert r.returncode == REFUSED, r.stderr
    assert refusal(r.stderr.decode()) == (f"fabship: {shared}/uploads is a symlink; refusing to follow it "
                                          "(the app user can write where it is)")
    assert not (rel / "uploads").exists()


@root_only
def test_link_shared_refuses_planted_files_and_release_parents(tmp_path, canary):
    lay = lay_in(tmp_path)
    rel = Path(lay.release_dir(RID))
    rel.mkdir(parents=True)
    shared = Path(lay.shared)
    shared.mkdir()
    (shared / "settings.json").symlink_to(canary["file"])
    r = sh(link_shared(lay, RID, [], ["settings.json"]))
    assert r.returncode == REFUSED and f"{shared}/settings.json is a symlink" in r.stderr.decode()
    (shared / "settings.json").unlink()
    (shared / "creds").symlink_to(canary["dir"])   # a dangling-looking parent: install would create through it
    r = sh(link_shared(lay, RID, [], ["creds/db.json"]))
    assert r.returncode == REFUSED and f"{shared}/creds is a symlink" in r.stderr.decode()
    # the release (built by the app user) ships public -> the canary: rm -rf public/uploads would go there
    (rel / "public").symlink_to(canary["dir"])
    r = sh(link_shared(lay, RID, ["public/uploads"], []))
    assert r.returncode == REFUSED and f"{rel}/public is a symlink" in r.stderr.decode()


def test_link_shared_runs_as_the_app_user(tmp_path):
    cmd = link_shared(lay_in(tmp_path), RID, ["uploads"], ["settings.json"]).render()
    assert cmd.startswith(f"runuser -u {me()[0]} -- sh -c ") and "chown" not in cmd and "install -d" not in cmd


def test_a_top_level_shared_file_never_remodes_shared(tmp_path):
    lay = lay_in(tmp_path)
    Path(lay.release_dir(RID)).mkdir(parents=True)
    shared = Path(lay.shared)
    shared.mkdir()
    os.chmod(shared, 0o755)
    r = sh(link_shared(lay, RID, ["logs"], ["settings.json", "config/app.json"]))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o755     # was re-moded 0750 by install -d "$(dirname ...)"
    assert stat.S_IMODE(os.stat(shared / "config").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(shared / "settings.json").st_mode) == 0o640
    assert os.readlink(Path(lay.release_dir(RID)) / "settings.json") == f"{shared}/settings.json"


@root_only
def test_release_dir_planted_under_a_predictable_id_is_refused(tmp_path, canary):
    lay = lay_in(tmp_path)
    Path(lay.releases).mkdir(parents=True)
    Path(lay.release_dir(RID)).symlink_to(canary["dir"])
    r = sh(make_release_dir_cmd(lay, RID))
    assert r.returncode == REFUSED and f"{lay.release_dir(RID)} is a symlink" in r.stderr.decode()
    os.unlink(lay.release_dir(RID))
    assert sh(make_release_dir_cmd(lay, RID)).returncode == 0 and os.path.isdir(lay.release_dir(RID))
    assert sh(make_release_dir_cmd(lay, RID)).returncode != 0   # never reuses what is there


@root_only
def test_release_metadata_never_written_through_a_planted_temp_name(tmp_path, canary):
    lay = lay_in(tmp_path)
    rel = Path(lay.release_dir(RID))
    rel.mkdir(parents=True)
    # the build (app user) planted the temp name root used to write through
    (rel / ".fabship-release.json.fabship-tmp").symlink_to(canary["file"])
    r = sh(release_meta_cmd(lay, RID, '{"id": "x"}'))
    assert r.returncode == REFUSED and ".fabship-release.json.fabship-tmp is a symlink" in r.stderr.decode()
    (rel / ".fabship-release.json.fabship-tmp").unlink()
    (rel / ".fabship-release.json").symlink_to(canary["file"])
    assert sh(release_meta_cmd(lay, RID, '{"id": "x"}')).returncode == REFUSED
    (rel / ".fabship-release.json").unlink()
    assert sh(release_meta_cmd(lay, RID, '{"id": "x"}')).returncode == 0
    assert (rel / ".fabship-release.json").read_text() == '{"id": "x"}'
    assert release_meta_cmd(lay, RID, "{}").render().startswith(f"runuser -u {me()[0]} -- sh -c ")


def test_user_file_from_an_upload(tmp_path):
    lay = lay_in(tmp_path)
    rel = Path(lay.release_dir(RID))
    rel.mkdir(parents=True)
    up = tmp_path / "upload"
    up.write_bytes(b"services: {}\n")
    os.chmod(up, 0o600)
    r = sh(user_file_cmd(lay, str(rel / "docker-compose.yml"), from_file=str(up)))
    assert r.returncode == 0, r.stderr
    assert (rel / "docker-compose.yml").read_bytes() == b"services: {}\n" and not up.exists()
    assert stat.S_IMODE(os.stat(rel / "docker-compose.yml").st_mode) == 0o644


@root_only
def test_bootstrap_layout_refuses_a_planted_shared_dir(tmp_path, canary):
    u, g = me()
    from tests.unit.test_bootstrap_steps import Inv

    spec = app_spec(Inv({"app": {"name": "web", "kind": "static", "user": u, "group": g,
                                 "root": str(tmp_path / "opt"), "config_dir": str(tmp_path / "etc"),
                                 "shared_dirs": ["uploads"]}, "nginx": {"enabled": False}}))
    Path(tmp_path / "opt" / "shared").mkdir(parents=True)
    (tmp_path / "opt" / "shared" / "uploads").symlink_to(canary["dir"])
    facts = parse_facts(f"@@ users\n/etc/passwd:{u}:x:0:0::/root:/bin/sh\n/etc/group:{g}:x:0:\n@@ end\n")
    lines, what = layout_cmd(spec, facts, {})
    r = sh("set -eu\n" + "\n".join(lines))
    assert r.returncode == REFUSED, r.stderr
    assert f"fabship: {tmp_path}/opt/shared/uploads is a symlink" in r.stderr.decode()
    uploads = [ln for ln in lines if "shared/uploads" in ln]
    assert any(ln.startswith(f"runuser -u {u} -- mkdir -p -- ") for ln in uploads)
    assert any(ln.startswith("chown -h -- ") for ln in uploads)
    assert not any(ln.startswith("mkdir -p -- ") for ln in uploads)   # root's mkdir/chown/chmod followed the link


# -- fsync before rename ---------------------------------------------------------------------

def _before(text: str, a: str, b: str) -> bool:
    return a in text and text.index(a) < text.rindex(b)


def test_every_installed_file_is_fsynced_before_its_rename(tmp_path):
    lay = lay_in(tmp_path)
    put = "\n".join(put_files_lines([FileSpec("/etc/x.conf", b"x")]))   # templates, nginx site and upstream
    assert _before(put, 'sync -- "$tmp"', 'mv -f -- "$tmp"')
    assert _before(release_meta_cmd(lay, RID, "{}").render(), 'sync -- "$t"', 'mv -f -- "$t" "$f"')
    up = upstream_switch_cmd(lay, "upstream web_backend { server 127.0.0.1:3002; }\n").render()
    assert _before(up, 'sync -- "$new"', 'mv -f -- "$new" "$f"')


# -- retention counts failed releases --------------------------------------------------------

def test_a_failed_deploy_prunes_older_failed_releases(tmp_path):
    inv = load_inv(tmp_path, {"deploy": {"keep_releases": 2}})
    lay = Layout.from_inventory(inv)
    good = [f"2025010{i}T000000Z-v{i}" for i in range(1, 4)]
    failed = [f"2025020{i}T000000Z-bad{i}" for i in range(1, 4)]
    rid = "20250301T000000Z-bad9"
    for r in good + failed + [rid]:
        os.makedirs(lay.release_dir(r))
    os.makedirs(lay.state)
    st = HostState(root_exists=True, current=good[0], releases=good + failed,
                   log=[Entry(id=r, result="ok") for r in good] + [Entry(id=r, result="failed") for r in failed])
    plan = Plan(lay=lay, src=Source("artifact", version="bad9"), rid=rid, batch=1, max_fail=0,
                rollback_fleet=False, lock_wait=0)
    ctx = LocalCtx(inv)
    _after_failure(ctx, plan, st, good[0], {}, StepFailed("build failed (exit 1)"))
    left = sorted(os.listdir(lay.releases))
    # the current (rolled back to v1), the newest good ones, and the failed one just made (for inspection)
    assert left == sorted([good[0], good[1], good[2], rid]), left
    assert st.releases == good
    log = (Path(lay.state) / "releases.jsonl").read_text()
    assert '"result": "failed"' in log and rid in log
