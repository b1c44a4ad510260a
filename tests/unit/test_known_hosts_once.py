"""known_hosts is parsed once per run, not once per connection (issue 17), and
answers every name exactly as paramiko's own load_host_keys would."""
import paramiko
import pytest

from tasks.core.errors import HostKeyError
from tasks.core.ssh import KnownHosts
from tests.unit.test_ssh_hostkeys import client_key, known_line, make_run, server  # noqa: F401 (fixtures)



def _keys(n):
    return [paramiko.ECDSAKey.generate() for _ in range(n)]


def test_same_answers_as_load_host_keys(tmp_path):
    a, b, c, d = _keys(4)
    hashed = paramiko.HostKeys.hash_host("10.0.0.9")
    kh = tmp_path / "known_hosts"
    kh.write_text(
        f"10.0.0.1 {a.get_name()} {a.get_base64()}\n"
        f"[10.0.0.1]:2222 {b.get_name()} {b.get_base64()}\n"
        f"web1,10.0.0.2 {c.get_name()} {c.get_base64()}\n"
        f"10.0.0.2 {a.get_name()} {a.get_base64()}\n"          # a second line of one type: the first wins
        f"{hashed} {d.get_name()} {d.get_base64()}\n"
        "10.0.0.3 ssh-unknowntype AAAAB3NzaC1yc2E=\n"          # a type paramiko cannot read: ignored
        "# a comment\n\n")
    names = ["10.0.0.1", "[10.0.0.1]:2222", "10.0.0.2", "web1", "10.0.0.9", "10.0.0.3", "[10.0.0.2]:22", "nope"]
    for name in names:
        ref = paramiko.SSHClient()
        ref.load_host_keys(str(kh))
        ours = paramiko.SSHClient()
        KnownHosts.of(kh).load_into(ours, name)
        want = {t: k.get_base64() for t, k in (ref.get_host_keys().lookup(name) or {}).items()}
        got = {t: k.get_base64() for t, k in (ours.get_host_keys().lookup(name) or {}).items()}
        assert got == want, name
    assert KnownHosts.of(kh).keys_for("10.0.0.9")[0].get_base64() == d.get_base64()


def test_parsed_once_per_version_of_the_file(tmp_path, monkeypatch):
    (k,) = _keys(1)
    kh = tmp_path / "known_hosts"
    kh.write_text("".join(f"[10.0.0.1]:{20000 + i} {k.get_name()} {k.get_base64()}\n" for i in range(200)))
    parses = []
    real = KnownHosts.__init__

    def counting(self, path):
        parses.append(path)
        real(self, path)

    monkeypatch.setattr(KnownHosts, "__init__", counting)
    for i in range(200):
        c = paramiko.SSHClient()
        KnownHosts.of(kh).load_into(c, f"[10.0.0.1]:{20000 + i}")
        assert c.get_host_keys().lookup(f"[10.0.0.1]:{20000 + i}") is not None
    assert len(parses) == 1
    # a line appended (trust on first use of another host) is seen by the next connection
    with kh.open("a") as f:
        f.write(f"10.0.0.7 {k.get_name()} {k.get_base64()}\n")
    c = paramiko.SSHClient()
    KnownHosts.of(kh).load_into(c, "10.0.0.7")
    assert c.get_host_keys().lookup("10.0.0.7") is not None
    assert len(parses) == 2


def test_changed_key_still_refused_with_many_lines(tmp_path, server, client_key):  # noqa: F811
    """The cache changes nothing about safety: a wrong key for this endpoint is a
    changed host key, other endpoints' lines do not vouch for it."""
    (other,) = _keys(1)
    kh = tmp_path / "known_hosts"
    lines = [f"[127.0.0.1]:{p} {server.host_key.get_name()} {server.host_key.get_base64()}\n"
             for p in range(30000, 30300) if p != server.port]
    lines.append(f"[127.0.0.1]:{server.port} {other.get_name()} {other.get_base64()}\n")
    kh.write_text("".join(lines))
    run = make_run(tmp_path, server, client_key, kh)
    with pytest.raises(HostKeyError, match="HOST KEY CHANGED"):
        run.ctx(run.hosts[0]).connect()
    assert server.commands == []
    # and the right line connects
    kh.write_text("".join(lines[:-1]) + known_line(server))
    run = make_run(tmp_path, server, client_key, kh)
    assert run.ctx(run.hosts[0]).run("echo ok").stdout == "ok\n"
    run.close()
