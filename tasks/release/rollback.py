"""Rolling one host back to an older completed release: env snapshot restored,
the release activated (health-checked, gated), the record and audit written.
Used by `fab rollback` and by deploy's automatic fleet rollback."""
from __future__ import annotations

import time

from ..config.app import Layout
from ..facts.releases import HostState
from .activation import activate, check_cancel, ensure_connection, gather_state


def rollback_host(ctx, target: str, *, reason: str = "", restore_env: bool = True, alb=None) -> None:
    """Activate `target` on ctx's host (lock held by the caller), out of its ALB
    target group meanwhile when `alb` (a checked hooks.alb) is given. Records a
    rollback entry and an audit line. Raises ActivationFailed/StepFailed."""
    from .alb import out_of_service_if
    from .record import record, release_entry

    lay = Layout.from_inventory(ctx.inv)
    st: HostState = ctx.data.get("state") or gather_state(ctx, lay)
    cur = st.current
    ctx.data.setdefault("previous", cur)
    since = st.now or int(time.time())
    e = st.entry(target)
    env_restored = False
    try:
        check_cancel(ctx)
        if restore_env:
            env_restored = _restore_env(ctx, target) == "changed"
        check_cancel(ctx)
        with out_of_service_if(ctx, alb):
            act = activate(ctx, lay, st, target, since=since, image=e.image if e else "", previous=cur)
    except BaseException as err:
        ensure_connection(ctx)  # an interruption cut the old one: the cleanup and its log line need one
        if env_restored and cur:
            _restore_env(ctx, cur)  # the old release keeps its own env
        ev = getattr(ctx.run_, "cancel", None)
        interrupted = isinstance(err, KeyboardInterrupt) or type(err).__name__ in ("Terminated", "Cancelled") \
            or bool(ev is not None and ev.is_set())
        entry = release_entry(target, action="rollback", result="interrupted" if interrupted else "failed",
                              previous=cur, meta={}, reason=(getattr(err, "message", "") or str(err) or
                                                             type(err).__name__)[:300])
        entry.version = e.version if e else ""
        detail = f"from={cur or '-'}; {entry.extra.get('reason', '')[:200]}"
        if not record(ctx, lay, entry, detail) and interrupted:
            # Ctrl-C/SIGTERM closes the transports under in-flight commands: it can close the
            # one ensure_connection just found alive, under this write; a fresh one writes it
            # (a repeat at worst writes the line twice)
            ensure_connection(ctx)
            record(ctx, lay, entry, detail)
        ctx.data["outcome"] = "failed"  # the closing summary (deploy.print_outcome)
        raise
    entry = release_entry(target, action="rollback", result="ok", previous=cur, meta={"image": e.image if e else ""},
                          port=str(act.port or ""), reason=reason)
    entry.version = e.version if e else ""
    detail = f"from={cur or '-'}" + (f"; {reason}" if reason else "")
    # Ctrl-C/SIGTERM now closes the transport under these writes; the rollback is done,
    # so what records it is written again on a fresh connection (twice at worst)
    _done_anyway(ctx, lambda: record(ctx, lay, entry, detail))
    st.log.append(entry)
    ctx.data["outcome"] = "rolled back"
    _done_anyway(ctx, lambda: _record_env(ctx, target))
    from .hooks import run_hooks

    run_hooks(ctx, "after_rollback", target, image=e.image if e else "")  # reported; the rollback stands
    ctx.note = f"-> {target} (was {cur})"


def _done_anyway(ctx, write) -> None:
    """`write()` (True when it went) once more on a fresh connection when an
    interruption closed the transport under it."""
    if not write():
        ev = getattr(ctx.run_, "cancel", None)
        if ev is not None and ev.is_set():
            ensure_connection(ctx)
            write()


def _record_env(ctx, rid: str) -> bool:
    """The env `rid` now runs with becomes its snapshot, as after a deploy: it is
    also how rotate-env knows what the running app was started with (a file
    that differs was installed but not applied). Best effort: the rollback is done."""
    try:
        from .envsnap import snapshot_release_env

        snapshot_release_env(ctx, rid)
    except Exception as e:
        ctx.say(f"warning: could not record the env of {rid}: {e}")
        return False
    return True


def _restore_env(ctx, rid: str) -> str:
    from .envsnap import restore_release_env

    return restore_release_env(ctx, rid)
