"""`fab maintenance on|off|status`: nginx answers 503 with a maintenance page.

The site (templates/nginx/site.conf.j2) checks a flag file,
/etc/nginx/fabship/APP.maintenance, on every request of `location /`; the
health check's path, ACME and nginx.maintenance.allow_paths are locations of
their own that still reach the app. So switching is a file, not a config
rewrite: `on` installs the page (nginx.maintenance.page, or fabship's own) and
the flag, `off` removes the flag, both through nginx_apply (only what differs,
`nginx -t`, reload, previous bytes restored on failure). A site written
before maintenance support existed is refused by name (run fab bootstrap).
Every change is one audit line on the host.
"""
from __future__ import annotations

from pathlib import Path

from ..config.app import Layout
from ..core.commands import sh
from ..core.errors import ConfigError
from ..core.templates import render
from ..facts.script import FileSpec
from ..resources.nginx import RETRY_AFTER, maintenance_flag, maintenance_page, nginx_apply

MODES = ("on", "off", "status")
NO_SUPPORT = 3  # exit status of the preflight: the site does not check the flag


def page_bytes(inv) -> bytes:
    """The maintenance page: the inventory's local file, or fabship's template."""
    m = inv.get("nginx.maintenance") or {}
    retry = int(m.get("retry_after") or RETRY_AFTER)
    value = m.get("page")
    if not value:
        return render("nginx/maintenance.html.j2", app=inv.get("app.name"),
                      minutes=max(1, round(retry / 60))).encode()
    p = Path(value).expanduser()
    if not p.is_absolute():
        src = inv.file_of("nginx.maintenance.page")
        base = Path(src).parent if src != "command line" else Path.cwd()
        p = (base / p).resolve()
    try:
        data = p.read_bytes()
    except OSError as e:
        raise inv.error("nginx.maintenance.page", f"cannot read {p}: {e.strerror or e}") from None
    if not data.strip():
        raise inv.error("nginx.maintenance.page", f"{p} is empty")
    return data


def state_cmd(lay: Layout):
    """Prints `on`/`off` and whether the site checks the flag (`support`/`nosupport`)."""
    flag = maintenance_flag(lay.app)
    sites = [f"/etc/nginx/sites-available/{lay.app}.conf", f"/etc/nginx/conf.d/{lay.app}.conf"]
    return sh("if [ -e {} ]; then echo on; else echo off; fi; "
              "if grep -qsF -- {} {} {}; then echo support; else echo nosupport; fi", flag, flag, *sites)


def files_for(lay: Layout, mode: str, page: bytes) -> list[FileSpec]:
    flag = maintenance_flag(lay.app)
    if mode == "on":
        return [FileSpec(maintenance_page(lay.app), page, mode="0644"),
                FileSpec(flag, b"fabship maintenance: remove with `fab maintenance off`\n", mode="0644")]
    return [FileSpec(flag, absent=True)]


def maintenance(mode, opts) -> None:
    """`fab maintenance on|off|status`: `opts` is the task's RunOptions (tasks/cli/base.py)."""
    from ..release.audit import audit
    from .base import finish, open_run

    if mode not in MODES:
        raise ConfigError("command line", "MODE", f"expected on, off or status, got {mode!r}")
    run = open_run("maintenance", opts.but(dry_run=False) if mode == "status" else opts,  # status reads only
                   options={"mode": mode, "limit": opts.limit})
    inv = run.inv
    inv.require("app.name", "fab maintenance")
    lay = Layout.from_inventory(inv)
    if not lay.nginx:
        raise inv.error("nginx.enabled", "maintenance mode is served by nginx, which this inventory disables")
    page = page_bytes(inv) if mode == "on" else b""

    def one(ctx):
        r = ctx.run(state_cmd(lay), check=False, timeout=30, what="maintenance state")
        words = r.stdout.split()
        now = words[0] if words else "unknown"
        if mode == "status":
            ctx.note = f"maintenance {now}" + ("" if "support" in words else " (site predates maintenance support)")
            ctx.ok("maintenance", ctx.note)
            return
        if "support" not in words:
            ctx.fail("maintenance", f"the nginx site of {lay.app} does not check {maintenance_flag(lay.app)} "
                                    "(written before maintenance support): run fab bootstrap first")
        res = nginx_apply(ctx, files_for(lay, mode, page), step=f"maintenance {mode}")
        ctx.note = f"maintenance {mode}" + ("" if res.changed or ctx.dry_run else " (already)")
        if not ctx.dry_run:
            audit(ctx, "maintenance", None, mode, "" if res.changed else "unchanged")

    run.each(one)
    finish(run)
