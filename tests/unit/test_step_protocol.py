"""The one step protocol (tasks/core/step.py): what ctx.apply does with each
part of a Change, on the shared fake context and on the real HostContext's
output (the text tests and acceptance scripts read)."""
from __future__ import annotations

import io

import pytest

from tasks.core.commands import Cmd, Raw, sh
from tasks.core.errors import StepFailed
from tasks.core.runner import HostContext, Output, Run
from tasks.core.step import (
    CHANGED,
    FAILED,
    OK,
    RUN,
    SKIP,
    SKIPPED,
    Change,
    Failure,
    Record,
)

from .fakectx import FakeCtx, answer

A, B = Cmd("echo", "a"), Cmd("echo", "b")


def test_dry_run_records_would_change_prints_the_diff_and_runs_nothing():
    ctx = FakeCtx(dry_run=True)
    done = ctx.apply("s", Change("do it", (A, B), diff=lambda: "--- x\n+++ x\n", dry_message="would do it"))
    assert ctx.steps == [("s", CHANGED, "would do it")] and ctx.commands == []
    assert ctx.said == ["--- x\n+++ x", "  would run: echo a", "  would run: echo b"]
    assert not done.ran and done.changed and done.result is None


def test_the_diff_is_a_dry_run_preview_only():
    ctx = FakeCtx(verbose=2)
    ctx.apply("s", Change("do it", (A,), diff=lambda: pytest.fail("computed in a real run")))
    assert ctx.steps == [("s", CHANGED, "do it")] and ctx.said == []


def test_a_real_run_runs_each_command_with_stdin_and_records_changed():
    ctx = FakeCtx()
    done = ctx.apply("s", Change("did it", (A, B), stdin=b"data", timeout=9))
    assert ctx.commands == ["echo a", "echo b"] and ctx.stdins == [b"data", b"data"] and ctx.timeouts == [9, 9]
    assert ctx.steps == [("s", CHANGED, "did it")] and done.ran and done.changed


def test_without_a_mapping_the_runners_failure_is_recorded_and_raised():
    ctx = FakeCtx(answers=[answer(0), answer(3, "", "boom")])
    with pytest.raises(StepFailed) as e:
        ctx.apply("s", Change("did it", (A, B)))
    assert e.value.message == "s failed (exit 3)" and e.value.details == "boom"
    assert ctx.steps == [("s", FAILED, "s failed (exit 3)")]


def test_exit_mapping_message_callable_and_default():
    for code, want in ((5, "refused: why"), (6, "six"), (1, "did it: failed (exit 1)")):
        ctx = FakeCtx(answers=[answer(code, "", "line1\nwhy")])
        with pytest.raises(StepFailed) as e:
            ctx.apply("s", Change("did it", (A,), exits={5: lambda r: "refused: " + r.stderr.splitlines()[-1],
                                                          6: Failure("six", details="d")}, tail=1))
        assert e.value.message == f"s: {want}" and ctx.steps == [("s", FAILED, want)]
        assert e.value.details == ("d" if code == 6 else "why")
    ctx = FakeCtx(answers=[answer(2)])
    with pytest.raises(StepFailed) as e:
        ctx.apply("git fetch", Change("url @ ref", (A,), failed=Failure("url @ ref", raised="git fetch of ref failed")))
    assert e.value.message == "git fetch of ref failed" and ctx.steps == [("git fetch", FAILED, "url @ ref")]


def test_the_masked_tail_is_the_failures_details():
    from tasks.core.commands import Secret

    ctx = FakeCtx(answers=[answer(1, "", "token=hunter22")])
    ctx.secrets = [Secret("hunter22")]
    with pytest.raises(StepFailed) as e:
        ctx.apply("s", Change("m", (A,), failed="m: failed"))
    assert "hunter22" not in e.value.details and "***" in e.value.details


def test_outcome_records_also_under_other_step_names_and_fails_last():
    ctx = FakeCtx(answers=["x"])
    done = ctx.apply("swap", Change("m", (A,), outcome=lambda r: [Record(CHANGED, "file " + r.stdout),
                                                                  Record(SKIPPED, "no", "swap (activate)")]))
    assert ctx.steps == [("swap", CHANGED, "file x"), ("swap (activate)", SKIPPED, "no")]
    assert [r.step for r in done.records] == ["swap", "swap (activate)"]
    ctx = FakeCtx()
    with pytest.raises(StepFailed, match="^s: bad$"):
        ctx.apply("s", Change("m", (A,), outcome=lambda r: [Record(FAILED, "bad", details="d")]))
    ctx = FakeCtx(answers=[answer(1)])
    done = ctx.apply("hook", Change("m", (A,), check=False,
                                    outcome=lambda r: [Record(FAILED, f"exit {r.exited}", fatal=False)]))
    assert ctx.steps == [("hook", FAILED, "exit 1")] and not done.changed


def test_skip_is_silent_in_dry_run_and_unrecorded_in_a_real_one():
    ctx = FakeCtx(dry_run=True)
    done = ctx.apply("release log", Change(commands=(A,), dry_run=SKIP))
    assert (ctx.steps, ctx.said, ctx.commands, done.ran, done.stdout) == ([], [], [], False, "")
    ctx = FakeCtx(answers=["snapshot abc"])
    done = ctx.apply("env snapshot", Change(commands=(A,), dry_run=SKIP))
    assert ctx.steps == [] and ctx.commands == ["echo a"] and done.stdout == "snapshot abc"
    ctx = FakeCtx(answers=[answer(1)])
    with pytest.raises(StepFailed):
        ctx.apply("env snapshot", Change(commands=(A,), dry_run=SKIP))
    assert ctx.steps == []


def test_a_read_only_probe_runs_in_dry_run_too():
    for dry in (True, False):
        ctx = FakeCtx(dry_run=dry, answers=["free"])
        ctx.apply("deploy lock", Change(commands=(A,), dry_run=RUN, outcome=lambda r: [Record(OK, r.stdout)]))
        assert ctx.commands == ["echo a"] and ctx.steps == [("deploy lock", OK, "free")]


def test_a_dry_run_applies_the_probe_given_instead():
    probe = Change(commands=(B,), dry_run=RUN, outcome=lambda r: [Record(OK, "free (dry run: not taken)")])
    took = []
    change = Change(commands=lambda: took.append(1) or (A,), outcome=lambda _: [], dry_run=probe)
    ctx = FakeCtx(dry_run=True)
    ctx.apply("deploy lock", change)
    assert ctx.commands == ["echo b"] and took == [] and ctx.steps == [("deploy lock", OK, "free (dry run: not taken)")]
    ctx = FakeCtx()
    ctx.apply("deploy lock", change)
    assert ctx.commands == ["echo a"] and took == [1] and ctx.steps == []
    with pytest.raises(ValueError):
        Change(dry_run=Change())   # the change instead must be a probe


def test_commands_made_when_the_change_runs_and_announce():
    ctx = FakeCtx(dry_run=True)
    ctx.apply("upload artifact", Change("a.tgz (3 bytes)", lambda: pytest.fail("uploaded in a dry run"),
                                        dry_message="a.tgz (3 bytes) into /r", announce="said"))
    assert ctx.steps == [("upload artifact", CHANGED, "a.tgz (3 bytes) into /r")] and ctx.said == []
    ctx = FakeCtx()
    ctx.apply("upload artifact", Change("a.tgz (3 bytes)", lambda: (A,), announce="upload: now"))
    assert ctx.said == ["upload: now"] and ctx.commands == ["echo a"]
    assert ctx.steps == [("upload artifact", CHANGED, "a.tgz (3 bytes)")]


def test_shown_names_other_commands_and_dry_status():
    ctx = FakeCtx(dry_run=True)
    ctx.apply("tls", Change("m", (Cmd("sh", "-c", "retry certbot"),), shown=(Cmd("certbot"),)))
    ctx.apply("health check", Change("url (dry run: not checked)", (A,), shown=(), dry_status=OK))
    assert ctx.would_run == ["certbot"] and ctx.steps[1] == ("health check", OK, "url (dry run: not checked)")


def test_change_is_a_thin_apply():
    ctx = FakeCtx(dry_run=True)
    assert ctx.change("s", "m", A, stdin=b"x", diff="d") == ("s", CHANGED, "m")
    assert ctx.said == ["d", "  would run: echo a"]
    with pytest.raises(TypeError):
        Change("m", ("echo a",))


# -- the real HostContext's output -----------------------------------------------------------------

def _ctx(tmp_path, dry_run: bool, user="deploy"):
    import dataclasses

    from .localctx import load_inv

    buf = io.StringIO()
    inv = load_inv(tmp_path)
    host = dataclasses.replace(inv.resolve_hosts("h1")[0], user=user)
    run = Run("t", inv, [host], dry_run=dry_run, out=Output(buf))
    return HostContext(run, host), buf


def test_host_context_dry_run_output_is_the_would_run_lines_through_sudo(tmp_path):
    ctx, buf = _ctx(tmp_path, dry_run=True)
    ctx.apply("write", Change("write a file", (sh("touch {}", "/tmp/x"),), diff="+ new line\n"))
    assert buf.getvalue() == ("[h1] would change write: write a file\n[h1] + new line\n"
                              "[h1]   would run: sudo -n -H -- sh -c 'touch /tmp/x'\n")
    assert ctx.steps[0].dry_run and ctx.steps[0].status == CHANGED


def test_host_context_real_failure_is_one_failed_line(tmp_path, monkeypatch):
    from tasks.core.runner import RemoteResult

    ctx, buf = _ctx(tmp_path, dry_run=False, user="root")
    monkeypatch.setattr(ctx, "run", lambda c, **kw: RemoteResult(c.render(), "", "boom\n", 4))
    with pytest.raises(StepFailed):
        ctx.apply("units", Change("install x", (Cmd(Raw("true")),), failed="{message}: failed (exit {exit})"))
    assert buf.getvalue() == "[h1] failed       units: install x: failed (exit 4)\n"
