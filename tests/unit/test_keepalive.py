"""A link that dies without a reset (ssh.keepalive / ssh.dead_after): the
in-process SSH server behind a TCP relay that can go silent, as a pulled cable
or a downed interface does (no FIN, no RST: bytes just stop)."""
import socket
import threading
import time

import pytest

from tasks.core.errors import ConnectError
from tasks.config.inventory import load_inventory
from tasks.core.runner import Run
from tests.unit.sshd import TinySSHD, client_key, server  # noqa: F401 (fixtures)


class SilentRelay:
    """127.0.0.1:PORT -> the server; `cut()` stops forwarding both ways and
    leaves the sockets open, so the client sees silence, not an error."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.cut_ = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                a, _ = self.sock.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.target))
            self.held += [a, b]
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    return
                if self.cut_.is_set():
                    continue  # swallowed: the link is down
                dst.sendall(data)
        except OSError:
            return

    def cut(self):
        self.cut_.set()

    def stop(self):
        self.sock.close()
        for s in self.held:
            s.close()


@pytest.fixture
def relay(server):
    r = SilentRelay(server.port)
    yield r
    r.stop()


def make_run(tmp_path, relay, server, client_key, keepalive, dead_after=2, **ssh):
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{relay.port} {server.host_key.get_name()} {server.host_key.get_base64()}\n")
    extra = "".join(f", {k}: {v}" for k, v in ssh.items())
    inv_path = tmp_path / "inv.yaml"
    inv_path.write_text(
        f"hosts: {{static: {{far: {{address: 127.0.0.1, port: {relay.port}}}}}}}\n"
        f"ssh: {{key_file: {client_key[1]}, known_hosts: {kh}, connect_timeout: 5, "
        f"keepalive: {keepalive}, dead_after: {dead_after}{extra}}}\n")
    inv = load_inventory(str(inv_path))
    return Run("test", inv, inv.resolve_hosts())


def test_dead_link_fails_a_blocked_command_within_keepalive_times_dead_after(tmp_path, relay, server, client_key):
    run = make_run(tmp_path, relay, server, client_key, keepalive=0.5, dead_after=2)
    ctx = run.ctx(run.hosts[0])
    try:
        assert ctx.run("echo up").stdout == "up\n"
        threading.Timer(0.3, relay.cut).start()
        t0 = time.monotonic()
        with pytest.raises(ConnectError) as e:
            ctx.run("sleep 30", timeout=60)  # without keepalives this waits the full 30 s, then forever
        took = time.monotonic() - t0
        assert took < 0.3 + 0.5 * (2 + 1) + 1.0, took
        assert "link lost" in str(e.value) and "ssh.keepalive=0.5" in str(e.value), str(e.value)
        # cleanup afterwards gives up at once instead of waiting on the dead host
        t1 = time.monotonic()
        with pytest.raises(ConnectError, match="link lost"):
            ctx.run("true", check=False, timeout=30)
        assert time.monotonic() - t1 < 0.5
    finally:
        run.close()


def test_dead_link_fails_a_command_fed_on_stdin(tmp_path, relay, server, client_key):
    run = make_run(tmp_path, relay, server, client_key, keepalive=0.5, dead_after=2)
    ctx = run.ctx(run.hosts[0])
    try:
        ctx.run("true")
        threading.Timer(0.3, relay.cut).start()
        t0 = time.monotonic()
        with pytest.raises(ConnectError, match="link lost"):
            ctx.run("cat >/dev/null; sleep 30", stdin=b"x" * 1000, timeout=60)
        assert time.monotonic() - t0 < 3.5
    finally:
        run.close()


def test_a_long_quiet_command_on_a_live_link_is_not_cut(tmp_path, relay, server, client_key):
    run = make_run(tmp_path, relay, server, client_key, keepalive=0.3, dead_after=2)
    ctx = run.ctx(run.hosts[0])
    try:
        r = ctx.run("sleep 2; echo done")  # many keepalive intervals, all answered
        assert r.stdout == "done\n" and ctx.link_lost is None
    finally:
        run.close()


def test_keepalive_zero_sends_none(tmp_path, relay, server, client_key):
    run = make_run(tmp_path, relay, server, client_key, keepalive=0)
    ctx = run.ctx(run.hosts[0])
    try:
        ctx.run("true")
        assert not [t for t in threading.enumerate() if t.name.startswith("keepalive-127.0.0.1")
                    and t.is_alive() and str(relay.port) in t.name]
    finally:
        run.close()


def test_closing_the_run_is_not_a_dead_link(tmp_path, relay, server, client_key):
    run = make_run(tmp_path, relay, server, client_key, keepalive=0.2, dead_after=1)
    ctx = run.ctx(run.hosts[0])
    ctx.run("true")
    run.close()
    time.sleep(0.6)
    assert ctx.link_lost is None


def test_schema_defaults_and_bad_values(tmp_path):
    from tasks.core.errors import ConfigError

    p = tmp_path / "inv.yaml"
    p.write_text("hosts: {static: [a]}\n")
    from tasks.core.ssh import link_option

    ssh = load_inventory(str(p)).data["ssh"]
    assert [link_option(ssh, k) for k in ("keepalive", "dead_after", "forward_agent")] == [15, 3, False]
    p.write_text("hosts: {static: [a]}\nssh: {dead_after: 0}\n")
    with pytest.raises(ConfigError, match="ssh.dead_after"):
        load_inventory(str(p))
