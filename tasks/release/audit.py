"""One audit line per deploy, rollback, rotate-env and unlock, appended on
the host (/opt/APP/.fabship/audit.log): time, user, action, release, result.

The line is a quoted argument of one remote command (it holds no secret
values) and is rendered from templates/deploy/audit-line.j2. Never put a secret in
`detail`: the line is also masked with the run's registered secrets.
"""
from __future__ import annotations

import getpass
import os
import re
import socket
from datetime import datetime, timezone

from ..config.app import Layout
from ..core.commands import Cmd
from ..core.step import SKIP, Change
from ..core.templates import render
from .releases import append_lines_script


def audit_line(action: str, release: str | None, result: str, user: str, detail: str = "",
               now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    clean = lambda s: re.sub(r"\s+", " ", str(s or "")).strip()  # one line, whatever the input
    return render("deploy/audit-line.j2", time=now.strftime("%Y-%m-%dT%H:%M:%SZ"), user=clean(user) or "-",
                  action=clean(action), release=clean(release) or "-", result=clean(result),
                  detail=clean(detail)).rstrip("\n")


def audit_cmd(lay: Layout, line: str) -> Cmd:
    return append_lines_script([lay.audit_log], [line], ensure_dir=lay.state)


def audit(ctx, action: str, release: str | None, result: str, detail: str = "") -> None:
    """Append one audit line on ctx's host. Best effort: an audit failure is
    reported, it does not undo the action it describes. Nothing in dry-run
    (no step of its own)."""
    lay = Layout.from_inventory(ctx.inv)
    line = ctx.mask(audit_line(action, release, result, who(), detail))

    def warn(r) -> list:
        if not r.ok:
            ctx.say(f"warning: could not append to {lay.audit_log}: {ctx.mask(r.tail(2))}")
        return []

    try:
        ctx.apply("audit", Change(commands=(audit_cmd(lay, line),), check=False, timeout=30, dry_run=SKIP,
                                  outcome=warn))
    except Exception as e:
        ctx.say(f"warning: could not append to {lay.audit_log}: {e}")


def who() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = os.environ.get("USER") or "unknown"
    return f"{user}@{socket.gethostname()}"
