"""An idle connection's transport thread checks once a second, not ten times
(issue 17: 0.4 ms of CPU per second per connection at paramiko's 0.1 s), and
still answers at once and closes at once."""
import time

from tasks.core import ssh
from tests.unit.test_ssh_hostkeys import client_key, known_line, make_run, server  # noqa: F401 (fixtures)


def test_idle_poll_and_prompt_answers(tmp_path, server, client_key):  # noqa: F811
    kh = tmp_path / "known_hosts"
    kh.write_text(known_line(server))
    run = make_run(tmp_path, server, client_key, kh)
    ctx = run.ctx(run.hosts[0])
    t = ctx.connect().client.get_transport()
    assert t.sock.gettimeout() == ssh.IDLE_POLL >= 1.0
    time.sleep(1.2)  # idle past one poll
    t0 = time.monotonic()
    assert ctx.run("echo after-idle").stdout == "after-idle\n"
    assert time.monotonic() - t0 < 0.9  # data woke the thread, not the poll
    t0 = time.monotonic()
    run.close()
    assert time.monotonic() - t0 < 0.5 and not t.is_active()
    t.join(ssh.IDLE_POLL + 1)
    assert not t.is_alive()
