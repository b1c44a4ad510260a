"""tasks/cli/rotate_env.py without hosts: planning (validation before any
connection), key diffs, and the host scripts run locally with sh in a temp
dir (the same scripts that run on hosts)."""
import hashlib
import os
import stat
import subprocess

import pytest
import yaml

from tasks.core.commands import Secret
from tasks.config.env_contract import EnvContractError
from tasks.resources.envfile import install_cmd
from tasks.core.dotenv import sha256_hex
from tasks.core.errors import StepFailed
from tasks.config.app import Layout
from tasks.cli.rotate_env import diff_text, facts_cmd, parse_facts, plan, restore_previous_cmd
from tasks.release.envsnap import EnvTarget, release_env_restore_cmd, snapshot_cmd, snapshot_delete_cmd

MARK = "Pq4canaryRotate"
RID = "20250101T000000Z-v1"


def inv_file(tmp_path, env: dict, name="app"):
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump({
        "hosts": {"static": {"h1": "10.255.255.1"}},
        "app": {"name": "demo", "kind": "node", "root": str(tmp_path / "opt"), "port": 3000},
        "env": env,
    }))
    return p


def load(p):
    from tasks.config.inventory import load_inventory

    return load_inventory(str(p))


def target(tmp_path, keep=2):
    return EnvTarget(app="demo", kind="node", path=str(tmp_path / "etc" / "demo.env"), owner="root", group="root",
                     mode="0600", keep=keep, state=str(tmp_path / "opt" / ".fabship"),
                     current=str(tmp_path / "opt" / "current"))


def sh(cmd, stdin=b""):
    return subprocess.run(cmd.parts if hasattr(cmd, "parts") else cmd, input=stdin, capture_output=True)


def run(cmd, stdin=b""):
    r = subprocess.run(["sh", "-c", cmd.render()], input=stdin, capture_output=True)
    return r


# -- planning ---------------------------------------------------------------------------

def test_plan_good_file(tmp_path):
    (tmp_path / "new.env").write_text(f"APP_SECRET={MARK}0123456789\nPORT=3000\n")
    p = plan(load(inv_file(tmp_path, {"contract": {"required": ["APP_SECRET"], "optional": ["PORT"],
                                                    "rules": {"APP_SECRET": {"min_length": 16}}}})),
             env_file=str(tmp_path / "new.env"))
    assert p.target.path == "/etc/demo/demo.env" and p.target.group == "demo" and p.target.mode == "0600"
    assert p.content.decode().endswith(f"APP_SECRET={MARK}0123456789\nPORT=3000\n")
    assert p.sha == sha256_hex(p.content)
    assert set(p.hashes) == {"APP_SECRET", "PORT"}
    assert MARK not in repr(p) and MARK not in str(p.values)


def test_plan_warns_about_a_readable_local_file(tmp_path):
    f = tmp_path / "open.env"
    f.write_text("A=1\n")
    f.chmod(0o644)
    p = plan(load(inv_file(tmp_path, {})), env_file=str(f))
    assert p.warnings == [f"{f} is readable by other users (mode 0644); chmod 600 it"]
    f.chmod(0o600)
    assert plan(load(inv_file(tmp_path, {})), env_file=str(f)).warnings == []


def test_plan_refuses_missing_key_and_short_secret(tmp_path):
    (tmp_path / "bad.env").write_text(f"APP_SECRET={MARK}\n")
    inv = load(inv_file(tmp_path, {"contract": {"required": ["APP_SECRET", "DATABASE_URL"],
                                                "rules": {"APP_SECRET": {"min_length": 32}}}}))
    with pytest.raises(EnvContractError) as e:
        plan(inv, env_file=str(tmp_path / "bad.env"))
    msg = str(e.value)
    assert "required key missing: DATABASE_URL" in msg and "APP_SECRET is shorter than min_length 32" in msg
    assert MARK not in msg


def test_plan_differ_from(tmp_path):
    (tmp_path / "prod.env").write_text(f"APP_SECRET={MARK}\n")
    inv_file(tmp_path, {"source": {"type": "file", "file": "prod.env"}}, name="prod")
    inv = load(inv_file(tmp_path, {"source": {"type": "file", "file": "prod.env"},
                                   "contract": {"differ_from": ["prod"], "differ_keys": ["APP_SECRET"]}},
                        name="dev"))
    with pytest.raises(EnvContractError) as e:
        plan(inv)
    assert "APP_SECRET: same value as in prod" in str(e.value) and MARK not in str(e.value)


def test_plan_needs_app(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text(yaml.safe_dump({"hosts": {"static": ["10.0.0.1"]}}))
    with pytest.raises(Exception) as e:
        plan(load(p), env_file="/nonexistent")
    assert "app.name: required" in str(e.value)


@pytest.mark.parametrize("old,new,show,text", [
    ({"A": "1", "B": "2", "C": "3"}, {"A": "1", "B": "9", "D": "4"}, False, "added D; removed C; changed B"),
    ({"A": "1"}, {"A": "1"}, False, "no key changes"),
    ({"B": "aaaaaaaa11"}, {"B": "bbbbbbbb22"}, True, "changed B (aaaaaaaa -> bbbbbbbb)"),
])
def test_diff_text(old, new, show, text):
    assert diff_text(old, new, show) == text


# -- host scripts, run locally ------------------------------------------------------------

def test_facts_on_missing_and_present_file(tmp_path):
    t = target(tmp_path)
    f = parse_facts(run(facts_cmd(t)).stdout.decode())
    assert not f.exists and f.hashes == {} and f.current is None
    os.makedirs(os.path.dirname(t.path))
    with open(t.path, "w") as fh:
        fh.write(f"A={MARK}\nB=2\n")
    os.chmod(t.path, 0o600)
    os.makedirs(tmp_path / "opt" / "releases" / RID)
    os.symlink(f"releases/{RID}", t.current)
    r = run(facts_cmd(t))
    assert MARK.encode() not in r.stdout + r.stderr
    f = parse_facts(r.stdout.decode())
    assert f.exists and f.sha == hashlib.sha256(f"A={MARK}\nB=2\n".encode()).hexdigest()
    assert (f.owner, f.group, f.mode) == ("root", "root", "600") and f.perms_ok(t)
    assert set(f.hashes) == {"A", "B"} and f.current == RID


def _install(t, text):
    data = text.encode()
    r = run(install_cmd(t.path, t.owner, t.group, t.mode, sha256_hex(data), t.keep), data)
    assert r.returncode == 0, r.stderr


def test_restore_previous_puts_old_back(tmp_path):
    t = target(tmp_path)
    os.makedirs(os.path.dirname(t.path))
    _install(t, "A=old\n")
    old_sha = sha256_hex(b"A=old\n")
    _install(t, "A=new\n")
    r = run(restore_previous_cmd(t, old_sha))
    assert r.returncode == 0 and r.stdout.strip() == b"restored", r.stderr
    assert open(t.path).read() == "A=old\n"
    assert stat.S_IMODE(os.stat(t.path).st_mode) == 0o600
    assert not [n for n in os.listdir(os.path.dirname(t.path)) if n.startswith(".demo.env.")]  # no temp left


def test_restore_previous_refuses_wrong_version(tmp_path):
    t = target(tmp_path)
    os.makedirs(os.path.dirname(t.path))
    _install(t, "A=old\n")
    _install(t, "A=new\n")
    r = run(restore_previous_cmd(t, "0" * 64))
    assert r.returncode == 4 and b"not the version that was replaced" in r.stderr
    assert open(t.path).read() == "A=new\n"


def test_restore_previous_without_old_file_removes(tmp_path):
    t = target(tmp_path)
    assert restore_previous_cmd(t, None).render() == f"rm -f -- {t.path} && echo removed"


def test_snapshot_and_release_restore(tmp_path):
    t = target(tmp_path, keep=3)
    os.makedirs(os.path.dirname(t.path))
    _install(t, "A=one\n")
    r = run(snapshot_cmd(t, RID))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [b"snapshot", sha256_hex(b"A=one\n").encode()]
    snap = t.snapshot(RID)
    assert stat.S_IMODE(os.stat(snap).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(t.snapshots).st_mode) == 0o700
    _install(t, "A=two\n")
    r = run(release_env_restore_cmd(t, RID))
    assert r.returncode == 0, r.stderr
    two, one = sha256_hex(b"A=two\n"), sha256_hex(b"A=one\n")
    assert r.stdout.decode().strip() == f"changed old={two} new={one}"
    assert open(t.path).read() == "A=one\n" and open(t.path + ".prev").read() == "A=two\n"
    assert stat.S_IMODE(os.stat(t.path).st_mode) == 0o600
    assert run(release_env_restore_cmd(t, RID)).stdout.strip() == b"unchanged"
    assert run(release_env_restore_cmd(t, "20250101T000000Z-other")).stdout.strip() == b"missing"
    assert run(snapshot_delete_cmd(t, [RID])).returncode == 0 and not os.path.exists(snap)


def test_release_ids_are_checked():
    t = EnvTarget("a", "node", "/etc/a/a.env", "root", "a", "0600", 1, "/opt/a/.fabship", "/opt/a/current")
    for bad in ("../../etc", "x"):
        with pytest.raises(ValueError):
            snapshot_cmd(t, bad)
        with pytest.raises(ValueError):
            release_env_restore_cmd(t, bad)
        with pytest.raises(ValueError):
            snapshot_delete_cmd(t, [bad])


def test_commands_carry_no_values(tmp_path):
    """Scripts are built from paths and hashes only; Secrets are refused on a command line."""
    t = target(tmp_path)
    for c in (facts_cmd(t), restore_previous_cmd(t, "a" * 64), snapshot_cmd(t, RID), release_env_restore_cmd(t, RID)):
        assert MARK not in c.render()
    from tasks.core.commands import Cmd
    with pytest.raises(ValueError):
        Cmd("echo", Secret(MARK))


def test_cli_refuses_bad_env_before_connecting(tmp_path, fab):
    """Unreachable host (10.255.255.1): the run must fail on validation, not on SSH."""
    (tmp_path / "bad.env").write_text(f"APP_SECRET={MARK}\n")
    inv = inv_file(tmp_path, {"contract": {"required": ["APP_SECRET", "DB_URL"],
                                           "rules": {"APP_SECRET": {"min_length": 32}}}})
    r = fab("rotate-env", "-i", str(inv), "--env-file", str(tmp_path / "bad.env"), "-vv", timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"fabship: {tmp_path / 'bad.env'}: violates env.contract")
    assert "DB_URL" in lines[0] and "min_length 32" in lines[0]
    assert MARK not in r.stdout + r.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_cli_help_explains_options(fab):
    r = fab("--help", "rotate-env")
    assert r.returncode == 0
    for opt in ("--env-file", "--show-hashes", "--dry-run", "--lock-wait", "--limit", "--inventory"):
        assert opt in r.stdout


# -- installed but not applied (issue 11): a run killed between install and restart -----------

def _pending_setup(tmp_path, snapshot=True):
    from .localctx import load_inv

    inv = load_inv(tmp_path, {"env": {"path": str(tmp_path / "etc" / "demo.env"), "owner": "root",
                                      "group": "root", "keep_previous": 3}})
    t = EnvTarget.from_inventory(inv)
    os.makedirs(tmp_path / "opt" / "releases" / RID)
    os.symlink(f"releases/{RID}", t.current)
    os.makedirs(os.path.dirname(t.path))
    _install(t, "APP_SECRET=first-secret-0123456789\n")        # what the app was started with
    if snapshot:
        assert run(snapshot_cmd(t, RID)).returncode == 0       # deploy records it
    return inv, t


def _rendered(inv, tmp_path, text):
    """The bytes rotate-env installs for this dotenv text."""
    src = tmp_path / "rendered.env"
    src.write_text(text)
    src.chmod(0o600)
    return plan(inv, str(src)).content.decode()


def _rotate(inv, tmp_path, text, monkeypatch, restarts, fail=()):
    import tasks.cli.rotate_env as re_mod
    from tasks.cli.rotate_env import plan, rotate_host

    from .localctx import LocalCtx

    def fake_restart(ctx):
        restarts.append(open(re_mod.EnvTarget.from_inventory(inv).path).read())
        if len(restarts) in fail:
            from tasks.release.activation import ActivationFailed

            raise ActivationFailed("demo.service failed its health check after the restart", "", old_serving=False)

    monkeypatch.setattr(re_mod, "restart", fake_restart)
    src = tmp_path / f"src-{len(os.listdir(tmp_path))}.env"
    src.write_text(text)
    src.chmod(0o600)
    ctx = LocalCtx(inv, task="rotate-env")
    rotate_host(ctx, plan(inv, str(src)))
    return ctx


def test_installed_but_not_applied_is_applied_by_an_identical_rerun(tmp_path, monkeypatch):
    inv, t = _pending_setup(tmp_path)
    text = "APP_SECRET=second-secret-0123456789\n"
    new = _rendered(inv, tmp_path, text)
    _install(t, new)  # a rotate-env that was SIGKILLed right after its install: no restart
    restarts = []
    ctx = _rotate(inv, tmp_path, text, monkeypatch, restarts)
    assert restarts == [new], "the identical re-run must restart the app with the installed file"
    assert any("installed but never applied" in s for s in ctx.said)
    assert open(t.snapshot(RID)).read() == new  # now recorded as applied
    log = open(Layout.from_inventory(inv).audit_log).read().splitlines()[-1]
    assert "action=rotate-env" in log and "result=ok" in log and "interrupted run installed" in log
    # and once applied, an identical run changes nothing
    ctx = _rotate(inv, tmp_path, text, monkeypatch, restarts)
    assert restarts == [new] and ctx.note == "unchanged"


def test_pending_file_and_failed_restart_restore_what_the_app_runs(tmp_path, monkeypatch):
    inv, t = _pending_setup(tmp_path)
    first = open(t.path).read()
    _install(t, "APP_SECRET=never-applied-0123456789\n")
    restarts = []
    with pytest.raises(StepFailed, match="rotate-env failed"):
        _rotate(inv, tmp_path, "APP_SECRET=third-secret-0123456789\n", monkeypatch, restarts, fail=(1,))
    assert open(t.path).read() == first  # the env the running app was started with, not the pending one
    assert restarts[-1] == first


def test_without_a_record_the_first_rotation_records_one_before_installing(tmp_path, monkeypatch):
    inv, t = _pending_setup(tmp_path, snapshot=False)
    first = open(t.path).read()
    restarts = []

    import tasks.cli.rotate_env as re_mod

    def killed(ctx):  # the run dies between the install and the restart
        raise KeyboardInterrupt

    src = tmp_path / "k.env"
    src.write_text("APP_SECRET=second-secret-0123456789\n")
    src.chmod(0o600)
    monkeypatch.setattr(re_mod, "restart", killed)
    from .localctx import LocalCtx

    with pytest.raises(KeyboardInterrupt):
        re_mod.rotate_host(LocalCtx(inv, task="rotate-env"), re_mod.plan(inv, str(src)))
    assert open(t.snapshot(RID)).read() == first
    _rotate(inv, tmp_path, "APP_SECRET=second-secret-0123456789\n", monkeypatch, restarts)
    assert restarts == [_rendered(inv, tmp_path, "APP_SECRET=second-secret-0123456789\n")]


def test_facts_report_the_applied_env(tmp_path):
    inv, t = _pending_setup(tmp_path)
    f = parse_facts(run(facts_cmd(t)).stdout.decode())
    assert f.applied == f.sha and not f.pending
    _install(t, "APP_SECRET=other-0123456789abcdef\n")
    f = parse_facts(run(facts_cmd(t)).stdout.decode())
    assert f.applied != f.sha and f.pending
