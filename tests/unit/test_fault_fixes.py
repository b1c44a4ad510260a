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
from tasks.core.step import Steps

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


# -- blue/green cut after the traffic switch was sent (SIGTERM after "health check" / "switch traffic") --

class _Ev:
    def __init__(self, on):
        self.on = on

    def is_set(self):
        return self.on


class _Ctx(Steps):   # ctx.apply is the runner's own (tasks/core/step.py)
    def __init__(self, cancelled=False):
        self.run_ = type("R", (), {"cancel": _Ev(cancelled)})()


def _calls(monkeypatch):
    import tasks.release.activation as act

    seen = []
    monkeypatch.setattr(act, "_quietly", lambda ctx, step, *cmds: seen.append((step, [c.render() for c in cmds])))
    return act, seen


def _lay():
    return Layout(app="web", kind="node", user="web", group="web", root="/opt/web", config_dir="/etc/web",
                  env_path="/etc/web/web.env", strategy="blue_green", port=3000, ports=(3001, 3002), nginx=True)


def test_interrupted_after_the_switch_points_nginx_back_before_the_new_instance_stops(monkeypatch):
    act, seen = _calls(monkeypatch)
    assert act.back_to_live(_Ctx(), _lay(), 3001, KeyboardInterrupt(), switching=True) is True
    assert [s for s, _ in seen] == ["switch traffic back"] and "127.0.0.1:3001" in seen[0][1][0]


def test_a_switch_cut_by_the_fleet_cancel_is_switched_back_too(monkeypatch):
    act, seen = _calls(monkeypatch)
    err = act.ActivationFailed("nginx refused the new upstream; the old release keeps serving")
    assert act.back_to_live(_Ctx(cancelled=True), _lay(), 3002, err, switching=True) is True
    assert [s for s, _ in seen] == ["switch traffic back"]


def test_failures_before_the_switch_or_judged_by_fabship_need_no_switch_back(monkeypatch):
    act, seen = _calls(monkeypatch)
    assert act.back_to_live(_Ctx(), _lay(), 3001, KeyboardInterrupt(), switching=False) is True
    assert act.back_to_live(_Ctx(), _lay(), 3001, act.ActivationFailed("unhealthy"), switching=True) is True
    assert act.back_to_live(_Ctx(), _lay(), None, KeyboardInterrupt(), switching=True) is True  # nothing served before
    assert seen == []


def test_a_failed_switch_back_keeps_the_new_instance_serving(monkeypatch):
    act, seen = _calls(monkeypatch)
    err = act.ActivationFailed("gate failed; switching traffic back to port 3001 failed", old_serving=False,
                               switched=True)
    assert act.back_to_live(_Ctx(cancelled=True), _lay(), 3001, err, switching=True) is False
    assert seen == []


def test_record_release_cut_by_an_interruption_is_written_again(monkeypatch):
    import tasks.cli.deploy as dep
    from tasks.core.commands import Cmd
    from tasks.core.runner import RemoteResult

    class Ctx(_Ctx):
        dry_run = False

        def __init__(self):
            super().__init__(cancelled=True)
            self.tries, self.recorded, self.said = 0, [], []

        def run(self, cmd, **kw):
            self.tries += 1
            return RemoteResult(cmd.render(), "", "", -1 if self.tries == 1 else 0)

        def record(self, name, status, message, t0):
            self.recorded.append((name, status))

        def say(self, text):
            self.said.append(text)

    reconnected = []
    monkeypatch.setattr(dep, "ensure_connection", lambda ctx: reconnected.append(ctx))
    ctx = Ctx()
    dep.finish_release(ctx, [Cmd("true")], "release log + audit")
    assert ctx.tries == 2 and reconnected == [ctx] and ctx.recorded == [("record release", "changed")]


def test_record_release_whose_transport_the_interruption_closed_is_written_again(monkeypatch):
    """The cut can also make the command raise (SSH session not active) instead of failing."""
    import tasks.cli.deploy as dep
    from tasks.core.commands import Cmd
    from tasks.core.errors import ConnectError
    from tasks.core.runner import RemoteResult

    class Ctx(_Ctx):
        dry_run = False

        def __init__(self):
            super().__init__(cancelled=True)
            self.tries, self.recorded = 0, []

        def run(self, cmd, **kw):
            self.tries += 1
            if self.tries == 1:
                raise ConnectError("10.0.0.1: connection lost: SSH session not active")
            return RemoteResult(cmd.render(), "", "", 0)

        def record(self, name, status, message, t0):
            self.recorded.append((name, status))

    monkeypatch.setattr(dep, "ensure_connection", lambda ctx: None)
    ctx = Ctx()
    dep.finish_release(ctx, [Cmd("true")], "release log + audit")
    assert ctx.tries == 2 and ctx.recorded == [("record release", "changed")]


# -- the host rebooted after "switch traffic" (tests/integration/faults/test_faults_host.py) --
# nginx pointed at the new port while only the old instance was enabled: the
# host booted the old one and answered 502 until someone deployed again.

class _SwitchCtx(_Ctx):
    def __init__(self, fail_switch=False):
        super().__init__()
        self.steps, self.data, self.dry_run, self.fail_switch = [], {}, False, fail_switch

    def change(self, step, msg, *cmds, **kw):
        self.steps.append((step, " && ".join(c.render() for c in cmds)))
        if step == "switch traffic" and self.fail_switch:
            from tasks.core.errors import StepFailed
            raise StepFailed("nginx -t failed")

    def record(self, *a, **kw):
        pass


class _State:
    def __init__(self):
        self.upstream_port, self.slots, self.current = 3001, {3001: ("active", "r1")}, "r1"

    def live_port(self):
        return 3001


def _blue_green(monkeypatch, ctx):
    import tasks.release.activation as act
    from tasks.release.health import HealthResult

    monkeypatch.setattr(act, "check_health", lambda *a, **kw: HealthResult(True, 200))
    monkeypatch.setattr(act, "gated", lambda ctx, h: h)
    quiet = []
    monkeypatch.setattr(act, "_quietly", lambda ctx, step, *cmds: quiet.append((step, [c.render() for c in cmds])))
    return act, quiet


def test_the_new_instance_is_enabled_before_nginx_points_at_it(monkeypatch):
    ctx = _SwitchCtx()
    act, _ = _blue_green(monkeypatch, ctx)
    act._systemd_blue_green(ctx, _lay(), _State(), "r2", 0, None)
    steps = dict(ctx.steps)
    assert "enable" not in steps["start new instance"]
    switch = steps["switch traffic"]
    assert "systemctl enable --no-reload --quiet web@3002.service" in switch
    assert switch.index("web@3002.service") < switch.index("nginx -t")   # enabled first, then the upstream
    assert "disable --no-reload --quiet web@3001.service" in steps["stop old instance"]


def test_a_refused_switch_disables_the_new_instance_again(monkeypatch):
    import pytest

    ctx = _SwitchCtx(fail_switch=True)
    act, quiet = _blue_green(monkeypatch, ctx)
    with pytest.raises(act.ActivationFailed):
        act._systemd_blue_green(ctx, _lay(), _State(), "r2", 0, None)
    assert [s for s, _ in quiet] == ["stop new instance"] and "disable" in quiet[0][1][0] \
        and "web@3002.service" in quiet[0][1][0]


# -- `fab bootstrap` right after a deploy to the second blue/green port said "changed" --
# (it enabled APP@<first port> again, which the deploy had disabled)

class _Facts:
    def __init__(self, enabled):
        self.enabled = set(enabled)

    def unit_enabled(self, unit):
        return unit in self.enabled


def _bootstrap_units(tmp_path, monkeypatch, enabled):
    import tasks.resources.units as units
    from tasks.cli import bootstrap
    from tasks.config.app import app_spec

    spec = app_spec(load_inv(tmp_path))
    seen = []
    monkeypatch.setattr(units, "apply_units", lambda ctx, u, enable, facts=None: seen.append(enable))
    bootstrap.step_units(None, spec, _Facts(enabled))
    return spec, seen[0]


def test_bootstrap_leaves_the_instance_a_deploy_enabled_on_the_second_port(tmp_path, monkeypatch):
    spec, enable = _bootstrap_units(tmp_path, monkeypatch, {"demo@3002.service"})
    assert list(spec.ports) == [3001, 3002] and enable == []


def test_bootstrap_enables_the_first_port_before_any_deploy(tmp_path, monkeypatch):
    assert _bootstrap_units(tmp_path, monkeypatch, set())[1] == ["demo@3001.service"]
    assert _bootstrap_units(tmp_path, monkeypatch, {"demo@3001.service"})[1] == ["demo@3001.service"]


def test_bootstrap_reads_whether_each_port_s_instance_is_enabled(tmp_path):
    from tasks.cli import bootstrap
    from tasks.config.app import app_spec
    from tasks.config.hosts import Host

    spec = app_spec(load_inv(tmp_path))
    req = bootstrap.facts_request(spec, Host("h1", "10.255.255.1", "root", 22, "static"), None, False)
    assert {"demo@3001.service", "demo@3002.service"} <= set(req.units)


# -- a deploy killed inside its upload left the partial bundle in /tmp (24 MiB in the fault suite) --

def test_an_upload_first_removes_what_a_dead_upload_of_the_app_left(tmp_path):
    from tasks.release.sources import upload_tmp_cmd

    script = upload_tmp_cmd("shop").render().replace("/tmp/", f"{tmp_path}/")
    for name in ("fabship-upload.shop.AbCdEf12", "fabship-upload.shop.b.XyZ12345", "fabship-upload.shopx.QwErTy12"):
        (tmp_path / name).write_bytes(b"partial")
    r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    made = r.stdout.strip()
    left = sorted(p.name for p in tmp_path.iterdir())
    # the dead upload of shop is gone; app "shop.b"'s and "shopx"'s are not shop's
    assert left == sorted(["fabship-upload.shop.b.XyZ12345", "fabship-upload.shopx.QwErTy12", os.path.basename(made)])
    assert os.path.basename(made).startswith("fabship-upload.shop.") and os.stat(made).st_mode & 0o777 == 0o600


# -- ENOSPC during the build: the failed deploy's release-log line was cut short on the full
# disk, and the rerun's "ok" line was glued to it (unparseable: "never completed a deploy") --

def test_a_line_cut_short_on_a_full_disk_does_not_swallow_the_next_one(tmp_path):
    from tasks.release.releases import append_lines_script

    log, audit = tmp_path / "releases.jsonl", tmp_path / "audit.log"
    log.write_text('{"id": "r1", "result": "ok"}\n{"id": "r2", "res')   # the partial line of ENOSPC
    audit.write_text("")
    ok = json.dumps({"id": "r3", "result": "ok"})
    subprocess.run(append_lines_script([str(log), str(audit)], [ok, "audit line"]).parts, check=True)
    lines = log.read_text().splitlines()
    assert lines == ['{"id": "r1", "result": "ok"}', '{"id": "r2", "res', ok]
    assert [e.id for e in parse_log(log.read_text())] == ["r1", "r3"]
    assert audit.read_text() == "audit line\n"   # an empty file gets no newline first


# -- a rollback SIGTERMed after "verify gate" once wrote no line: the interruption closed the
# connection the cleanup had just found alive, under the record's write --

def test_an_interrupted_rollback_writes_its_line_again_on_a_fresh_connection(tmp_path, monkeypatch):
    import pytest

    import tasks.release.rollback as rb

    st = type("St", (), {"current": "r2", "now": 0, "log": [], "entry": lambda self, rid: None})()
    calls = []

    def record(ctx, lay, entry, detail=""):
        calls.append(("record", entry.result))
        return len([c for c in calls if c[0] == "record"]) > 1   # the first write is cut

    def activate(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(rb, "ensure_connection", lambda ctx: calls.append(("reconnect", "")))
    monkeypatch.setattr(rb, "activate", activate)
    monkeypatch.setattr("tasks.release.record.record", record)
    ctx = LocalCtx(load_inv(tmp_path))
    ctx.data["state"] = st
    with pytest.raises(KeyboardInterrupt):
        rb.rollback_host(ctx, "r1", restore_env=False)
    assert calls == [("reconnect", ""), ("record", "interrupted"), ("reconnect", ""), ("record", "interrupted")]
