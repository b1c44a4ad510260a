"""tasks/release/lock.py: the mkdir lock scripts run locally (the same scripts hosts
run), holder details, staleness, waiting, and release on every exit."""
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from tasks.core.errors import LockError, StepFailed
from tasks.release.lock import (
    ACQUIRED, HELD, acquire, acquire_cmd, deploy_lock, describe, make_holder, parse_holder, release, release_cmd,
    stale_reason, unlock_host,
)
from tasks.config.app import Layout

from .localctx import LocalCtx, load_inv


def sh(cmd, stdin=b""):
    return subprocess.run(["sh", "-c", cmd.render()], input=stdin, capture_output=True, text=False)


def test_acquire_cmd_is_exact():
    lay = Layout(app="web", kind="node", user="web", group="web", root="/opt/web", config_dir="/etc/web",
                 env_path="/etc/web/web.env", strategy="blue_green", port=3000, ports=(3001, 3002), nginx=True)
    assert acquire_cmd(lay, '{"user": "a b"}\n').render() == (
        "sh -c 'set -eu\numask 077\ninstall -d -m 0750 -- /opt/web/.fabship\n"
        "if mkdir -- /opt/web/.fabship/lock 2>/dev/null; then printf '\"'\"'%s\\n'\"'\"' \"$1\" > "
        "/opt/web/.fabship/lock/holder.json; echo FABSHIP_LOCK_ACQUIRED; else echo FABSHIP_LOCK_HELD; "
        "cat -- /opt/web/.fabship/lock/holder.json 2>/dev/null || true; fi' sh '{\"user\": \"a b\"}'")
    assert release_cmd(lay, "abc").render() == (
        "if grep -qF -- abc /opt/web/.fabship/lock/holder.json 2>/dev/null; then rm -rf -- /opt/web/.fabship/lock; "
        "echo released; else echo not-ours; fi")


def test_mkdir_lock_scripts_locally(tmp_path):
    inv = load_inv(tmp_path)
    lay = Layout.from_inventory(inv)
    h1, h2 = make_holder("deploy", "r1"), make_holder("rollback")
    r1 = sh(acquire_cmd(lay, json.dumps(h1)))
    assert r1.stdout.decode().strip() == ACQUIRED
    assert oct(os.stat(lay.state).st_mode & 0o777) == "0o750"
    r2 = sh(acquire_cmd(lay, json.dumps(h2)))
    out = r2.stdout.decode()
    assert out.startswith(HELD)
    assert parse_holder(out[len(HELD):])["id"] == h1["id"]  # the first holder is named, not overwritten
    assert "not-ours" in sh(release_cmd(lay, h2["id"])).stdout.decode()
    assert os.path.isdir(lay.lock_dir)
    assert "released" in sh(release_cmd(lay, h1["id"])).stdout.decode()
    assert not os.path.exists(lay.lock_dir)
    # holder.json is private
    sh(acquire_cmd(lay, json.dumps(h2)))
    assert oct(os.stat(f"{lay.lock_dir}/holder.json").st_mode & 0o777) == "0o600"


def test_holder_details():
    h = make_holder("deploy", "20250101T000000Z-v1", "deploy")
    assert h["pid"] == os.getpid()
    assert h["control_host"] == socket.gethostname()
    assert h["action"] == "deploy" and h["release"] == "20250101T000000Z-v1"
    assert "@" in h["user"] and h["time"].endswith("Z")
    text = describe(h)
    assert str(os.getpid()) in text and socket.gethostname() in text and "deploy of 20250101T000000Z-v1" in text


def test_staleness():
    me = make_holder("deploy")
    assert stale_reason(me) is None  # this very process: live
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    h = dict(me, pid=dead.pid, pid_start="")
    assert "is gone" in stale_reason(h)
    reused = dict(me, pid_start="1")  # same pid, different start time: another process now
    assert "reused" in stale_reason(reused)
    other = dict(me, control_host="elsewhere", pid=1, epoch=time.time() - 10)
    assert stale_reason(other) is None  # can't see another machine's processes: live until max age
    assert "older than" in stale_reason(dict(other, epoch=time.time() - 10000), max_age=3600)
    assert "no holder details" in stale_reason({})


def test_deploy_lock_released_on_error_and_names_holder(tmp_path):
    inv = load_inv(tmp_path)
    ctx, other = LocalCtx(inv), LocalCtx(inv)
    with pytest.raises(RuntimeError):
        with deploy_lock(ctx, "deploy", "20250101T000000Z-v1"):
            assert os.path.isdir(Layout.from_inventory(inv).lock_dir)
            with pytest.raises(LockError) as ei:
                with deploy_lock(other, "rotate-env"):
                    pass
            msg = str(ei.value)
            assert "deploy lock held by" in msg and str(os.getpid()) in msg and "deploy of 20250101T000000Z-v1" in msg
            assert "--lock-wait" in msg and "\n" not in msg
            raise RuntimeError("boom")
    assert not os.path.exists(Layout.from_inventory(inv).lock_dir)


def test_deploy_lock_released_on_keyboard_interrupt(tmp_path):
    inv = load_inv(tmp_path)
    ctx = LocalCtx(inv)
    with pytest.raises(KeyboardInterrupt):
        with deploy_lock(ctx, "deploy"):
            raise KeyboardInterrupt
    assert not os.path.exists(Layout.from_inventory(inv).lock_dir)


def test_stale_lock_is_reported_not_broken(tmp_path):
    inv = load_inv(tmp_path)
    lay = Layout.from_inventory(inv)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    sh(acquire_cmd(lay, json.dumps(dict(make_holder("deploy", "r9"), pid=dead.pid))))
    with pytest.raises(LockError) as ei:
        acquire(LocalCtx(inv), "deploy", wait=30)  # stale: fails at once, waiting would not help
    assert "STALE" in str(ei.value) and "fab unlock" in str(ei.value)
    assert os.path.isdir(lay.lock_dir)
    ctx = LocalCtx(inv)
    unlock_host(ctx)
    assert not os.path.exists(lay.lock_dir)
    assert "action=unlock" in open(lay.audit_log).read()


def test_unlock_refuses_live_lock_without_force(tmp_path):
    inv = load_inv(tmp_path)
    lay = Layout.from_inventory(inv)
    holder = acquire(LocalCtx(inv), "deploy")
    with pytest.raises(StepFailed) as ei:
        unlock_host(LocalCtx(inv))
    assert "live run" in str(ei.value)
    assert os.path.isdir(lay.lock_dir)
    unlock_host(LocalCtx(inv), force=True)
    assert not os.path.exists(lay.lock_dir)
    assert release(LocalCtx(inv), holder) is False  # already broken: nothing of ours to release


def test_lock_wait_gets_the_lock_when_freed(tmp_path):
    inv = load_inv(tmp_path)
    first = acquire(LocalCtx(inv), "deploy")
    threading.Timer(1.0, lambda: release(LocalCtx(inv), first)).start()
    t0 = time.monotonic()
    ctx = LocalCtx(inv)
    got = acquire(ctx, "rollback", wait=10)
    assert got["action"] == "rollback" and 0.8 < time.monotonic() - t0 < 8
    assert any("waiting for the deploy lock" in s for s in ctx.said)
    release(ctx, got)


def test_dry_run_takes_no_lock(tmp_path):
    inv = load_inv(tmp_path)
    ctx = LocalCtx(inv, dry_run=True)
    assert acquire(ctx, "deploy") == {}
    assert not os.path.exists(Layout.from_inventory(inv).lock_dir)


# -- a holder.json that is not what fabship writes (issue 11) ---------------------------------

ODD_EPOCHS = ["abc", "", [1], {"a": 1}, True, "nan", "inf", "1e400", 10 ** 400, -5, 12.5]


@pytest.mark.parametrize("epoch", ODD_EPOCHS, ids=repr)
def test_odd_epoch_is_judged_not_crashed(epoch):
    h = dict(make_holder("deploy", "r1"), control_host="elsewhere", epoch=epoch)
    reason = stale_reason(h)
    assert reason and ("no usable time" in reason or "no holder details" in reason)
    text = describe(h)
    assert "deploy of r1" in text and "\n" not in text
    if epoch != "":  # alive on this control host: live, whatever its time says
        assert stale_reason(dict(make_holder("deploy"), epoch=epoch)) is None


@pytest.mark.parametrize("pid", ["abc", 10 ** 30, -1, [2], True])
def test_odd_pid_is_judged_not_crashed(pid):
    h = dict(make_holder("deploy"), pid=pid, epoch=time.time() - 10)
    assert stale_reason(h) is None or "gone" in stale_reason(h)
    assert "pid" in describe(h)


def _write_lock(lay, holder_text):
    os.makedirs(lay.lock_dir, mode=0o700)
    with open(f"{lay.lock_dir}/holder.json", "w") as f:
        f.write(holder_text)


@pytest.mark.parametrize("text", [
    json.dumps(dict(make_holder("deploy", "r1"), control_host="elsewhere", epoch="yesterday")),
    json.dumps(dict(make_holder("deploy", "r1"), epoch=[1, 2], pid="x")),
    "[1, 2, 3]", "not json at all {", json.dumps({"epoch": {"deep": 1}, "user": ["a"]}),
], ids=["string-epoch", "list-epoch", "json-list", "garbage", "nested"])
def test_odd_holder_json_refuses_cleanly_and_unlock_breaks_it(tmp_path, text):
    inv = load_inv(tmp_path)
    lay = Layout.from_inventory(inv)
    _write_lock(lay, text)
    with pytest.raises(LockError) as ei:
        acquire(LocalCtx(inv), "deploy")
    assert "STALE" in str(ei.value) and "\n" not in str(ei.value)
    assert os.path.isdir(lay.lock_dir)
    unlock_host(LocalCtx(inv))  # stale: no --force needed
    assert not os.path.exists(lay.lock_dir)
    assert "action=unlock" in open(lay.audit_log).read()


def test_force_breaks_a_live_lock_with_an_odd_holder(tmp_path):
    inv = load_inv(tmp_path)
    lay = Layout.from_inventory(inv)
    _write_lock(lay, json.dumps(dict(make_holder("deploy", "r1"), epoch="soon")))  # this live process
    with pytest.raises(StepFailed, match="live run"):
        unlock_host(LocalCtx(inv))
    unlock_host(LocalCtx(inv), force=True)
    assert not os.path.exists(lay.lock_dir)


def test_force_does_not_depend_on_parsing(tmp_path, monkeypatch):
    import tasks.release.lock as lock

    inv = load_inv(tmp_path)
    lay = Layout.from_inventory(inv)
    _write_lock(lay, json.dumps(make_holder("deploy")))

    def boom(*a, **k):
        raise TypeError("a holder format this version does not know")

    monkeypatch.setattr(lock, "stale_reason", boom)
    ctx = LocalCtx(inv)
    unlock_host(ctx, force=True)
    assert not os.path.exists(lay.lock_dir)
    assert "cannot be read" in open(lay.audit_log).read()


def test_a_file_at_the_lock_path_is_a_held_lock(tmp_path):
    inv = load_inv(tmp_path)
    lay = Layout.from_inventory(inv)
    os.makedirs(lay.state)
    open(lay.lock_dir, "w").close()  # mkdir fails on it just the same
    with pytest.raises(LockError, match="STALE"):
        acquire(LocalCtx(inv), "deploy")
    unlock_host(LocalCtx(inv))
    assert not os.path.exists(lay.lock_dir)
