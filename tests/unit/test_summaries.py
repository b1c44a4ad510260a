"""The closing `releases now serving:` lines of deploy and rollback (issue 11):
the release a host serves, and what the run did there, naming the release
it concerned."""
from types import SimpleNamespace

import pytest

from tasks.cli.deploy import outcome_line

A, B, C = "20250101T000000Z-v1", "20250102T000000Z-v2", "20250103T000000Z-v3"


def ctx(name="h1", status=None, error=None, note="", **data):
    return SimpleNamespace(host=SimpleNamespace(name=name), status=status, error=error, note=note, data=data)


@pytest.mark.parametrize("c,serving,rid,action,line", [
    (ctx(outcome="deployed", previous=B), C, C, "deploy", f"h1 -> {C}  [deployed] (was {B})"),
    (ctx(outcome="deployed", previous=None), C, C, "deploy", f"h1 -> {C}  [deployed] (first release)"),
    (ctx(outcome="failed", previous=B, error="release C failed its health check"), B, C, "deploy",
     f"h1 -> {B}  [still serving; deploy of {C} failed]"),
    (ctx(outcome="failed", previous=None, error="build failed"), "", C, "deploy",
     f"h1 -> (nothing deployed)  [deploy of {C} failed]"),
    (ctx(outcome="interrupted", previous=B), B, C, "deploy", f"h1 -> {B}  [still serving; deploy of {C} interrupted]"),
    (ctx(outcome="failed", previous=B, switched=True, note=f"fleet rollback to {B} FAILED: still on the new release"),
     B, C, "deploy", f"h1 -> {C}  [deploy of {C} failed after the switch: fleet rollback to {B} FAILED: still on "
                     "the new release]"),
    (ctx(outcome="rolled back", previous=B), B, C, "deploy", f"h1 -> {B}  [rolled back] (the deploy of {C} was undone)"),
    (ctx(status="unreachable", error="connection refused"), None, C, "deploy", "h1 -> unknown  [unreachable]"),
    (ctx(error="deploy lock held by ...", lock_refused="ann@ctl (pid 7 on ctl): deploy"), B, C, "deploy",
     f"h1 -> {B}  [still serving; not deployed: its deploy lock is held by ann@ctl (pid 7 on ctl): deploy]"),
    (ctx(status="skipped", note="lock not taken: h1's lock is held by another run"), B, C, "deploy",
     f"h1 -> {B}  [still serving; not deployed: lock not taken: h1's lock is held by another run]"),
    (ctx(status="skipped", note="not deployed (deploy stopped)"), B, C, "deploy",
     f"h1 -> {B}  [still serving; not deployed: deploy stopped]"),
    # fab rollback
    (ctx(outcome="rolled back", previous=B, target=A), A, None, "rollback", f"h1 -> {A}  [rolled back from {B}]"),
    (ctx(outcome="failed", previous=B, target=A), B, None, "rollback",
     f"h1 -> {B}  [still serving; rollback to {A} failed]"),
    (ctx(error="cannot roll back: nothing is deployed"), "", None, "rollback",
     "h1 -> (nothing deployed)  [not rolled back: nothing is deployed]"),
    (ctx(status="skipped", note="not rolled back (other hosts cannot)"), B, None, "rollback",
     f"h1 -> {B}  [still serving; not rolled back: other hosts cannot]"),
], ids=lambda x: x if isinstance(x, str) and "->" in x else "")
def test_outcome_line(c, serving, rid, action, line):
    assert outcome_line(c, serving, rid, action) == line


def test_lock_refusal_names_the_holder_for_the_summary(tmp_path):
    from tasks.core.errors import LockError
    from tasks.release.lock import acquire

    from .localctx import LocalCtx, load_inv

    inv = load_inv(tmp_path)
    acquire(LocalCtx(inv), "deploy", "r1")
    other = LocalCtx(inv)
    with pytest.raises(LockError):
        acquire(other, "deploy")
    assert "deploy of r1" in other.data["lock_refused"]
