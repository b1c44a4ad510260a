"""`fab unlock`: break a stale deploy lock (a live one only with --force)."""
from __future__ import annotations

from ..release.lock import unlock_host


def unlock(opts, force=False) -> None:
    """`fab unlock`: `opts` is the task's RunOptions (tasks/cli/base.py)."""
    from .base import finish, open_run

    run = open_run("unlock", opts, options={"force": force})
    _require_app(run.inv)
    run.each(lambda ctx: unlock_host(ctx, force))
    finish(run)


def _require_app(inv) -> None:
    if not inv.get("app.name"):
        raise inv.error("app.name", "required: the lock lives under the app's root (/opt/APP/.fabship/lock)")
