"""A tiny in-process SSH server (paramiko) for fast tests of the SSH layer:
real key exchange and host keys, public-key auth, exec of local commands.
The integration tier uses real sshd hosts; this one needs no root."""
from __future__ import annotations

import socket
import subprocess
import threading

import paramiko
import pytest


class _Server(paramiko.ServerInterface):
    def __init__(self, client_pub: paramiko.PKey):
        self.client_pub = client_pub
        self.cond = threading.Condition()
        self.commands: dict[int, str] = {}  # channel id -> its exec command
        self.forwards: dict[int, tuple] = {}  # channel id -> (host, port) of a direct-tcpip channel

    def check_auth_publickey(self, username, key):
        if key.get_base64() == self.client_pub.get_base64():
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def get_allowed_auths(self, username):
        return "publickey"

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel, command):
        with self.cond:
            self.commands[channel.get_id()] = command.decode() if isinstance(command, bytes) else command
            self.cond.notify_all()
        return True

    def check_channel_direct_tcpip_request(self, chanid, origin, destination):
        self.forwards[chanid] = destination  # a jump host: ssh -J through this server
        return paramiko.OPEN_SUCCEEDED

    def command_for(self, chan, timeout: float = 5) -> str | None:
        with self.cond:
            self.cond.wait_for(lambda: chan.get_id() in self.commands, timeout)
            return self.commands.pop(chan.get_id(), None)


class TinySSHD:
    def __init__(self, client_key: paramiko.PKey, host_key: paramiko.PKey | None = None):
        self.host_key = host_key or paramiko.ECDSAKey.generate()
        self.client_key = client_key
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.commands: list[str] = []
        self.forwarded: list[tuple] = []  # destinations it opened as a jump host
        self.connections = 0
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        t = paramiko.Transport(conn)
        t.add_server_key(self.host_key)
        server = _Server(self.client_key)
        try:
            t.start_server(server=server)
        except Exception:
            return
        while t.is_active():
            chan = t.accept(timeout=1)
            if chan is None:
                continue
            if chan.get_id() in server.forwards:
                dest = server.forwards.pop(chan.get_id())
                self.forwarded.append(dest)
                threading.Thread(target=self._forward, args=(chan, dest), daemon=True).start()
                continue
            # each channel on its own, as sshd does: a second command runs while one hangs
            threading.Thread(target=self._exec, args=(server, chan), daemon=True).start()

    @staticmethod
    def _forward(chan, dest) -> None:
        """Pipe a direct-tcpip channel to dest, both ways, until either side closes."""
        try:
            sock = socket.create_connection(dest, timeout=5)
        except OSError:
            chan.close()
            return
        sock.settimeout(None)

        def pump(src_recv, dst_send, on_end):
            try:
                while True:
                    data = src_recv(65536)
                    if not data:
                        break
                    dst_send(data)
            except (OSError, EOFError):
                pass
            try:
                on_end()
            except (OSError, EOFError):  # the other side is gone already
                pass

        threading.Thread(target=pump, args=(chan.recv, sock.sendall, lambda: sock.shutdown(socket.SHUT_WR)),
                         daemon=True).start()
        pump(sock.recv, chan.sendall, chan.close)

    def _exec(self, server: _Server, chan) -> None:
        cmd = server.command_for(chan)
        if cmd is None:
            chan.close()
            return
        self.commands.append(cmd)
        p = subprocess.run(["sh", "-c", cmd], capture_output=True, input=self._read_stdin(chan))
        try:
            chan.sendall(p.stdout)
            chan.sendall_stderr(p.stderr)
            chan.send_exit_status(p.returncode)
        except (OSError, EOFError):  # the client gave up on it (a timeout)
            pass
        chan.close()

    @staticmethod
    def _read_stdin(chan) -> bytes:
        # Read what the client sends until EOF; a client that sends nothing
        # (no in_stream) never closes stdin, so give up after a short quiet spell.
        chan.settimeout(0.3)
        data = b""
        while True:
            try:
                chunk = chan.recv(65536)
            except socket.timeout:
                return data
            if not chunk:
                return data
            data += chunk

    def stop(self):
        self._stop = True
        self.sock.close()


# Fixtures for the tests of the SSH layer: a client key and a TinySSHD that trusts it.
@pytest.fixture
def client_key(tmp_path):
    key = paramiko.ECDSAKey.generate()
    path = tmp_path / "id_ecdsa"
    key.write_private_key_file(str(path))
    return key, path


@pytest.fixture
def server(client_key):
    s = TinySSHD(client_key[0])
    yield s
    s.stop()
