"""fab verify's runner and the gate, over real SSH (in-process servers that
run commands on this machine): testinfra on fabship's strict connection,
gate switches, the table, and one-line errors before connecting."""
import io
import os

import paramiko
import pytest
import testinfra.host

from tasks.verify import checks as C
from tasks.verify import gate as V
from tasks.core.errors import ConfigError, HostKeyError
from tasks.config.inventory import load_inventory
from tasks.core.runner import Output, Run
from tests.unit.sshd import TinySSHD


@pytest.fixture
def sshd(tmp_path, monkeypatch):
    key = paramiko.ECDSAKey.generate()
    key_path = tmp_path / "id"
    key.write_private_key_file(str(key_path))
    server = TinySSHD(key)
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{server.port} {server.host_key.get_name()} {server.host_key.get_base64()}\n")
    monkeypatch.setenv("FABSHIP_RUNS_DIR", str(tmp_path / "runs"))
    yield server, key_path, kh
    server.stop()


def write_inv(tmp_path, sshd, extra=""):
    server, key_path, kh = sshd
    p = tmp_path / "inv.yaml"
    p.write_text(f"hosts:\n  static:\n    local: {{address: 127.0.0.1, port: {server.port}}}\n"
                 f"ssh: {{key_file: {key_path}, known_hosts: {kh}}}\n{extra}")
    return str(p)


def make_run(inv_path, task="verify", **kw):
    inv = load_inventory(inv_path)
    buf = io.StringIO()
    return Run(task, inv, inv.resolve_hosts(), out=Output(stream=buf), **kw), buf


def test_testinfra_runs_on_the_fabship_connection(tmp_path, sshd):
    run, _ = make_run(write_inv(tmp_path, sshd))
    f = tmp_path / "secret.env"
    f.write_text("X=1\n")
    os.chmod(f, 0o640)
    ctx = run.ctx(run.hosts[0])
    host = V.testinfra_host(ctx)
    assert isinstance(host, testinfra.host.Host) and host.backend.NAME == "fabship"
    assert host.file(str(f)).mode == 0o640              # testinfra's own File module
    assert host.run("echo %s", "a b").stdout == "a b\n"
    assert any("echo 'a b'" in c for c in ctx.commands)  # recorded in the run record like any command
    assert V.testinfra_host(ctx) is host                # one Host per context: one connection
    run.close()


def test_unknown_host_key_is_refused_for_verify(tmp_path, sshd):
    server, key_path, kh = sshd
    kh.write_text("")
    run, buf = make_run(write_inv(tmp_path, sshd))
    with pytest.raises(HostKeyError):
        V.testinfra_host(run.ctx(run.hosts[0])).run("true")


def test_strict_paramiko_backend_refuses_what_testinfras_accepts(tmp_path, sshd):
    server, key_path, kh = sshd
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    spec = f"root@127.0.0.1:{server.port}"
    # testinfra's own paramiko backend: WarningPolicy, no known_hosts -> connects to anyone
    loose = testinfra.host.Host.get_host(f"paramiko://{spec}", ssh_identity_file=str(key_path))
    with pytest.warns(UserWarning, match="Unknown .* host key"):
        assert loose.run("echo hi").stdout == "hi\n"
    strict = V.strict_paramiko_backend(spec, str(empty), ssh_identity_file=str(key_path))
    with pytest.raises(HostKeyError):
        strict.run("echo hi")
    ok = V.strict_paramiko_backend(spec, str(kh), ssh_identity_file=str(key_path))
    assert ok.run("echo hi").stdout == "hi\n"


def test_gate_switches_run_nothing(tmp_path, sshd):
    inv_path = write_inv(tmp_path, sshd, "verify: {gate: {deploy: false}}\n")
    for kw, stage, why in [({"options": {"gate": False}}, "bootstrap", "--no-gate"),
                           ({}, "deploy", "verify.gate.deploy is false"),
                           ({"dry_run": True}, "bootstrap", "dry run")]:
        run, _ = make_run(inv_path, task=stage, **kw)
        ctx = run.ctx(run.hosts[0])
        assert V.run_gate(ctx, stage) == []
        assert [(s.name, s.status) for s in ctx.steps] == [("verify gate", "skipped")]
        assert why in ctx.steps[0].message
        assert ctx.commands == [] and ctx.conn is None


def test_gate_failure_is_returned_and_recorded(tmp_path, sshd):
    run, buf = make_run(write_inv(tmp_path, sshd, "packages: [no-such-package-fabship]\n"), task="bootstrap")
    ctx = run.ctx(run.hosts[0])
    failed = V.run_gate(ctx, "bootstrap")
    assert [r.name for r in failed] == ["packages"]
    assert failed[0].message == "packages not installed: no-such-package-fabship"
    assert ctx.steps[-1].status == "failed" and "packages: packages not installed" in ctx.steps[-1].message
    assert len(ctx.commands) == 1  # every fact in one round trip
    assert V.gate_failure_message(failed) == "verify gate failed: packages: packages not installed: " \
                                             "no-such-package-fabship"
    run.close()


def test_gate_passes_and_says_what_ran(tmp_path, sshd):
    run, _ = make_run(write_inv(tmp_path, sshd, "packages: [curl]\n"), task="bootstrap")
    ctx = run.ctx(run.hosts[0])
    assert V.run_gate(ctx, "bootstrap") == []
    assert ctx.steps[-1].status == "ok" and ctx.steps[-1].message.startswith("1 check(s) passed")
    run.close()


def test_gate_on_a_whole_run_marks_failing_hosts(tmp_path, sshd):
    run, _ = make_run(write_inv(tmp_path, sshd, "packages: [no-such-package-fabship]\n"), task="bootstrap")
    V.run_gate(run)  # a Run: every host that has not failed, stage = task name
    ctx = run.ctx(run.hosts[0])
    assert ctx.error.startswith("verify gate failed: packages:")
    assert run.finish() == 1


def test_unknown_stage_is_a_bug_not_a_silent_pass(tmp_path, sshd):
    run, _ = make_run(write_inv(tmp_path, sshd))
    with pytest.raises(ValueError):
        V.run_gate(run.ctx(run.hosts[0]), "deploi")


def test_fab_verify_table_and_exit_code(fab, tmp_path, sshd):
    inv = write_inv(tmp_path, sshd, "packages: [curl, no-such-package-fabship]\n")
    r = fab("verify", "-i", inv)
    assert r.returncode == 1
    assert "Traceback" not in r.stdout + r.stderr
    assert "[local] failed       packages: packages not installed: no-such-package-fabship" in r.stdout
    lines = r.stdout.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("HOST"))
    assert lines[head].split() == ["HOST", "PASSED", "FAILED", "SKIPPED", "FAILED", "CHECKS"]
    assert lines[head + 1].split() == ["local", "0", "1", "1", "packages"]   # failed_units: no systemd here
    assert r.stderr.strip() == "fabship: verify failed on: local"


def test_fab_verify_passes_with_exit_zero(fab, tmp_path, sshd):
    r = fab("verify", "-i", write_inv(tmp_path, sshd, "packages: [curl]\n"), "--only", "packages")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [ln.split() for ln in r.stdout.splitlines() if ln.startswith("local")] == [
        ["local", "1", "0", "0", "-"]]


@pytest.mark.parametrize("args,extra,expected", [
    (["--stage", "deploi"], "", "--stage: expected one of bootstrap, deploy, rotate-env, rollback"),
    (["--only", "env_mode"], "", "--only: no such check: env_mode"),
    ([], "verify: {skip: [cert_vaild]}\n", "verify.skip: unknown check name(s): cert_vaild"),
    ([], "verify: {gate: {deploi: true}}\n", "verify.gate.deploi: unknown key (did you mean 'deploy'?)"),
])
def test_bad_verify_input_is_one_line_before_connecting(fab, tmp_path, sshd, args, extra, expected):
    server = sshd[0]
    inv = write_inv(tmp_path, sshd, extra)
    before = len(server.commands)
    r = fab("verify", "-i", inv, *args)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and expected in lines[0], r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert len(server.commands) == before  # nothing ran on the host


def test_ssh_config_is_strict(tmp_path, sshd):
    server, key_path, kh = sshd
    inv = load_inventory(write_inv(tmp_path, sshd))
    text = V.ssh_config_text(inv, inv.resolve_hosts())
    assert text.splitlines()[1:] == [
        "Host local", "  HostName 127.0.0.1", "  User root", f"  Port {server.port}",
        "  StrictHostKeyChecking yes", f"  UserKnownHostsFile {kh}", "  BatchMode yes", "  ConnectTimeout 10",
        f"  IdentityFile {key_path}", "  IdentitiesOnly yes"]


def test_pytest_suite_runs_the_same_checks(tmp_path, sshd):
    """The shipped pytest module over fabship's connection: one test per check."""
    import subprocess
    import sys

    inv = write_inv(tmp_path, sshd, "packages: [curl, no-such-package-fabship]\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA",
                        os.path.join(root, "tasks", "verify", "suite"), f"--fabship-inventory={inv}"],
                       cwd=root, capture_output=True, text=True, timeout=120)
    out = r.stdout
    assert r.returncode == 1, out + r.stderr
    assert "FAILED tasks/verify/suite/test_host.py::test_check[local-packages]" in out
    assert "packages: packages not installed: no-such-package-fabship" in out
    assert "SKIPPED" in out and "cannot list systemd units" in out
    # the installed form: the plugin by name, the suite by package (from any directory)
    r2 = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                         "-p", "tasks.verify.suite.plugin", "--pyargs", "tasks.verify.suite",
                         f"--fabship-inventory={inv}"], cwd=str(tmp_path), capture_output=True, text=True,
                        timeout=120, env={**os.environ, "PYTHONPATH": root})
    assert r2.returncode == 1 and "1 failed, 1 skipped" in r2.stdout, r2.stdout + r2.stderr


def test_ssh_config_carries_the_jump_host(tmp_path, sshd):
    inv = load_inventory(write_inv(tmp_path, sshd), overrides=["ssh.jump_host=ops@bastion.example.com"])
    server, key_path, kh = sshd
    text = V.ssh_config_text(inv, inv.resolve_hosts())
    host_block, bastion_block = text.split("\nHost bastion.example.com\n")
    assert host_block.splitlines()[-1] == "  ProxyJump ops@bastion.example.com:22"
    assert bastion_block.splitlines() == ["  StrictHostKeyChecking yes", f"  UserKnownHostsFile {kh}",
                                          "  BatchMode yes", "  ConnectTimeout 10",
                                          f"  IdentityFile {key_path}", "  IdentitiesOnly yes"]


def test_ssh_config_carries_a_jump_chain(tmp_path, sshd):
    inv = load_inventory(write_inv(tmp_path, sshd), overrides=["ssh.jump_host=edge.example.com,ops@10.0.0.5:2200"])
    text = V.ssh_config_text(inv, inv.resolve_hosts())
    assert "  ProxyJump root@edge.example.com:22,ops@10.0.0.5:2200" in text.splitlines()
    assert "Host edge.example.com" in text.splitlines() and "Host 10.0.0.5" in text.splitlines()
