"""The app user must never be able to steer root (issue 11, part A), on h2.

The app `symguard` (apps/node-app, blue/green on 3411/3412 behind nginx) is
set up with `app.user: symsvc` alone (no app.group): bootstrap must make group
`symsvc` (not `symguard`), and deploy, rotate-env and rollback use it too.

Then the app user plants symlinks to a root-only canary file and directory
at the paths fabship touches in the dirs it can write (shared dirs, shared
files and their parents, the release metadata's temp name, from inside a
build). bootstrap, deploy, rollback and rotate-env run; the canary's bytes,
owner and mode never change, and a run that meets a link fails naming the
path. Everything is read on the host. State is reset by the module fixture,
so the tests do not depend on other modules (h2's other apps use other names
and ports).
"""
from __future__ import annotations

import json
import shlex

import pytest
import yaml
from fab_cli import OneHostFab
from test_deploy_support import make_repo, write_inventory

HOST = "h2"
APP = "symguard"
USER = "symsvc"
ROOT = f"/opt/{APP}"
CANARY_FILE = "/root/h1-canary.txt"
CANARY_DIR = "/root/h1-canary.d"
SECRET = "symguard-secret-0123456789abcdef"


def reset_lines() -> str:
    q = shlex.quote(APP)
    return "\n".join([
        "set +e",
        f"systemctl stop '{APP}@*.service' {q}.service 2>/dev/null",
        f"systemctl disable '{APP}@3411.service' '{APP}@3412.service' 2>/dev/null",
        f"rm -f '/etc/systemd/system/{APP}@.service' /etc/systemd/system/{q}.service",
        f"rm -f /etc/nginx/sites-enabled/{q}.conf /etc/nginx/sites-available/{q}.conf "
        f"/etc/nginx/fabship/{q}-upstream.conf",
        f"rm -rf /opt/{q} /etc/{q} {CANARY_FILE} {CANARY_DIR}",
        f"userdel -r {USER} >/dev/null 2>&1; groupdel {USER} 2>/dev/null; groupdel {q} 2>/dev/null",
        "systemctl daemon-reload",
        "if systemctl is-active -q nginx; then nginx -t >/dev/null 2>&1 && systemctl reload nginx; fi",
        "true",
    ])


@pytest.fixture(scope="module")
def sg(sandbox_fleet, tmp_path_factory):
    if HOST not in {h.name for h in sandbox_fleet.hosts}:
        pytest.skip(f"the sandbox fleet has no {HOST}")
    code, out, err = sandbox_fleet.run(HOST, reset_lines(), timeout=300)
    assert code == 0, err or out
    base = tmp_path_factory.mktemp("symguard")
    repo = make_repo(base)
    inv = write_inventory(base, repo, app=APP, port=3410, extra={
        "app": {"user": USER, "shared_dirs": ["uploads"], "shared_files": ["config/settings.json", "top.json"]},
        "deploy": {"ports": [3411, 3412]},
    })
    (base / f"{APP}.env").write_text(f"APP_SECRET={SECRET}\nLOG_LEVEL=info\n")
    h = OneHostFab(sandbox_fleet, HOST, base, inv)
    h.base, h.repo = base, repo
    h.fab("bootstrap", "--no-gate", timeout=900)
    yield h
    sandbox_fleet.run(HOST, reset_lines(), timeout=300)


def as_app(h, cmd: str) -> str:
    return h.must(f"runuser -u {USER} -- sh -c {shlex.quote(cmd)}")


def canary_state(h) -> str:
    return h.must(f"stat -c '%n %U:%G %a %s' {CANARY_FILE} {CANARY_DIR} && sha256sum {CANARY_FILE} && "
                  f"ls -la {CANARY_DIR}")


def current(h) -> str:
    return h.must(f"readlink {ROOT}/current || true").strip().rsplit("/", 1)[-1]


def log(h) -> list[dict]:
    return [json.loads(x) for x in h.must(f"cat {ROOT}/.fabship/releases.jsonl || true").splitlines() if x.strip()]


def output(r) -> str:
    return r.stdout + r.stderr


@pytest.mark.timeout(1500)   # seven fab runs on one host
def test_app_user_alone_names_the_group_everywhere(sg):
    """app.user set alone: one group (symsvc) through bootstrap, deploy, rotate-env and rollback."""
    h = sg
    assert h.must(f"id -gn {USER}").strip() == USER
    assert h.sh(f"getent group {APP}")[0] != 0, "bootstrap made a group named after the app"
    assert h.must(f"stat -c '%U:%G %a' {ROOT} {ROOT}/releases {ROOT}/shared {ROOT}/shared/uploads "
                  f"{ROOT}/.fabship /etc/{APP} /etc/{APP}/{APP}.env").split("\n")[:7] == [
        f"root:{USER} 755", f"{USER}:{USER} 755", f"{USER}:{USER} 755", f"{USER}:{USER} 755",
        f"root:{USER} 750", f"root:{USER} 750", f"root:{USER} 600"]
    h.fab("deploy", "--ref", "v1")
    h.fab("deploy", "--ref", "v2")
    v1, v2 = [e["id"] for e in log(h) if e["result"] == "ok"][-2:]
    rel = f"{ROOT}/releases/{v2}"
    assert current(h) == v2
    # everything in the release is the app user's (extracted and written as it), nothing root's
    assert h.must(f"find {rel} ! -user {USER} | head -3").strip() == ""
    assert h.must(f"stat -c '%U:%G' {rel} {rel}/.fabship-release.json").split() == [f"{USER}:{USER}"] * 2
    assert h.must(f"readlink {rel}/config/settings.json").strip() == f"{ROOT}/shared/config/settings.json"
    assert h.must(f"stat -c '%a' {ROOT}/shared").strip() == "755"   # a top-level shared file leaves it alone
    (h.base / f"{APP}.env").write_text(f"APP_SECRET={SECRET}-2\nLOG_LEVEL=debug\n")
    h.fab("rotate-env")
    assert h.must(f"stat -c '%U:%G %a' /etc/{APP}/{APP}.env").strip() == f"root:{USER} 600"
    h.fab("rollback")
    assert current(h) == v1
    assert h.must(f"systemctl show -p User,Group --value '{APP}@3411.service'").split() == [USER, USER]
    h.fab("verify", "--only", "app_user,app_dirs,env_file*")
    h.fab("deploy", "--ref", "v2")   # back on the newest for the next test


@pytest.mark.timeout(1500)
def test_planted_symlinks_never_steer_root(sg):
    h = sg
    if not any(e["result"] == "ok" for e in log(h)):
        h.fab("deploy", "--ref", "v1")
        h.fab("deploy", "--ref", "v2")
    h.must(f"umask 077; printf 'root only\\n' > {CANARY_FILE}; mkdir -p {CANARY_DIR}; "
           f"touch {CANARY_DIR}/keep; chmod 0600 {CANARY_FILE}; chmod 0700 {CANARY_DIR}")
    before = canary_state(h)
    serving = current(h)
    # the app user replaces its shared dirs and files with links to root's canary
    as_app(h, f"cd {ROOT}/shared && rm -rf uploads top.json config/settings.json && "
              f"ln -s {CANARY_DIR} uploads && ln -s {CANARY_FILE} top.json && "
              f"ln -s {CANARY_FILE} config/settings.json")
    try:
        r = h.fab("bootstrap", "--no-gate", expect=None)
        assert r.returncode != 0
        assert f"{ROOT}/shared/uploads is a symlink; refusing to follow it" in output(r), output(r)[-3000:]
        assert canary_state(h) == before

        r = h.fab("deploy", "--ref", "v5", expect=None)
        assert r.returncode != 0
        assert f"{ROOT}/shared/uploads is a symlink; refusing to follow it" in output(r), output(r)[-3000:]
        assert canary_state(h) == before and current(h) == serving
        as_app(h, f"cd {ROOT}/shared && rm uploads && mkdir uploads")
        r = h.fab("deploy", "--ref", "v5", expect=None)
        assert r.returncode != 0
        assert f"{ROOT}/shared/config/settings.json is a symlink" in output(r), output(r)[-3000:]
        assert canary_state(h) == before and current(h) == serving

        # rotate-env and rollback touch nothing the app user can write: they run, the canary stays
        (h.base / f"{APP}.env").write_text(f"APP_SECRET={SECRET}-3\nLOG_LEVEL=info\n")
        h.fab("rotate-env")
        assert canary_state(h) == before
        h.fab("rollback")
        assert canary_state(h) == before and current(h) != serving
    finally:
        as_app(h, f"cd {ROOT}/shared && rm -f top.json config/settings.json && rm -rf uploads && "
                  "mkdir -p uploads && : > top.json && : > config/settings.json")

    # a build (app user code) plants the metadata's temp name: root used to write it after the build
    plant = f"ln -s {CANARY_FILE} .fabship-release.json.fabship-tmp"
    inv2 = h.base / "inv-plant.yaml"
    data = yaml.safe_load(h.inv.read_text())
    data["deploy"]["build"] = data["deploy"]["build"] + [plant]
    inv2.write_text(yaml.safe_dump(data))
    failed_dirs = []
    for _ in range(2):   # a loop of failing deploys must not grow the disk
        r = h.fab("deploy", "--ref", "v5", expect=None, inv=inv2)
        assert r.returncode != 0
        assert ".fabship-release.json.fabship-tmp is a symlink; refusing to follow it" in output(r), \
            output(r)[-3000:]
        assert canary_state(h) == before
        failed_dirs.append([e["id"] for e in log(h) if e["result"] == "failed"][-1])
    existing = h.must(f"ls {ROOT}/releases").split()
    assert failed_dirs[1] in existing and failed_dirs[0] not in existing, existing
    h.fab("bootstrap", "--no-gate")   # the layout is sound again
    h.fab("deploy", "--ref", "v5")
    assert canary_state(h) == before
    assert h.must(f"stat -c '%U %a' {CANARY_FILE}").strip() == "root 600"
