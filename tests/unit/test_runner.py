"""The runner against real (in-process) SSH servers: parallel hosts, step
results, dry-run, summary, and the JSON run record."""
import io
import json

import paramiko
import pytest

from tasks.core.commands import Cmd, Secret
from tasks.core.errors import StepFailed
from tasks.config.inventory import load_inventory
from tasks.core.runner import Output, Run
from tests.unit.sshd import TinySSHD


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    key = paramiko.ECDSAKey.generate()
    key_path = tmp_path / "id"
    key.write_private_key_file(str(key_path))
    servers = [TinySSHD(key) for _ in range(3)]
    kh = tmp_path / "known_hosts"
    kh.write_text("".join(f"[127.0.0.1]:{s.port} {s.host_key.get_name()} {s.host_key.get_base64()}\n"
                          for s in servers))
    hosts = "".join(f"    s{i}: {{address: 127.0.0.1, port: {s.port}}}\n" for i, s in enumerate(servers))
    inv = tmp_path / "inv.yaml"
    inv.write_text(f"hosts:\n  static:\n{hosts}ssh: {{key_file: {key_path}, known_hosts: {kh}}}\n")
    monkeypatch.setenv("FABSHIP_RUNS_DIR", str(tmp_path / "runs"))
    yield load_inventory(str(inv)), servers
    for s in servers:
        s.stop()


def make(inv, **kw):
    buf = io.StringIO()
    run = Run("test", inv, inv.resolve_hosts(), out=Output(stream=buf), **kw)
    return run, buf


def step(ctx):
    marker = ctx.host.name
    r = ctx.run(Cmd("test", "-e", f"/nonexistent-{marker}"), check=False)
    if r.ok:
        ctx.ok("probe", "exists")
    else:
        ctx.change("create", f"would create {marker}", Cmd("true"))
    if ctx.host.name == "s2":
        ctx.fail("boom", "s2 always fails", "last lines of output")


def test_parallel_run_summary_and_record(fleet, tmp_path):
    inv, servers = fleet
    run, buf = make(inv, parallel=3)
    run.add_secrets([Secret("topsecretvalue")])
    run.each(step)
    run.summary()
    assert run.finish() == 1
    out = buf.getvalue()
    assert "[s0] changed      create: would create s0" in out
    assert "[s2] failed       boom: s2 always fails" in out
    assert "[s2]   | last lines of output" in out
    summary = out[out.index("HOST"):]
    assert "s2" in summary and "FAILED" in summary
    rec = json.loads(next((tmp_path / "runs").glob("*-test-*.json")).read_text())
    assert rec["hosts"]["s0"]["result"] == "changed"
    assert rec["hosts"]["s0"]["remote_commands"] == 2
    assert rec["hosts"]["s2"]["result"] == "failed"
    assert rec["hosts"]["s1"]["commands"][0] == "test -e /nonexistent-s1"
    assert (tmp_path / "runs").stat().st_mode & 0o777 in (0o755, 0o700)
    assert oct(next((tmp_path / "runs").glob("*.json")).stat().st_mode & 0o777) == "0o600"


def test_dry_run_runs_no_changing_command(fleet):
    inv, servers = fleet
    run, buf = make(inv, dry_run=True)
    run.each(lambda ctx: ctx.change("write", "write a file", Cmd("touch", "/tmp/fabship-dry-run-must-not-exist")))
    assert all("touch" not in c for s in servers for c in s.commands)
    assert "would run: touch /tmp/fabship-dry-run-must-not-exist" in buf.getvalue()
    assert run.finish() == 0


def test_secrets_masked_in_output_and_record(fleet, tmp_path):
    inv, _ = fleet
    run, buf = make(inv, verbose=2)
    s = Secret("CANARY-runner-9f8e7d")
    run.add_secrets([s])

    def leaky(ctx):
        ctx.run(Cmd("cat"), stdin=s)  # the server echoes the secret back on stdout
        raise StepFailed("value was CANARY-runner-9f8e7d", "details CANARY-runner-9f8e7d")

    run.each(leaky, hosts=run.hosts[:1])
    run.summary()
    run.finish()
    assert "CANARY" not in buf.getvalue()
    for f in (tmp_path / "runs").glob("*.json"):
        assert "CANARY" not in f.read_text()


def test_unreachable_host_counts_as_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("FABSHIP_RUNS_DIR", str(tmp_path / "runs"))
    inv_path = tmp_path / "inv.yaml"
    inv_path.write_text("hosts: {static: {dead: {address: 127.0.0.1, port: 9}}}\n"
                        f"ssh: {{known_hosts: {tmp_path}/kh, connect_timeout: 2}}\n")
    inv = load_inventory(str(inv_path))
    run, buf = make(inv)
    run.each(lambda ctx: ctx.run("true"))
    assert run.failed_hosts() == ["dead"]
    assert "unreachable" in buf.getvalue()


def test_long_command_says_it_is_still_running(fleet, monkeypatch):
    import tasks.core.runner as runner

    inv, _ = fleet
    monkeypatch.setattr(runner, "STILL_RUNNING_EVERY", 0.2)
    run, buf = make(inv)
    run.each(lambda ctx: ctx.run(Cmd("sleep", "0.7"), what="packages: apt-get install"), hosts=run.hosts[:1])
    assert run.finish() == 0
    assert "s: packages: apt-get install" in buf.getvalue().split("[s0] still running after ", 1)[1], buf.getvalue()


def test_timed_out_command_fails_the_step_and_shows_the_hosts_processes(fleet):
    inv, _ = fleet
    run, buf = make(inv)

    def slow(ctx):
        ctx.run(Cmd("sleep", "5"), timeout=0.5, what="packages: apt-get install")

    run.each(slow, hosts=run.hosts[:1])
    run.summary()
    assert run.finish() == 1
    out = buf.getvalue()
    assert "packages: apt-get install timed out after 0.5s" in out, out
    assert "processes on the host now:" in out and "sleep 5" in out, out  # the stuck command
    assert "kworker" not in out
