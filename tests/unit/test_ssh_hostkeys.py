"""Strict host key checking against a real (in-process paramiko) SSH server."""
import paramiko
import pytest

from tasks.core.commands import Cmd
from tasks.core.errors import HostKeyError
from tasks.config.inventory import load_inventory
from tasks.core.runner import Run
from tests.unit.sshd import TinySSHD, client_key, server  # noqa: F401 (fixtures)


def make_run(tmp_path, server, client_key, known_hosts, accept_new=False):
    inv_path = tmp_path / "inv.yaml"
    inv_path.write_text(
        f"hosts: {{static: {{local: {{address: 127.0.0.1, port: {server.port}}}}}}}\n"
        f"ssh: {{user: root, key_file: {client_key[1]}, known_hosts: {known_hosts}, connect_timeout: 5}}\n")
    inv = load_inventory(str(inv_path))
    return Run("test", inv, inv.resolve_hosts(), accept_new_host_keys=accept_new)


def known_line(server):
    k = server.host_key
    return f"[127.0.0.1]:{server.port} {k.get_name()} {k.get_base64()}\n"


def test_unknown_key_is_refused(tmp_path, server, client_key):
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    run = make_run(tmp_path, server, client_key, kh)
    ctx = run.ctx(run.hosts[0])
    with pytest.raises(HostKeyError) as e:
        ctx.connect()
    assert "not in" in str(e.value) and "--accept-new-host-keys" in str(e.value)
    assert server.commands == []
    assert kh.read_text() == ""


def test_known_key_connects_and_runs(tmp_path, server, client_key):
    kh = tmp_path / "known_hosts"
    kh.write_text(known_line(server))
    run = make_run(tmp_path, server, client_key, kh)
    ctx = run.ctx(run.hosts[0])
    assert ctx.run("echo hello").stdout == "hello\n"
    assert ctx.run("echo again").stdout == "again\n"
    # one connection per host per run: the same transport served both commands
    assert ctx.conn.transport.is_active()
    run.close()


def test_changed_key_is_refused_even_with_accept_new(tmp_path, server, client_key):
    other = paramiko.ECDSAKey.generate()
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{server.port} {other.get_name()} {other.get_base64()}\n")
    before = kh.read_text()
    run = make_run(tmp_path, server, client_key, kh, accept_new=True)
    with pytest.raises(HostKeyError, match="HOST KEY CHANGED"):
        run.ctx(run.hosts[0]).connect()
    assert kh.read_text() == before
    assert server.commands == []


def test_accept_new_records_the_key(tmp_path, server, client_key):
    kh = tmp_path / "known_hosts"
    run = make_run(tmp_path, server, client_key, kh, accept_new=True)
    ctx = run.ctx(run.hosts[0])
    ctx.run("true")
    run.close()
    assert kh.read_text() == known_line(server)
    # and afterwards strict mode accepts it
    run2 = make_run(tmp_path, server, client_key, kh)
    assert run2.ctx(run2.hosts[0]).run("echo ok").stdout == "ok\n"
    run2.close()


def test_secret_goes_on_stdin_not_command_line(tmp_path, server, client_key):
    from tasks.core.commands import Cmd, Secret

    kh = tmp_path / "known_hosts"
    kh.write_text(known_line(server))
    run = make_run(tmp_path, server, client_key, kh)
    ctx = run.ctx(run.hosts[0])
    r = ctx.run(Cmd("cat"), stdin=Secret("CANARY-stdin-42"))
    assert r.stdout == "CANARY-stdin-42"
    assert all("CANARY" not in c for c in server.commands + ctx.commands)
    run.close()


def test_stdin_is_binary_safe_and_utf8(tmp_path, server, client_key):
    from tasks.core.commands import Cmd

    kh = tmp_path / "known_hosts"
    kh.write_text(known_line(server))
    run = make_run(tmp_path, server, client_key, kh)
    ctx = run.ctx(run.hosts[0])
    payload = "NAME=café ☕\n" + "X" * 200_000 + "\n"
    r = ctx.run(Cmd("sha256sum"), stdin=payload)
    import hashlib

    assert r.stdout.split()[0] == hashlib.sha256(payload.encode()).hexdigest()
    run.close()


def test_port_closing_before_the_banner_is_one_line_no_traceback(tmp_path, fab):
    """A port that accepts and hangs up at once (a proxy, a dying sshd) makes
    paramiko's transport thread log a traceback; fab must show one line."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def hang_up():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    inv = tmp_path / "inv.yaml"
    inv.write_text(f"hosts: {{static: {{x: {{address: 127.0.0.1, port: {srv.getsockname()[1]}}}}}}}\n"
                   f"ssh: {{known_hosts: {tmp_path}/kh, connect_timeout: 3}}\n"
                   "app: {name: demo, kind: node, port: 3000}\n")
    try:
        r = fab("bootstrap", "-i", str(inv), "--dry-run", subprocess=True)  # paramiko's thread, a real stderr
    finally:
        srv.close()
    assert r.returncode != 0
    assert "unreachable" in r.stdout, r.stdout
    assert "Traceback" not in r.stdout + r.stderr, r.stderr


# -- ssh.jump_host (ssh -J) -------------------------------------------------------------------

def jump_fleet(tmp_path, client_key, *, trust_bastion=True):
    bastion = TinySSHD(client_key[0])
    targets = [TinySSHD(client_key[0]) for _ in range(2)]
    kh = tmp_path / "known_hosts"
    kh.write_text("".join(known_line(s) for s in targets + ([bastion] if trust_bastion else [])))
    hosts = "".join(f"    t{i}: {{address: 127.0.0.1, port: {s.port}}}\n" for i, s in enumerate(targets))
    inv_path = tmp_path / "inv.yaml"
    inv_path.write_text(f"hosts:\n  static:\n{hosts}"
                        f"ssh: {{key_file: {client_key[1]}, known_hosts: {kh}, connect_timeout: 5, "
                        f"jump_host: 'root@127.0.0.1:{bastion.port}'}}\n")
    inv = load_inventory(str(inv_path))
    return bastion, targets, Run("test", inv, inv.resolve_hosts())


def test_jump_host_carries_every_connection_through_one_session(tmp_path, client_key):
    bastion, targets, run = jump_fleet(tmp_path, client_key)
    try:
        run.each(lambda ctx: ctx.run(Cmd("echo", f"via-{ctx.host.name}")), parallel=2)
        assert run.failed_hosts() == []
        assert targets[0].commands == ["echo via-t0"] and targets[1].commands == ["echo via-t1"]
        assert sorted(bastion.forwarded) == sorted(("127.0.0.1", t.port) for t in targets)
        assert bastion.commands == [] and bastion.connections == 1  # one session, only tunnels
    finally:
        run.close()
        for s in [bastion, *targets]:
            s.stop()


def test_jump_host_key_is_checked_too(tmp_path, client_key):
    bastion, targets, run = jump_fleet(tmp_path, client_key, trust_bastion=False)
    try:
        run.each(lambda ctx: ctx.run(Cmd("true")))
        assert sorted(run.failed_hosts()) == ["t0", "t1"]
        err = run.ctx(run.hosts[0]).error
        assert err.startswith(f"jump host root@127.0.0.1:{bastion.port}: ") and "host key not in" in err, err
        assert bastion.forwarded == [] and all(t.commands == [] for t in targets)
    finally:
        run.close()
        for s in [bastion, *targets]:
            s.stop()


@pytest.mark.parametrize("spec, want", [
    ("bastion.example.com", [("bastion.example.com", "ec2-user", 22)]),
    ("admin@10.0.0.5:2222", [("10.0.0.5", "admin", 2222)]),
    ("[fd00::1]:2200", [("fd00::1", "ec2-user", 2200)]),
    ("edge.example.com,ops@10.0.0.5", [("edge.example.com", "ec2-user", 22), ("10.0.0.5", "ops", 22)]),
])
def test_parse_jump_hosts(spec, want):
    from tasks.core.ssh import parse_jump_hosts

    assert [(j.address, j.user, j.port) for j in parse_jump_hosts(spec, "ec2-user")] == want


def test_jump_host_target_brackets_ipv6():
    from tasks.core.ssh import JumpHost

    assert JumpHost("fd00::1", "ops", 2200).target == "ops@[fd00::1]:2200"
    assert str(JumpHost("bastion.example.com", "ops", 22)) == "ops@bastion.example.com"
    assert str(JumpHost("10.0.0.5", "ops", 2222)) == "ops@10.0.0.5:2222"


def test_jump_chain_goes_through_each_hop_in_order(tmp_path, client_key):
    """ssh -J a,b: the control machine talks to a only; a opens b; b opens the host."""
    first, second, target = (TinySSHD(client_key[0]) for _ in range(3))
    kh = tmp_path / "known_hosts"
    kh.write_text("".join(known_line(s) for s in (first, second, target)))
    inv_path = tmp_path / "inv.yaml"
    inv_path.write_text(f"hosts: {{static: {{t: {{address: 127.0.0.1, port: {target.port}}}}}}}\n"
                        f"ssh: {{key_file: {client_key[1]}, known_hosts: {kh}, connect_timeout: 5, "
                        f"jump_host: '127.0.0.1:{first.port},127.0.0.1:{second.port}'}}\n")
    inv = load_inventory(str(inv_path))
    run = Run("test", inv, inv.resolve_hosts())
    try:
        run.each(lambda ctx: ctx.run(Cmd("echo", "through-two")))
        assert run.failed_hosts() == []
        assert target.commands == ["echo through-two"]
        assert first.forwarded == [("127.0.0.1", second.port)]
        assert second.forwarded == [("127.0.0.1", target.port)]
        assert first.commands == [] and second.commands == []
    finally:
        run.close()
        for s in (first, second, target):
            s.stop()


def test_bad_jump_host_is_a_config_error(tmp_path):
    from tasks.core.errors import ConfigError

    p = tmp_path / "inv.yaml"
    p.write_text("hosts: {static: [a]}\nssh: {jump_host: 'ec2 user@bastion'}\n")
    with pytest.raises(ConfigError) as e:
        load_inventory(str(p))
    assert "ssh.jump_host" in str(e.value) and "as for ssh -J" in str(e.value)


# -- the user's ssh_config and fabric config never shape a connection ------------------------

def test_users_ssh_config_proxyjump_and_forwardagent_are_ignored(tmp_path, server, client_key, monkeypatch):
    """~/.ssh/config's ProxyJump would build a gateway with AutoAddPolicy (the
    bastion's key unchecked) and ForwardAgent would hand the agent to root shells."""
    bastion = TinySSHD(client_key[0])
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        f"Host *\n  ProxyJump root@127.0.0.1:{bastion.port}\n  ForwardAgent yes\n")
    (home / ".fabric.yaml").write_text("forward_agent: true\n")
    monkeypatch.setenv("HOME", str(home))
    kh = tmp_path / "known_hosts"
    kh.write_text(known_line(server))  # the bastion's key is NOT in it
    run = make_run(tmp_path, server, client_key, kh)
    try:
        ctx = run.ctx(run.hosts[0])
        assert ctx.run("echo direct").stdout == "direct\n"
        assert bastion.connections == 0 and bastion.forwarded == []
        assert ctx.conn.forward_agent is False and not ctx.conn.gateway
    finally:
        run.close()
        bastion.stop()


def test_users_ssh_config_hostname_and_proxycommand_are_ignored(tmp_path, server, client_key, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    marker = tmp_path / "proxycommand-ran"
    (home / ".ssh" / "config").write_text(
        f"Host *\n  HostName 127.0.0.2\n  ProxyCommand sh -c 'touch {marker}; exec nc %h %p'\n")
    monkeypatch.setenv("HOME", str(home))
    kh = tmp_path / "known_hosts"
    kh.write_text(known_line(server))
    run = make_run(tmp_path, server, client_key, kh)
    try:
        ctx = run.ctx(run.hosts[0])
        assert ctx.run("echo ok").stdout == "ok\n"
        assert ctx.conn.host == "127.0.0.1" and not marker.exists()
    finally:
        run.close()


def test_forward_agent_only_when_the_inventory_asks(tmp_path, server, client_key):
    kh = tmp_path / "known_hosts"
    kh.write_text(known_line(server))
    inv_path = tmp_path / "inv.yaml"
    inv_path.write_text(
        f"hosts: {{static: {{local: {{address: 127.0.0.1, port: {server.port}}}}}}}\n"
        f"ssh: {{key_file: {client_key[1]}, known_hosts: {kh}, forward_agent: true}}\n")
    inv = load_inventory(str(inv_path))
    run = Run("test", inv, inv.resolve_hosts())
    try:
        assert run.ctx(run.hosts[0]).connect().forward_agent is True
    finally:
        run.close()
