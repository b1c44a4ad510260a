"""`fab rollback [--to RELEASE]` and `fab releases`.

Rollback is a re-point (capistrano): activate an older completed release
that still exists on the host, the same way deploy activates a new one
(blue/green: start it beside the current one, health-check, switch, stop
the old; restart strategy: switch and restart). The env file the target
release last ran healthy with is restored first (tasks/cli/rotate_env.py), so
code and env go back together.

Before anything changes, every target host is locked and checked: with
--to, the release must exist (and have completed) on every host; without
it, every host must have a previous completed release. Otherwise the
rollback refuses and names the hosts.
"""
from __future__ import annotations

from ..config.app import Layout
from ..core.errors import ConfigError
from ..core.runner import print_table
from ..facts.releases import Entry, HostState, deployed_ok, is_release_id
from ..release.activation import gather_state
from ..release.releases import rollback_target
from ..release.rollback import rollback_host


def choose_target(st: HostState, to: str | None) -> tuple[str | None, str]:
    """(target, problem): the release to roll back to, or why there is none."""
    if to:
        if to not in st.releases:
            return None, f"release {to} does not exist on this host"
        if to not in deployed_ok(st.log):
            return None, f"release {to} never completed a deploy here (failed or unfinished)"
        if to == st.current:
            # a rerun of a rollback that was cut after its switch: already done
            return None, ""
        return to, ""
    if not st.current:
        return None, "nothing is deployed"
    t = rollback_target(st.log, st.releases, st.current)
    if not t:
        return None, f"no completed release older than the current one ({st.current}) exists: nothing to roll back to"
    return t, ""


def rollback(opts, to=None) -> None:
    """`fab rollback`: `opts` is the task's RunOptions (tasks/cli/base.py)."""
    from .base import finish, open_run
    from .deploy import (
        Fleet,
        print_outcome,
        register_env_secrets,
        validate_app,
    )

    if to is not None and not is_release_id(to):
        raise ConfigError("command line", "--to", f"{to!r} is not a release id (like 20250101T120000Z-v2; "
                                                  "see `fab releases`)")
    inv = opts.load()
    if not inv.get("app"):
        raise ConfigError(inv.path, "app", "required for rollback: the app section (name, kind, port)")
    lay = Layout.from_inventory(inv)
    validate_app(inv, lay, "rollback")
    hosts = inv.resolve_hosts(opts.limit)
    alb = None
    if inv.get("hooks.alb"):  # checked before connecting, as deploy does
        from ..release.alb import preflight

        alb = preflight(inv, hosts)
    run = open_run("rollback", opts, inv=inv, hosts=hosts, options={"to": to, "limit": opts.limit, "gate": opts.gate})
    register_env_secrets(run)
    from ..release.hooks import all_hooks
    from ..release.notify import Notifier

    notifier = Notifier(run, "rollback", to)
    run.extra["hooks"] = all_hooks(inv)
    fleet = Fleet(run, None, action="rollback")
    fleet.lock_wait = opts.lock_wait
    notifier.start()
    try:
        ready = fleet.lock_all(hosts, to)
        if ready and not fleet.interrupted:
            targets, problems, done = {}, [], []
            for h in ready:
                t, why = choose_target(run.ctx(h).data["state"], to)
                if t:
                    targets[h.name] = t
                elif why:
                    problems.append((h, why))
                else:
                    done.append(h)
            for h in done:
                c = run.ctx(h)
                c.ok("rollback", f"{to} is already current: nothing to do")
                c.note = f"already on {to}"
                c.data["target"] = to
            if problems:  # refuse before changing anything
                for h, why in problems:
                    run.ctx(h).error = f"cannot roll back: {why}"
                for h in ready:
                    if h.name in targets:
                        run.ctx(h).status = "skipped"
                        run.ctx(h).note = "not rolled back (other hosts cannot)"
                run.out.line("", "rollback refused, nothing changed: " +
                             "; ".join(f"{h.name}: {why}" for h, why in problems))
            elif len(ready) < len(hosts):
                for h in ready:
                    run.ctx(h).status = "skipped"
                    run.ctx(h).note = "not rolled back (other hosts failed their checks)"
            elif todo := [h for h in ready if h.name in targets]:
                for h in todo:
                    run.ctx(h).data["target"] = targets[h.name]
                run.out.line("", "rollback: " + ", ".join(f"{h.name} {run.ctx(h).data['state'].current} -> "
                                                          f"{targets[h.name]}" for h in todo))
                fleet.parallel(lambda ctx: rollback_host(ctx, ctx.data["target"], alb=alb), todo)
    finally:
        fleet.unlock_all()
    print_outcome(run, lay, None, action="rollback")  # the gate ran inside activation (tasks/release/activation.py)
    if not to:  # the target each host went back to
        notifier.release = ", ".join(sorted({t for t in (run.ctx(h).data.get("target") for h in hosts) if t}))
    notifier.finish(interrupted=bool(fleet.interrupted))
    if fleet.interrupted:
        run.finish()
        raise fleet.interrupted
    finish(run, summary=False)


# -- fab releases ------------------------------------------------------------------------------

def release_rows(st: HostState) -> list[list[str]]:
    """One row per release dir on the host, newest first, with what the
    release log says about it; plus the failed attempts since the current
    release was deployed even when their dir is gone (what an operator
    looks for after a failed deploy). Pruned good releases are not listed."""
    last: dict[str, Entry] = {}
    deployed: dict[str, Entry] = {}
    for e in st.log:
        last[e.id] = e
        if e.action == "deploy":
            deployed[e.id] = e
    recent_failures = {e.id for e in st.log if e.action == "deploy" and e.result != "ok"
                       and (not st.current or e.id > st.current)}
    ids = sorted(set(st.releases) | recent_failures, reverse=True)
    rows = []
    for rid in ids:
        d = deployed.get(rid)
        e = last.get(rid)
        mark = "*" if rid == st.current else ""
        result = (d.result if d else "no record")
        if e and e.action == "rollback":
            result += f", rollback {e.result}"
        if rid not in st.releases:
            result += " (dir removed)"
        what = (d.commit[:12] if d and d.commit else d.image if d and d.image else "") if d else ""
        rows.append([mark, rid, d.version if d else "", what, (d.time if d else ""), (d.user if d else ""), result])
    return rows


def releases(opts, max_rows: int = 0) -> None:
    """`fab releases` (read-only): `opts` is the task's RunOptions (tasks/cli/base.py)."""
    from ..release.lock import describe, stale_reason
    from .base import finish, open_run

    run = open_run("releases", opts)
    if not run.inv.get("app.name"):
        raise run.inv.error("app.name", "required: releases live under the app's root")
    lay = Layout.from_inventory(run.inv)

    def one(ctx):
        st = gather_state(ctx, lay)
        ctx.note = f"current {st.current or '(none)'}; {len(st.releases)} release(s)"

    run.each(one)
    for h in run.hosts:
        c = run.ctx(h)
        st = c.data.get("state")
        if st is None:
            continue
        rows = release_rows(st)
        if max_rows:
            rows = rows[:max_rows]
        extra = ""
        if lay.blue_green and st.upstream_port:
            extra = f"; nginx -> :{st.upstream_port}"
        title = f"{h.name} ({h.address}): current {st.current or '(nothing deployed)'}{extra}"
        if st.lock is not None:
            reason = stale_reason(st.lock, max_age=float(run.inv.get("deploy.lock_max_age") or 7200))
            title += f"\n  LOCKED by {describe(st.lock)}" + (f" — STALE: {reason}; run `fab unlock`" if reason else "")
        if rows:
            print_table(["", "RELEASE", "VERSION", "COMMIT/IMAGE", "TIME", "WHO", "RESULT"], rows, run.out, title=title)
        else:
            run.out.line("", title + "\n  (no releases)")
    finish(run, summary=bool(run.failed_hosts()))
