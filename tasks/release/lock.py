"""The per-app deploy lock on each host (kamal's design): `mkdir` is atomic,
so exactly one run gets /opt/APP/.fabship/lock; it writes holder.json (who,
pid, control host, time, action, release) so a refused run can name the
holder. Released on success, failure, Ctrl-C and SIGTERM (the context
manager's `finally`); only a holder whose id matches ours removes the dir,
so we never release someone else's lock.

A lock left by a killed run (SIGKILL, lost machine) is reported as *stale*
— its process is gone on this control host, or it is older than
deploy.lock_max_age — and is broken only by `fab unlock`, never silently.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
import uuid
from datetime import datetime, timezone

from ..config.app import Layout
from ..core.commands import Cmd, sh
from ..core.errors import LockError, StepFailed
from ..core.step import OK, RUN, Change, Record
from ..core.templates import render
from .audit import who

DEFAULT_MAX_AGE = 7200  # seconds; builds can be slow, a lock older than this is presumed dead
POLL = 1.0
ACQUIRED, HELD = "FABSHIP_LOCK_ACQUIRED", "FABSHIP_LOCK_HELD"


def _proc_start(pid: int) -> str:
    """The process's start time in clock ticks: with the pid it identifies a
    process even if the pid number is reused later."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def make_holder(action: str, release: str | None = None, task: str = "") -> dict:
    now = time.time()
    pid = os.getpid()
    return {
        "id": uuid.uuid4().hex,
        "user": who(),
        "control_host": socket.gethostname(),
        "pid": pid,
        "pid_start": _proc_start(pid),
        "time": datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "epoch": int(now),
        "action": action,
        "release": release or "",
        "task": task or action,
    }


def holder_text(holder: dict) -> str:
    return render("deploy/holder.json.j2", holder=holder)


# -- command builders ------------------------------------------------------------

def acquire_cmd(lay: Layout, holder_json: str) -> Cmd:
    """mkdir the lock; on success write holder.json (an argument: it holds no
    secret, and the held branch then never leaves unread stdin), else show the holder."""
    return Cmd("sh", "-c", "\n".join([
        "set -eu", "umask 077",
        sh("install -d -m 0750 -- {}", lay.state).render(),
        sh("if mkdir -- {} 2>/dev/null; then printf '%s\\n' \"$1\" > {}; echo {}; else echo {}; cat -- {} "
           "2>/dev/null || true; fi", lay.lock_dir, f"{lay.lock_dir}/holder.json", ACQUIRED, HELD,
           f"{lay.lock_dir}/holder.json").render(),
    ]), "sh", holder_json.strip())


def release_cmd(lay: Layout, holder_id: str) -> Cmd:
    """Remove the lock only if we hold it (our id is in holder.json)."""
    return sh("if grep -qF -- {} {} 2>/dev/null; then rm -rf -- {}; echo released; else echo not-ours; fi",
              holder_id, f"{lay.lock_dir}/holder.json", lay.lock_dir)


def read_cmd(lay: Layout) -> Cmd:
    # -e/-L, not -d: whatever sits at the lock path blocks mkdir, so it is a held lock
    return sh("if [ -e {} ] || [ -L {} ]; then echo {}; cat -- {} 2>/dev/null || true; fi",
              lay.lock_dir, lay.lock_dir, HELD, f"{lay.lock_dir}/holder.json")


def break_cmd(lay: Layout) -> Cmd:
    return Cmd("rm", "-rf", "--", lay.lock_dir)


# -- judging a holder ---------------------------------------------------------------
# holder.json is only ever written by fabship, but a half-written file, a hand
# edit or another version's format must not crash lock handling: every field is
# read defensively, and `fab unlock --force` does not depend on any of it.

def parse_holder(text: str) -> dict:
    try:
        d = json.loads(text.strip() or "{}")
        return d if isinstance(d, dict) else {}
    except (ValueError, RecursionError):
        return {}


def holder_epoch(holder: dict) -> float | None:
    """The holder's start time (Unix seconds), or None when it is missing or
    not a plausible finite number (a string, a bool, NaN, before 2000)."""
    v = holder.get("epoch") if isinstance(holder, dict) else None
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        return None
    try:
        f = float(v)
    except (ValueError, OverflowError):
        return None
    return f if math.isfinite(f) and f >= 946684800 else None


def _field(holder: dict, key: str, default: str = "?") -> str:
    """One holder field as short one-line text, whatever its JSON type."""
    v = holder.get(key) if isinstance(holder, dict) else None
    if v is None or v == "":
        return default
    return " ".join(str(v).split())[:80] or default


def _pid(holder: dict) -> int:
    v = holder.get("pid")
    if isinstance(v, bool):
        return 0
    try:
        pid = int(v or 0)
    except (TypeError, ValueError, OverflowError):
        return 0
    return pid if 0 < pid < 2 ** 22 else 0  # beyond Linux's pid_max: not a pid


def stale_reason(holder: dict, *, max_age: float = DEFAULT_MAX_AGE, now: float | None = None,
                 this_host: str | None = None) -> str | None:
    """Why a lock is stale, or None when it looks live."""
    now = time.time() if now is None else now
    if not isinstance(holder, dict) or not holder or holder.get("epoch") in (None, "", 0):
        return "the lock has no holder details (a run was killed while taking it)"
    this_host = this_host or socket.gethostname()
    pid = _pid(holder)
    if holder.get("control_host") == this_host and pid:
        if not _pid_alive(pid):
            return f"its process {pid} on {this_host} is gone"
        start = holder.get("pid_start")
        if start and _proc_start(pid) and _proc_start(pid) != str(start):
            return f"its process {pid} on {this_host} is gone (the pid was reused)"
    epoch = holder_epoch(holder)
    if epoch is None:
        if holder.get("control_host") == this_host and pid:
            return None  # its process is alive here: live, whatever its time says
        return f"its holder.json has no usable time (epoch {_field(holder, 'epoch')}): its age is unknown"
    age = now - epoch
    if max_age and age > max_age:
        return f"it is {_ago(age)} old (older than deploy.lock_max_age {int(max_age)}s)"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _ago(seconds: float) -> str:
    s = int(max(0, seconds)) if math.isfinite(seconds) else 0
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def describe(holder: dict, now: float | None = None) -> str:
    if not isinstance(holder, dict) or not holder:
        return "an unknown holder"
    now = time.time() if now is None else now
    rel = f" of {_field(holder, 'release')}" if holder.get("release") else ""
    epoch = holder_epoch(holder)
    age = f", {_ago(now - epoch)} ago" if epoch is not None else ""
    return (f"{_field(holder, 'user')} (pid {_field(holder, 'pid')} on {_field(holder, 'control_host')}): "
            f"{_field(holder, 'action')}{rel} since {_field(holder, 'time')}{age}")


def max_age_of(ctx) -> float:
    return float(ctx.inv.get("deploy.lock_max_age") or DEFAULT_MAX_AGE)


def lock_error(ctx, holder: dict, waited: float = 0) -> LockError:
    lay = Layout.from_inventory(ctx.inv)
    reason = stale_reason(holder, max_age=max_age_of(ctx))
    ctx.data["lock_refused"] = describe(holder)  # for the closing summary: why nothing ran here
    where = f"{ctx.host.name}: {lay.lock_dir}"
    if reason:
        return LockError(f"{where}: STALE deploy lock held by {describe(holder)}; {reason}. Check that no run "
                         f"is still working on this host, then break it with `fab unlock` (nothing was changed)")
    extra = f" (waited {int(waited)}s)" if waited else ""
    return LockError(f"{where}: deploy lock held by {describe(holder)}{extra}; refusing to run a second "
                     f"deploy/rollback/rotate-env/bootstrap at once (nothing was changed). Retry later or pass "
                     f"--lock-wait SECONDS")


# -- taking and releasing ------------------------------------------------------------

def acquire(ctx, action: str, release: str | None = None, wait: float | None = None) -> dict:
    """Take the lock on ctx's host or raise LockError naming the holder.
    With wait > 0, poll until the lock is free or the time is up (a stale
    lock fails at once: waiting would not free it)."""
    lay = Layout.from_inventory(ctx.inv)
    wait = float(ctx.inv.get("deploy.lock_wait") or 0) if wait is None else float(wait)
    holder = make_holder(action, release, ctx.run_.task)
    taken: list[dict] = []   # the holder, once the lock is ours

    def take() -> tuple:
        """mkdir the lock (polling while another run holds it, up to `wait`)."""
        t0 = time.monotonic()
        while True:
            r = ctx.run(acquire_cmd(lay, holder_text(holder)), what="take deploy lock")
            if r.stdout.startswith(ACQUIRED):
                ctx.data["lock_holder"] = holder
                ctx.debug(f"deploy lock taken ({lay.lock_dir})")
                taken.append(holder)
                return ()
            other = parse_holder(r.stdout[len(HELD):] if r.stdout.startswith(HELD) else "")
            waited = time.monotonic() - t0
            if not wait or waited >= wait or stale_reason(other, max_age=max_age_of(ctx)):
                raise lock_error(ctx, other, waited)
            if getattr(ctx.run_, "cancel", None) is not None and ctx.run_.cancel.is_set():   # a test's bare run
                raise lock_error(ctx, other, waited)
            ctx.say(f"waiting for the deploy lock: held by {describe(other)}")
            time.sleep(min(POLL * 2, max(0.2, wait - waited)))

    def free(r) -> list[Record]:
        if r.stdout.startswith(HELD):
            raise lock_error(ctx, parse_holder(r.stdout[len(HELD):]))
        return [Record(OK, "free (dry run: not taken)")]

    # taking it is recorded by nothing but the holder (debug); a dry run reports who holds it, takes nothing
    ctx.apply("deploy lock", Change(commands=take, outcome=lambda _: [], dry_run=Change(
        commands=(read_cmd(lay),), what="read deploy lock", dry_run=RUN, outcome=free)))
    return taken[0] if taken else {}


def release(ctx, holder: dict) -> bool:
    """Release our lock; never raises (it runs in finally blocks). A dry run
    took none (acquire gave it an empty holder)."""
    if not holder:
        return False
    from .activation import ensure_connection

    lay = Layout.from_inventory(ctx.inv)
    ensure_connection(ctx)
    for attempt in range(2):
        try:
            r = ctx.run(release_cmd(lay, holder["id"]), check=False, timeout=30, what="release deploy lock")
            ctx.data.pop("lock_holder", None)
            if "not-ours" in r.stdout:
                ctx.say(f"warning: the deploy lock in {lay.lock_dir} is no longer ours; left it alone")
            return "released" in r.stdout
        except Exception as e:  # connection lost mid-run: reconnect once
            ctx.close()
            if attempt:
                ctx.say(f"warning: could not release the deploy lock ({e}); `fab unlock` will report it as stale")
    return False


@contextlib.contextmanager
def deploy_lock(ctx, action: str, release_id: str | None = None, wait: float | None = None):
    """`with deploy_lock(ctx, "rotate-env"): ...` — raises LockError (naming
    the holder) when another run holds it; released on any exit."""
    holder = acquire(ctx, action, release_id, wait)
    try:
        yield holder
    finally:
        release(ctx, holder)


# -- fab unlock ----------------------------------------------------------------------

def unlock_host(ctx, force: bool = False) -> None:
    lay = Layout.from_inventory(ctx.inv)
    r = ctx.run(read_cmd(lay), what="read deploy lock")
    if not r.stdout.startswith(HELD):
        ctx.ok("deploy lock", "not locked")
        ctx.note = "not locked"
        return
    try:
        holder = parse_holder(r.stdout[len(HELD):])
        reason = stale_reason(holder, max_age=max_age_of(ctx))
        held_by = describe(holder)
    except Exception as e:  # --force must never depend on reading holder.json
        holder, held_by = {}, "an unreadable holder"
        reason = f"its holder.json cannot be read ({type(e).__name__})"
    if not reason and not force:
        raise StepFailed(f"deploy lock is held by a live run: {held_by}; not breaking it "
                         f"(use --force if you are sure that run is dead)")
    why = reason or "forced (--force)"
    broke = ctx.apply("break deploy lock", Change(f"was held by {held_by}; {why}", (break_cmd(lay),)))
    ctx.note = f"broke lock of {_field(holder, 'user')} ({_field(holder, 'action')})"
    if broke.ran:  # the dead run's work is written once its lock is really broken
        from .audit import audit

        audit(ctx, "unlock", _field(holder, "release", "-"), "ok",
              f"broke lock of {_field(holder, 'user')} pid {_field(holder, 'pid')} ({why})")
        record_abandoned(ctx, lay, holder, why)


def record_abandoned(ctx, lay: Layout, holder: dict, why: str) -> None:
    """The run that held the broken lock died (SIGKILL, a lost control
    machine) without saying what became of its work: write it now, so the audit
    log (and, for a deploy/rollback of a release, the release log and `fab
    releases`) show that attempt as interrupted. Nothing when its own line is
    already there (it died after recording). Best effort."""
    from ..facts.releases import is_release_id, parse_log
    from .record import record_cmd, release_entry

    action = _field(holder, "action", "")
    rid = _field(holder, "release", "")
    if action not in ("deploy", "rollback", "rotate-env", "bootstrap"):
        return
    since = _field(holder, "time", "")
    reason = f"its run (pid {_field(holder, 'pid')} on {_field(holder, 'control_host')}) died: {why}; " \
             "lock broken by fab unlock"
    try:
        if action in ("rotate-env", "bootstrap") or not is_release_id(rid):
            from .audit import audit

            audit(ctx, action, rid or None, "interrupted", reason)
            return
        r = ctx.run(sh("tail -n 500 -- {} 2>/dev/null || true", lay.release_log), check=False, timeout=30,
                    what="release log")
        if any(e.id == rid and e.action == action and e.time >= since for e in parse_log(r.stdout)):
            return
        entry = release_entry(rid, action=action, result="interrupted", previous=None, reason=reason[:300])
        ctx.run(record_cmd(ctx, lay, entry, reason[:200]), check=False, timeout=30, what="release log")
    except Exception as e:
        ctx.say(f"warning: could not record the interrupted {action}: {e}")


