"""A step whose command outlives its limit says "timed out after Ns" with the
host's newest processes, also where the caller ran the command with
check=False and reports the exit code itself (issue 11: it said `exit 124`)."""
import json

from tasks.core.commands import Cmd
from tasks.core.errors import StepFailed
from tests.unit.test_runner import fleet, make  # noqa: F401  (the in-process SSH servers)


def _record(tmp_path):
    return json.loads(next((tmp_path / "runs").glob("*-test-*.json")).read_text())


def test_caller_that_reports_the_exit_code_says_timed_out(fleet, tmp_path):  # noqa: F811
    inv, _ = fleet
    run, buf = make(inv)

    def step(ctx):  # the pattern of bootstrap, nginx, units, swap, tls, envfile
        res = ctx.run(Cmd("sleep", "5"), check=False, timeout=0.5, what="fact script")
        if not res.ok:
            ctx.fail("facts", f"the fact script did not finish (exit {res.exited})", res.tail())

    run.each(step, hosts=run.hosts[:1])
    run.summary()
    assert run.finish() == 1
    out = buf.getvalue()
    assert "exit 124" not in out, out
    assert "facts: the fact script did not finish (timed out after 0.5s)" in out, out
    assert "processes on the host now:" in out and "sleep 5" in out, out
    rec = _record(tmp_path)["hosts"]["s0"]
    assert "timed out after 0.5s" in rec["error"] and "exit 124" not in json.dumps(rec)


def test_a_raised_step_failure_with_the_exit_code_says_timed_out(fleet, tmp_path):  # noqa: F811
    inv, _ = fleet
    run, buf = make(inv)

    def build(ctx):  # deploy's build: records the step, cleans up, then raises
        r = ctx.run(Cmd("sleep", "5"), stdin=b"", check=False, timeout=0.5, what="build")
        ctx.record("build", "failed", f"exit {r.exited}")
        ctx.run(Cmd("true"), what="stop build")  # cleanup in between
        raise StepFailed(f"build failed (exit {r.exited}) in /opt/x; the old release keeps serving", "build output")

    run.each(build, hosts=run.hosts[:1])
    assert run.finish() == 1
    out = buf.getvalue()
    assert "exit 124" not in out, out
    assert "failed       build: timed out after 0.5s" in out
    assert "build failed (timed out after 0.5s) in /opt/x" in out
    assert "build output" in out and "processes on the host now:" in out


def test_a_real_exit_code_is_left_alone(fleet):  # noqa: F811
    inv, _ = fleet
    run, buf = make(inv)

    def step(ctx):
        res = ctx.run(Cmd("sh", "-c", "exit 124"), check=False, what="probe")
        ctx.fail("probe", f"failed (exit {res.exited})")

    run.each(step, hosts=run.hosts[:1])
    run.finish()
    out = buf.getvalue()
    assert "probe: failed (exit 124)" in out and "timed out" not in out and "processes on the host" not in out
