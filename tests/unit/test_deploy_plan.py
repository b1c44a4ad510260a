"""tasks/cli/deploy.py without hosts: option parsing, validation before any
connection (via the real `fab deploy` CLI: one line, no traceback, exit 2),
exact activation commands, and the fleet logic (batches, max-fail, fleet
rollback in reverse order) with the per-host work replaced."""
import signal
import threading

import pytest
import yaml

from tasks.cli.deploy import Fleet, Plan, batches_of, parse_amount, run_fleet
from tasks.core.errors import ConfigError
from tasks.config.app import Layout
from tasks.release.activation import docker_run_cmd, start_instance_cmd, stop_instance_cmd, upstream_switch_cmd

from .localctx import load_inv

LAY = Layout(app="web", kind="node", user="web", group="web", root="/opt/web", config_dir="/etc/web",
             env_path="/etc/web/web.env", strategy="blue_green", port=3000, ports=(3001, 3002), nginx=True)


def test_parse_amount():
    assert parse_amount("3", 8, "--batch", minimum=1) == 3
    assert parse_amount("25%", 8, "--batch", minimum=1) == 2
    assert parse_amount("10%", 8, "--batch", minimum=1) == 1      # batches round up, at least 1
    assert parse_amount("0", 8, "--batch", minimum=1) == 1
    assert parse_amount("20%", 8, "--max-fail") == 1              # allowances round down
    assert parse_amount("0", 8, "--max-fail") == 0
    for bad in ("x", "-1", "150%", "1.5"):
        with pytest.raises(ConfigError) as ei:
            parse_amount(bad, 8, "--batch")
        assert "--batch" in str(ei.value)
    assert batches_of([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]


def test_activation_commands_exact():
    rid = "20250101T000000Z-v1"
    assert start_instance_cmd(LAY, 3002, rid).render() == (
        "install -d -m 0750 -o root -g web -- /opt/web/.fabship /opt/web/.fabship/slots && "
        f"ln -sfn -- /opt/web/releases/{rid} /opt/web/.fabship/slots/3002.fabship-tmp && "
        "mv -T -- /opt/web/.fabship/slots/3002.fabship-tmp /opt/web/.fabship/slots/3002 && "
        "{ systemctl reset-failed web@3002.service 2>/dev/null || true; } && systemctl restart web@3002.service")
    assert stop_instance_cmd(LAY, 3001).render() == (
        "systemctl stop web@3001.service && { systemctl disable --no-reload --quiet web@3001.service 2>/dev/null || true; }")
    assert docker_run_cmd(LAY, "web-r", rid, "reg/web:v1", 3001, 8080, run_args=["--memory", "256m"]).render() == (
        "sh -c 'set --; if [ -f /etc/web/web.env ]; then set -- --env-file /etc/web/web.env; fi\n"
        "docker run -d --name web-r --label fabship.app=web --label fabship.release=" + rid +
        " --label fabship.port=3001 --restart unless-stopped \"$@\" -p 127.0.0.1:3001:8080 --memory 256m reg/web:v1'")
    up = upstream_switch_cmd(LAY, "upstream web_backend { server 127.0.0.1:3002; }\n").render()
    # validated before reload, previous bytes restored on failure, old workers drained before the old app stops
    assert up.index("nginx -t") < up.index("reload-or-restart nginx")
    assert 'mv -f -- "$bak" "$f"' in up and "/proc/$m/task/$m/children" in up


def write_inv(tmp_path, data):
    p = tmp_path / "inv.yaml"
    base = {"hosts": {"static": {"h1": "10.255.255.1"}}}
    base.update(data)
    p.write_text(yaml.safe_dump(base))
    return str(p)


APP = {"name": "web", "kind": "node", "port": 3000, "start": "npm start"}


@pytest.mark.parametrize("data,args,needle", [
    ({"app": APP}, [], "inv.yaml: deploy: required for deploy"),
    ({"app": APP, "deploy": {"source": "image"}}, [], "deploy.source: image does not fit app.kind node"),
    ({"app": APP, "nginx": {"enabled": False}, "deploy": {"source": "artifact", "artifact": "."}}, [],
     "deploy.strategy: blue_green switches traffic with nginx"),
    ({"app": APP, "nginx": {}, "deploy": {"source": "artifact", "artifact": "."}}, ["--batch", "x"],
     "--batch: expected a count"),
    ({"app": APP, "nginx": {}, "deploy": {"source": "artifact", "artifact": "."}}, ["--tag", "v1"],
     "--tag: does not apply to deploy.source artifact"),
    ({"app": APP, "nginx": {}, "deploy": {"source": "artifact", "artifact": "nope/"}}, [],
     "deploy.artifact: "),
    ({"app": APP, "nginx": {}, "deploy": {"source": "artifact", "artifact": ".", "ports": [3000, 3001]}}, [],
     "deploy.ports: must not include app.port"),
    ({"app": dict(APP, port=None), "nginx": {}, "deploy": {"source": "artifact", "artifact": "."}}, [],
     "app.port: required for deploy"),
    ({"app": APP, "nginx": {}, "deploy": {"source": "git", "repo": "https://x/y.git"}}, ["--ref", "a b"],
     "--ref: 'a b' is not a branch"),
    ({"app": APP, "nginx": {}, "deploy": {"source": "artifact", "artifact": "."}}, ["--strategy", "canary"],
     "--strategy: expected blue_green or restart"),
])
def test_bad_input_is_one_line_before_connecting(fab, tmp_path, data, args, needle):
    if data.get("app", {}).get("port", 1) is None:
        data["app"] = {k: v for k, v in data["app"].items() if v is not None}
    r = fab("deploy", "-i", write_inv(tmp_path, data), *args)
    assert r.returncode != 0
    assert needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1


def test_rollback_and_unlock_bad_input(fab, tmp_path):
    inv = write_inv(tmp_path, {"app": APP, "nginx": {}})
    r = fab("rollback", "-i", inv, "--to", "../../etc")
    assert r.returncode == 2 and "--to: '../../etc' is not a release id" in r.stderr
    r = fab("unlock", "-i", write_inv(tmp_path, {}))
    assert r.returncode == 2 and "app.name" in r.stderr and "Traceback" not in r.stderr


# -- fleet logic with the per-host work replaced -----------------------------------------------

class FakeCtxState:
    current = "20250101T000000Z-v0"
    releases: list = []


def fleet_run(tmp_path, monkeypatch, *, fail=(), batch=2, max_fail=0, rollback=True, interrupt_at=None):
    import tasks.cli.deploy as d
    from tasks.core.runner import Run

    inv = load_inv(tmp_path)
    hosts = inv.resolve_hosts(None)
    run = Run("deploy", inv, hosts, parallel=5)
    from tasks.release.sources import Source

    plan = Plan(lay=Layout.from_inventory(inv), src=Source("artifact", "v1"), rid="20250101T000001Z-v1", batch=batch, max_fail=max_fail,
                rollback_fleet=rollback, lock_wait=0)
    log = {"deployed": [], "rolled_back": [], "batches": []}
    lk = threading.Lock()

    def fake_lock_all(self, hs, release, want_state=True, **kw):
        for h in hs:
            run.ctx(h).data["state"] = type("S", (), {"current": "20250101T000000Z-v0", "releases": []})()
        return list(hs)

    def fake_deploy_host(ctx, plan):
        ctx.data["previous"] = "20250101T000000Z-v0"
        if interrupt_at and ctx.host.name == interrupt_at:
            # Ctrl-C reaches the main thread while this host works; the host's
            # remote command is cut (here: it waits for the cancel event)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            assert run.cancel.wait(5)
            ctx.data["outcome"] = d.FAILED
            raise d.Cancelled("interrupted")
        if ctx.host.name in fail:
            ctx.data["outcome"] = d.FAILED
            raise d.StepFailed("health check failed")
        ctx.data["outcome"] = d.DEPLOYED
        ctx.data["switched"] = True
        with lk:
            log["deployed"].append(ctx.host.name)

    def fake_rollback(ctx, alb):
        with lk:
            log["rolled_back"].append(ctx.host.name)
        ctx.data["outcome"] = d.ROLLED_BACK

    monkeypatch.setattr(d.Fleet, "lock_all", fake_lock_all)
    monkeypatch.setattr(d, "deploy_host", fake_deploy_host)
    monkeypatch.setattr(d, "_rollback_switched", fake_rollback)
    fleet = Fleet(run, plan)
    run_fleet(fleet, hosts)
    log["interrupted"] = fleet.interrupted
    return run, log


def test_fleet_all_good(tmp_path, monkeypatch):
    run, log = fleet_run(tmp_path, monkeypatch, batch=2)
    assert sorted(log["deployed"]) == ["h1", "h2", "h3", "h4", "h5"] and log["rolled_back"] == []


def test_fleet_stops_and_rolls_back_in_reverse_batches(tmp_path, monkeypatch):
    run, log = fleet_run(tmp_path, monkeypatch, fail=("h3",), batch=2)
    # batch 1 (h1,h2) ok, batch 2 (h3 fails, h4 ok) -> stop; h5 never deployed
    assert sorted(log["deployed"]) == ["h1", "h2", "h4"]
    assert log["rolled_back"][0] == "h4" and sorted(log["rolled_back"][1:]) == ["h1", "h2"]
    assert run.ctx(run.hosts[4]).status == "skipped"


def test_fleet_max_fail_tolerates(tmp_path, monkeypatch):
    run, log = fleet_run(tmp_path, monkeypatch, fail=("h1",), batch=1, max_fail=1)
    assert sorted(log["deployed"]) == ["h2", "h3", "h4", "h5"] and log["rolled_back"] == []
    assert run.failed_hosts() == ["h1"]


def test_fleet_no_rollback_when_disabled(tmp_path, monkeypatch):
    run, log = fleet_run(tmp_path, monkeypatch, fail=("h4",), batch=2, rollback=False)
    assert sorted(log["deployed"]) == ["h1", "h2", "h3"] and log["rolled_back"] == []


def test_fleet_interrupt_rolls_back_switched_hosts(tmp_path, monkeypatch):
    run, log = fleet_run(tmp_path, monkeypatch, batch=2, interrupt_at="h3")
    assert isinstance(log["interrupted"], KeyboardInterrupt)
    assert "h5" not in log["deployed"]                       # no batch starts after Ctrl-C
    assert set(log["rolled_back"]) == set(log["deployed"])   # every switched host went back
    assert log["rolled_back"][-2:] in (["h1", "h2"], ["h2", "h1"])  # earlier batch last
    assert "interrupted" in (run.ctx(run.hosts[2]).error or "")
