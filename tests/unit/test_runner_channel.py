"""Commands run on a plain channel of the host's one connection (issue 17): invoke's
runner (reader threads, polling, a stdin pump) only when -vv streams output."""
import fabric
import pytest

from tasks.core.commands import Cmd
from tests.unit.test_runner import fleet, make  # noqa: F401 (fixture)


@pytest.fixture
def invoke_runs(monkeypatch):
    calls = []
    real = fabric.Connection.run

    def counting(self, command, **kw):
        calls.append(command)
        return real(self, command, **kw)

    monkeypatch.setattr(fabric.Connection, "run", counting)
    return calls


def test_quiet_commands_skip_invokes_runner(fleet, invoke_runs):  # noqa: F811
    inv, servers = fleet
    run, _buf = make(inv)

    def work(ctx):
        assert ctx.run(Cmd("echo", "out")).stdout == "out\n"
        r = ctx.run("echo err >&2; exit 3", check=False)
        assert (r.stderr, r.exited) == ("err\n", 3)
        assert ctx.run("cat", timeout=5).stdout == ""  # stdin is at its end: nothing waits for it

    run.each(work, hosts=run.hosts[:2])
    assert run.finish() == 0
    assert invoke_runs == []
    assert len(run.ctx(run.hosts[0]).commands) == 3


def test_timeout_on_the_plain_channel(fleet, invoke_runs):  # noqa: F811
    inv, _ = fleet
    run, _buf = make(inv)
    ctx = run.ctx(run.hosts[0])
    r = ctx.run(Cmd("sleep", "5"), timeout=0.3, check=False)
    assert r.timed_out and r.exited == 124
    run.finish()
    assert invoke_runs == []


def test_streaming_still_streams_line_by_line(fleet, invoke_runs):  # noqa: F811
    inv, _ = fleet
    run, buf = make(inv, verbose=2)
    ctx = run.ctx(run.hosts[0])
    ctx.run("echo one; echo two")
    run.finish()
    assert len(invoke_runs) == 1
    assert "[s0] one\n[s0] two\n" in buf.getvalue()


def test_waiting_is_event_driven_not_polling(fleet, monkeypatch):  # noqa: F811
    """A command that runs quietly for 1.5 s costs a few wakeups, not one per
    20 ms (issue 17: a fleet's in-flight commands polling were its CPU); output
    still arrives as it comes and the exit status is the command's."""
    import select
    import time

    import tasks.core.runner as runner

    inv, _ = fleet
    run, _buf = make(inv)
    ctx = run.ctx(run.hosts[0])
    ctx.connect()
    waits, sleeps = [], []
    real_select, real_sleep = select.select, time.sleep
    monkeypatch.setattr(runner.select, "select", lambda *a: waits.append(a) or real_select(*a))
    monkeypatch.setattr(runner.time, "sleep", lambda s: sleeps.append(s) or real_sleep(s))
    t0 = time.monotonic()
    r = ctx.run("sleep 1.5; echo done; echo warn >&2; exit 4", check=False)
    assert (r.stdout, r.stderr, r.exited) == ("done\n", "warn\n", 4)
    assert time.monotonic() - t0 < 2.5
    polls = [s for s in sleeps if s <= 0.02]  # the old loop's naps (the keepalive thread sleeps too)
    assert len(waits) <= 12 and polls == [], (len(waits), len(polls))
    run.finish()


class _LateOutput:
    """A channel whose exit status came before the last of its output (sshd on a host at
    load 20), or (eof=False) whose output a child left behind keeps open: never EOF."""

    def __init__(self, eof=True):
        import os
        import threading

        self.r, self.w = os.pipe()
        os.write(self.w, b"x")  # always readable: each select returns at once
        self.polls, self.sent, self.eof = 0, False, eof
        self.eof_received = False
        self.status_event = threading.Event()

    def fileno(self):
        return self.r

    def settimeout(self, t):
        pass

    def exec_command(self, text):
        pass

    def sendall(self, data):
        pass

    def shutdown_write(self):
        pass

    def recv_ready(self):
        self.polls += 1
        return self.eof and self.polls > 5 and not self.sent

    def recv(self, n):
        self.sent = self.eof_received = True
        return b"@@ end\n"

    def recv_stderr_ready(self):
        return False

    def exit_status_ready(self):
        return True

    def recv_exit_status(self):
        return 0

    def close(self):
        import os

        os.close(self.r)
        os.close(self.w)


def _conn(chan):
    from types import SimpleNamespace

    return SimpleNamespace(client=SimpleNamespace(get_transport=lambda: SimpleNamespace(
        open_session=lambda timeout: chan)))


def test_output_after_the_exit_status_is_still_read():
    from tasks.core.runner import HostContext

    r = HostContext._run_with_stdin(_conn(_LateOutput()), "sh -c facts", b"", 5.0)
    assert (r.stdout, r.exited) == ("@@ end\n", 0)


def test_a_child_left_holding_the_output_costs_only_the_grace(monkeypatch):
    import time

    import tasks.core.runner as runner

    monkeypatch.setattr(runner, "EXIT_EOF_GRACE", 0.3)
    t0 = time.monotonic()
    r = runner.HostContext._run_with_stdin(_conn(_LateOutput(eof=False)), "sh -c 'daemon &'", b"", 5.0)
    assert (r.stdout, r.exited) == ("", 0) and 0.25 < time.monotonic() - t0 < 2
