"""`fab unlock`: break a stale deploy lock (a live one only with --force)."""
from __future__ import annotations

from ..release.lock import unlock_host


def unlock(inventory=None, set=(), limit=None, parallel=10, accept_new_host_keys=False, verbose=0,
           force=False, dry_run=False) -> None:
    from .base import finish, open_run

    run = open_run("unlock", inventory, set, limit, parallel, dry_run, verbose, accept_new_host_keys,
                   options={"force": force})
    _require_app(run.inv)
    run.each(lambda ctx: unlock_host(ctx, force))
    finish(run)


def _require_app(inv) -> None:
    if not inv.get("app.name"):
        raise inv.error("app.name", "required: the lock lives under the app's root (/opt/APP/.fabship/lock)")
