"""ssh.via: ssm — the connection runs over `aws ssm start-session ... AWS-StartSSHSession`
as a proxy command, host keys checked as ever (under the instance id). Session Manager
cannot run here: tests/standins/aws forwards the session to an in-process sshd.
Also ssh.wait: a host that does not answer yet is retried, then cloud-init is waited for."""
import json
import os
import socket
import threading
import time
from pathlib import Path

import paramiko
import pytest

from tasks.config.inventory import load_inventory
from tasks.core.errors import ConfigError, ConnectError, HostKeyError
from tasks.core.runner import Output, Run
from tasks.core.ssh import ssm_proxy_argv
from tests.unit.sshd import TinySSHD, client_key, server  # noqa: F401 (fixtures)

STANDINS = Path(__file__).resolve().parents[1] / "standins"
IID = "i-0123456789abcdef0"


@pytest.fixture
def standin(tmp_path, monkeypatch, server):
    """`aws` on PATH is the stand-in; IID's session goes to the in-process sshd."""
    mapping = tmp_path / "ssm-map.json"
    mapping.write_text(json.dumps({IID: f"127.0.0.1:{server.port}"}))
    log = tmp_path / "aws.log"
    monkeypatch.setenv("PATH", f"{STANDINS}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FABSHIP_SSM_STANDIN_MAP", str(mapping))
    monkeypatch.setenv("FABSHIP_SSM_STANDIN_LOG", str(log))
    monkeypatch.setenv("FABSHIP_RUNS_DIR", str(tmp_path / "runs"))
    return log


def inventory(tmp_path, client_key, known_hosts, tags=f"{{instance-id: {IID}}}", ssh_extra="via: ssm, "):
    p = tmp_path / "inv.yaml"
    p.write_text(
        f"hosts: {{static: {{gpu: {{address: 10.9.8.7, tags: {tags}}}}}}}\n"
        f"ssh: {{{ssh_extra}user: root, key_file: {client_key[1]}, known_hosts: {known_hosts}, connect_timeout: 5,"
        f" ssm: {{region: eu-west-1}}}}\n")
    return load_inventory(str(p))


def make_run(inv, accept_new=False):
    import io

    return Run("test", inv, inv.resolve_hosts(), out=Output(stream=io.StringIO()), accept_new_host_keys=accept_new)


def key_line(name, key):
    return f"{name} {key.get_name()} {key.get_base64()}\n"


def test_the_proxy_argv_is_a_value():
    assert ssm_proxy_argv(IID, 22, region="eu-west-1", profile="ops") == [
        "aws", "ssm", "start-session", "--target", IID, "--document-name", "AWS-StartSSHSession",
        "--parameters", "portNumber=22", "--region", "eu-west-1", "--profile", "ops"]
    for bad in ("i-123; rm -rf /", "i-XYZ", "", "--target", "i-0123456789abcdef0 x"):
        with pytest.raises(ConfigError):
            ssm_proxy_argv(bad, 22)


def test_unknown_host_key_is_refused(tmp_path, client_key, server, standin):
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    run = make_run(inventory(tmp_path, client_key, kh))
    with pytest.raises(HostKeyError) as e:
        run.ctx(run.hosts[0]).connect()
    assert IID in str(e.value) and "--accept-new-host-keys" in str(e.value)
    assert server.commands == [] and kh.read_text() == ""
    # it did go through Session Manager's document, to the instance's own sshd port
    argv = json.loads(standin.read_text().splitlines()[0])
    assert argv == ["ssm", "start-session", "--target", IID, "--document-name", "AWS-StartSSHSession",
                    "--parameters", "portNumber=22", "--region", "eu-west-1"]


def test_known_host_key_under_the_instance_id_works(tmp_path, client_key, server, standin):
    kh = tmp_path / "known_hosts"
    kh.write_text(key_line(IID, server.host_key))
    run = make_run(inventory(tmp_path, client_key, kh))
    ctx = run.ctx(run.hosts[0])
    assert ctx.run("echo through-ssm").stdout == "through-ssm\n"
    assert ctx.run("echo again").stdout == "again\n"
    assert server.connections == 1  # one session carries every command of the run
    run.close()


def test_a_key_recorded_under_the_address_is_not_the_instances(tmp_path, client_key, server, standin):
    kh = tmp_path / "known_hosts"
    kh.write_text(key_line("10.9.8.7", server.host_key))
    run = make_run(inventory(tmp_path, client_key, kh))
    with pytest.raises(HostKeyError):
        run.ctx(run.hosts[0]).connect()


def test_a_changed_key_is_refused(tmp_path, client_key, server, standin):
    kh = tmp_path / "known_hosts"
    kh.write_text(key_line(IID, paramiko.ECDSAKey.generate()))
    run = make_run(inventory(tmp_path, client_key, kh), accept_new=True)
    with pytest.raises(HostKeyError) as e:
        run.ctx(run.hosts[0]).connect()
    assert "HOST KEY CHANGED" in str(e.value) and f"ssh-keygen -R {IID}" in str(e.value)


def test_accept_new_records_the_key_under_the_instance_id(tmp_path, client_key, server, standin):
    kh = tmp_path / "known_hosts"
    run = make_run(inventory(tmp_path, client_key, kh), accept_new=True)
    assert run.ctx(run.hosts[0]).run("true").ok
    run.close()
    assert kh.read_text() == key_line(IID, server.host_key)


def test_a_host_without_an_instance_id_is_a_configuration_error(tmp_path, client_key, standin):
    inv = inventory(tmp_path, client_key, tmp_path / "kh", tags="{}")
    with pytest.raises(ConfigError) as e:
        make_run(inv)
    assert "host gpu" in str(e.value) and "instance-id" in str(e.value) and e.value.exit_code == 2
    inv = inventory(tmp_path, client_key, tmp_path / "kh", tags="{instance-id: 'i-1;reboot'}")
    with pytest.raises(ConfigError):
        make_run(inv)


def test_via_ssm_with_a_jump_host_is_refused(tmp_path, client_key):
    with pytest.raises(ConfigError) as e:
        inventory(tmp_path, client_key, tmp_path / "kh", ssh_extra="via: ssm, jump_host: bastion, ")
    assert "ssh.via" in str(e.value)


def test_the_session_fails_with_the_cli_s_own_words(tmp_path, client_key, server, standin):
    (tmp_path / "ssm-map.json").write_text("{}")  # the agent never registered
    run = make_run(inventory(tmp_path, client_key, tmp_path / "kh"))
    with pytest.raises(ConnectError) as e:
        run.ctx(run.hosts[0]).connect()
    assert "TargetNotConnected" in str(e.value) and IID in str(e.value)


def test_no_aws_cli_is_one_line(tmp_path, client_key, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing called aws there
    run = make_run(inventory(tmp_path, client_key, tmp_path / "kh"))
    with pytest.raises(ConnectError) as e:
        run.ctx(run.hosts[0]).connect()
    assert "cannot run aws" in str(e.value) and "session-manager-plugin" in str(e.value)


def test_the_transport_runs_over_the_session(tmp_path, client_key, server, standin):
    """Every channel (commands, and SFTP: tested against a real sshd in
    tests/integration/test_ci_flows.py) is one of this transport's, over the proxy."""
    kh = tmp_path / "known_hosts"
    kh.write_text(key_line(IID, server.host_key))
    run = make_run(inventory(tmp_path, client_key, kh))
    conn = run.ctx(run.hosts[0]).connect()
    assert conn.client.get_transport().sock.__class__.__name__ == "SessionProxy"
    run.close()


# -- ssh.wait ---------------------------------------------------------------------------------

def late_listener(target_port: int, after: float) -> int:
    """A port that refuses connections for `after` seconds, then forwards to target_port
    (an sshd that starts late)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()

    def serve():
        time.sleep(after)
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", port))
        ls.listen(8)
        while True:
            c, _ = ls.accept()
            u = socket.create_connection(("127.0.0.1", target_port))
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return port


def _pipe(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
    except OSError:
        pass
    try:
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def direct_inventory(tmp_path, client_key, port, wait, kh_text=""):
    kh = tmp_path / "known_hosts"
    kh.write_text(kh_text)
    p = tmp_path / "inv.yaml"
    p.write_text(f"hosts: {{static: {{fresh: {{address: 127.0.0.1, port: {port}}}}}}}\n"
                 f"ssh: {{user: root, key_file: {client_key[1]}, known_hosts: {kh}, connect_timeout: 2, wait: {wait}}}\n")
    return load_inventory(str(p))


def test_a_late_sshd_is_waited_for_with_progress(tmp_path, client_key, server, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path}/bin{os.pathsep}{os.environ['PATH']}")
    port = late_listener(server.port, 2)
    inv = direct_inventory(tmp_path, client_key, port, 30, f"[127.0.0.1]:{port} {server.host_key.get_name()} "
                                                             f"{server.host_key.get_base64()}\n")
    import io

    buf = io.StringIO()
    run = Run("test", inv, inv.resolve_hosts(), out=Output(stream=buf))
    t0 = time.monotonic()
    assert run.ctx(run.hosts[0]).run("echo up").stdout == "up\n"
    assert 1.5 < time.monotonic() - t0 < 15
    said = buf.getvalue()
    assert "waiting for SSH" in said and "connection refused" in said.lower() and "left of ssh.wait=30" in said
    run.close()


def test_cloud_init_is_waited_for_where_it_exists(tmp_path, client_key, server, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "cloud-init").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/cloud-init.calls\nsleep 1\nexit 0\n")
    (bin_dir / "cloud-init").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")  # the in-process sshd's PATH
    inv = direct_inventory(tmp_path, client_key, server.port, 10, f"[127.0.0.1]:{server.port} "
                           f"{server.host_key.get_name()} {server.host_key.get_base64()}\n")
    run = make_run(inv)
    ctx = run.ctx(run.hosts[0])
    assert ctx.run("echo ready").stdout == "ready\n"
    assert (tmp_path / "cloud-init.calls").read_text() == "status --wait\n"
    assert [(s.name, s.status) for s in ctx.steps] == [("cloud-init", "ok")]
    run.close()


def test_an_unreachable_host_fails_in_bounded_time_in_one_line(tmp_path, client_key):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    run = make_run(direct_inventory(tmp_path, client_key, port, 3))
    t0 = time.monotonic()
    with pytest.raises(ConnectError) as e:
        run.ctx(run.hosts[0]).connect()
    assert time.monotonic() - t0 < 8
    msg = str(e.value)
    assert "\n" not in msg and "gave up after 3s of ssh.wait" in msg and f"127.0.0.1:{port}" in msg


def test_a_refused_host_key_is_never_retried(tmp_path, client_key, server):
    run = make_run(direct_inventory(tmp_path, client_key, server.port, 30))  # empty known_hosts
    t0 = time.monotonic()
    with pytest.raises(HostKeyError):
        run.ctx(run.hosts[0]).connect()
    assert time.monotonic() - t0 < 3 and server.connections == 1


def test_the_ssm_agent_not_registered_yet_is_retried(tmp_path, client_key, server, standin, monkeypatch):
    monkeypatch.setenv("FABSHIP_SSM_STANDIN_FAIL_FIRST", "2")
    kh = tmp_path / "known_hosts"
    kh.write_text(key_line(IID, server.host_key))
    p = tmp_path / "inv.yaml"
    p.write_text(f"hosts: {{static: {{gpu: {{address: 10.9.8.7, tags: {{instance-id: {IID}}}}}}}}}\n"
                 f"ssh: {{via: ssm, wait: 30, user: root, key_file: {client_key[1]}, known_hosts: {kh}}}\n")
    run = make_run(load_inventory(str(p)))
    assert run.ctx(run.hosts[0]).run("echo ok").stdout == "ok\n"
    assert len(standin.read_text().splitlines()) == 3
    run.close()


def test_write_ssh_config_goes_through_the_same_session_manager_proxy(tmp_path, client_key, server, standin):
    """`fab verify --write-ssh-config` for ssh.via: ssm: OpenSSH (testinfra's backend) reaches
    the host through the proxy the run uses, its key checked under the instance id."""
    import shutil
    import subprocess

    from tasks.verify.gate import ssh_config_text

    kh = tmp_path / "known_hosts"
    kh.write_text(key_line(IID, server.host_key))
    inv = inventory(tmp_path, client_key, kh)
    text = ssh_config_text(inv, inv.resolve_hosts())
    assert (f"  ProxyCommand aws ssm start-session --target {IID} --document-name AWS-StartSSHSession "
            "--parameters portNumber=22 --region eu-west-1\n") in text
    assert f"  HostKeyAlias {IID}\n" in text and "  StrictHostKeyChecking yes" in text
    if not shutil.which("ssh"):
        pytest.skip("no OpenSSH client")
    cfg = tmp_path / "ssh_config"
    cfg.write_text(text)
    r = subprocess.run(["ssh", "-F", str(cfg), "gpu", "echo ok"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr
    kh.write_text(key_line(IID, paramiko.ECDSAKey.generate()))   # another key under the id: refused
    r = subprocess.run(["ssh", "-F", str(cfg), "gpu", "echo ok"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "ok" not in r.stdout
