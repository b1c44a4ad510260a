"""Regressions for what the fault-injection suite (tests/integration/faults,
issue 18) found: a SIGKILLed run left no run record; a run that died holding
the lock left no line saying what became of its release; the rerun of a
rollback cut after its switch failed ("already current")."""
import json
import os
import subprocess
import sys
import time

from tasks.config.app import Layout
from tasks.facts.releases import HostState, Entry, parse_log
from tasks.release.lock import acquire_cmd, make_holder, unlock_host

from .localctx import LocalCtx, load_inv
from .test_runner import fleet, make  # noqa: F401  (fleet is a fixture)


def _dead_holder(lay, action, release):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = dict(make_holder(action, release), pid=dead.pid)
    subprocess.run(["sh", "-c", acquire_cmd(lay, json.dumps(holder)).render()], check=True, capture_output=True)
    return holder


def test_unlock_of_a_dead_deploy_records_it_interrupted(tmp_path):
    inv = load_inv(tmp_path)
    lay = Layout.from_inventory(inv)
    rid = "20260101T000000Z-v2"
    _dead_holder(lay, "deploy", rid)
    unlock_host(LocalCtx(inv))
    log = parse_log(open(lay.release_log).read())
    assert [(e.id, e.action, e.result) for e in log] == [(rid, "deploy", "interrupted")]
    assert "lock broken by fab unlock" in log[0].extra["reason"]
    audit = open(lay.audit_log).read()
    assert "action=unlock" in audit and f"action=deploy release={rid} result=interrupted" in audit


def test_unlock_does_not_repeat_a_line_the_dead_run_wrote(tmp_path):
    inv = load_inv(tmp_path)
    lay = Layout.from_inventory(inv)
    rid = "20260101T000000Z-v3"
    holder = _dead_holder(lay, "deploy", rid)
    os.makedirs(os.path.dirname(lay.release_log), exist_ok=True)
    with open(lay.release_log, "a") as f:   # it died after recording its release
        f.write(Entry(id=rid, action="deploy", result="ok", time=holder["time"]).line() + "\n")
    unlock_host(LocalCtx(inv))
    assert [e.result for e in parse_log(open(lay.release_log).read())] == ["ok"]


def test_unlock_of_a_dead_rotate_env_audits_it_interrupted(tmp_path):
    inv = load_inv(tmp_path)
    lay = Layout.from_inventory(inv)
    _dead_holder(lay, "rotate-env", None)
    unlock_host(LocalCtx(inv))
    assert "action=rotate-env release=- result=interrupted" in open(lay.audit_log).read()
    assert not os.path.exists(lay.release_log) or not parse_log(open(lay.release_log).read())


def test_rollback_to_the_current_release_is_done_not_refused():
    from tasks.cli.rollback import choose_target

    st = HostState(current="20260101T000000Z-v1", releases=["20260101T000000Z-v1"],
                   log=[Entry(id="20260101T000000Z-v1", action="deploy", result="ok")])
    assert choose_target(st, "20260101T000000Z-v1") == (None, "")
    assert choose_target(st, "20260101T000001Z-v9")[1] == "release 20260101T000001Z-v9 does not exist on this host"


def test_run_record_exists_from_the_first_step(fleet, tmp_path):  # noqa: F811
    inv, _ = fleet
    run, _ = make(inv)
    ctx = run.ctx(run.hosts[0])
    ctx.ok("first", "done")
    recs = list((tmp_path / "runs").glob("*-test-*.json"))
    assert len(recs) == 1 and oct(recs[0].stat().st_mode & 0o777) == "0o600"
    rec = json.loads(recs[0].read_text())
    assert rec["result"] == "running" and rec["pid"] == os.getpid()
    assert [s["name"] for s in rec["hosts"][ctx.host.name]["steps"]] == ["first"]
    time.sleep(0.01)
    run.finish()   # the final record replaces the checkpoint, and no later checkpoint replaces it
    ctx.ok("late", "after finish")
    final = json.loads(recs[0].read_text())
    assert final.get("result") != "running" and "late" not in json.dumps(final)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [recs[0].name]


def test_rotate_env_interrupted_mid_rotation_is_audited(tmp_path, monkeypatch):
    """SIGTERM (Terminated) or Ctrl-C between the install and the restart: the
    audit log says `interrupted`, and the lock is released."""
    import pytest

    import tasks.cli.rotate_env as re_mod
    from tasks.cli.base import Terminated

    from .test_rotate_env import _pending_setup

    inv, _ = _pending_setup(tmp_path)

    def terminated(ctx):
        raise Terminated()

    monkeypatch.setattr(re_mod, "restart", terminated)
    src = tmp_path / "t.env"
    src.write_text("APP_SECRET=second-secret-0123456789\n")
    src.chmod(0o600)
    with pytest.raises(Terminated):
        re_mod.rotate_host(LocalCtx(inv, task="rotate-env"), re_mod.plan(inv, str(src)))
    lay = Layout.from_inventory(inv)
    last = open(lay.audit_log).read().splitlines()[-1]
    assert "action=rotate-env" in last and "result=interrupted" in last
    assert not os.path.exists(lay.lock_dir)


def test_rotate_env_whose_install_fails_is_audited(tmp_path, monkeypatch):
    """The env file's install fails (ENOSPC in /etc/APP): one `failed` audit
    line, the old file untouched, the lock released."""
    import pytest

    import tasks.cli.rotate_env as re_mod
    from tasks.core.errors import StepFailed

    from .test_rotate_env import _pending_setup

    inv, t = _pending_setup(tmp_path)
    before = open(t.path).read()

    def full_disk(ctx, *a, **kw):
        ctx.fail("env file", f"installing {t.path} failed (exit 1)", "No space left on device")

    monkeypatch.setattr(re_mod, "install_env_file", full_disk)
    src = tmp_path / "n.env"
    src.write_text("APP_SECRET=second-secret-0123456789\n")
    src.chmod(0o600)
    with pytest.raises(StepFailed):
        re_mod.rotate_host(LocalCtx(inv, task="rotate-env"), re_mod.plan(inv, str(src)))
    lay = Layout.from_inventory(inv)
    last = open(lay.audit_log).read().splitlines()[-1]
    assert "action=rotate-env" in last and "result=failed" in last and "installing" in last
    assert open(t.path).read() == before and not os.path.exists(lay.lock_dir)
