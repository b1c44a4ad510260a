"""A release's record: the releases.jsonl entry and the audit line written
after a deploy or rollback, as one quoted command."""
from __future__ import annotations

from ..config.app import Layout
from ..core.commands import Cmd
from ..core.step import SKIP, Change
from ..core.templates import render
from ..facts.releases import Entry, HostState
from .releases import append_lines_script
from .sources import Source


def release_entry(plan_or_rid, *, action: str, result: str, previous: str | None, meta: dict | None = None,
                  src: Source | None = None, st: HostState | None = None, **extra) -> Entry:
    from datetime import datetime, timezone

    from .audit import who

    rid = plan_or_rid
    meta = dict(meta or {})
    e = Entry(id=rid, action=action, version=src.version if src else "", result=result,
              time=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), user=who(),
              previous=previous or "", source=src.kind if src else "", commit=meta.pop("commit", "") or "",
              image=meta.pop("image", "") or "")
    if st is not None and previous:
        pe = st.entry(previous)
        if pe and pe.image:
            e.previous_image = pe.image
    if src and src.ref:
        e.extra["ref"] = src.ref
    e.extra.update({k: v for k, v in meta.items() if v})
    e.extra.update({k: v for k, v in extra.items() if v})
    return e


def record_cmd(ctx, lay: Layout, entry: Entry, audit_detail: str = "") -> Cmd:
    """Release log entry + audit line (masked), one command."""
    from .audit import audit_line

    line = render("deploy/release-line.j2", entry=entry.as_dict()).strip()
    al = audit_line(entry.action, entry.id, entry.result, entry.user, audit_detail)
    return append_lines_script([lay.release_log, lay.audit_log], [ctx.mask(line), ctx.mask(al)],
                               ensure_dir=lay.state)


def record(ctx, lay: Layout, entry: Entry, audit_detail: str = "") -> bool:
    """Release log entry + audit line on the host, one round trip. Best effort;
    no step of its own (a dry run writes nothing). Returns whether it went."""
    try:
        ctx.apply("release log", Change(commands=(record_cmd(ctx, lay, entry, audit_detail),), timeout=30,
                                        dry_run=SKIP))
    except Exception as e:
        ctx.say(f"warning: could not append to {lay.release_log}: {e}")
        return False
    return True
