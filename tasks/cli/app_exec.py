"""`fab exec [--tty] -- CMD`: CMD on each selected host as the app user, in the
current release, with the env file's variables.

node/python/static/compose-less hosts: `systemd-run --uid=APPUSER
--property=EnvironmentFile=ENV --pipe --wait` (systemd reads the env file with
the unit's own rules: no value on any command line, in fabship's memory or in
a shell's argv), `cd /opt/APP/current && CMD`. docker: `docker exec` in the
running container (its env came from --env-file); compose: `compose exec` of a
service of the current release (--service, default: the first one).
Output is streamed with the host prefix and masked (host side and the run's
secrets); --tty (one host) is an interactive terminal and is not masked.
Each host's exit status is in the summary and in one audit line per host.

The CMD after `--`: invoke keeps it as the parser's remainder, and fabric's
executor would run a remainder as its own command on `-H` hosts (failing
without them): `RemainderExecutor` takes it for this task instead, for `fab`
(installed on fabric's program when the fabfile loads) and `fabship`.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..core.commands import Cmd, become, quote, sh
from ..core.errors import ConfigError
# the text after `--`: tasks/cli/remainder.py (every `fab` start loads it; this module only `fab exec`)
from .remainder import _REMAINDER, RemainderExecutor, install_executor, remainder, remainder_from  # noqa: F401

if TYPE_CHECKING:
    from ..config.app import Layout
# config.app and release.hooks are imported where they are used (they cost ~14 ms)

EXEC_TIMEOUT = 3600


# -- commands (pure) ----------------------------------------------------------------------------

def exec_cmd(inv, lay: Layout, command: str, *, tty: bool = False, service: str | None = None) -> Cmd:
    from ..release.hooks import mask_filter, mask_rule_keys, masked_pipeline, systemd_run

    env_required = bool(inv.get("env.source"))
    if lay.kind == "docker":
        flags = ["-it"] if tty else ["-i"]
        inner = "\n".join([
            sh("c=$(docker ps --filter label=fabship.app={} --format '{{{{.Names}}}}' | head -n 1)", lay.app).render(),
            sh('if [ -z "$c" ]; then echo "fabship: no running container of {} on this host" >&2; exit 3; fi',
               lay.app).render(),
            'docker exec ' + " ".join(flags) + ' "$c" sh -c ' + quote(command),
        ])
        inner = "{ " + inner + "\n}"
    elif lay.kind == "compose":
        proj = lay.compose_project or lay.app
        svc = f"svc={quote(service)}" if service else \
            'svc=$($dc -p "$proj" -f docker-compose.yml --env-file compose.env config --services | head -n 1)'
        inner = "\n".join([
            'if docker compose version >/dev/null 2>&1; then dc="docker compose"; else dc=docker-compose; fi',
            sh("proj={}; cd {}", proj, lay.current).render(), svc,
            '$dc -p "$proj" -f docker-compose.yml --env-file compose.env exec ' + ("" if tty else "-T ") +
            '"$svc" sh -c ' + quote(command),
        ])
        inner = "{ " + inner + "\n}"
    else:
        inner = systemd_run(lay, lay.current, command, env_required=env_required, timeout=EXEC_TIMEOUT,
                            pty=tty, setenv={"FABSHIP_APP": lay.app},
                            description=f"fabship exec in {lay.app}").render()
    if tty:
        return Cmd("sh", "-c", inner)
    return Cmd("sh", "-c", masked_pipeline(inner, mask_filter(lay, mask_rule_keys(inv))))


def app_exec(command: str, opts, tty=False, service=None) -> None:
    """`fab exec -- CMD`: `opts` is the task's RunOptions (tasks/cli/base.py)."""
    from ..release.audit import audit
    from .base import finish, open_run
    from .deploy import register_env_secrets

    command = (command or "").strip()
    if not command:
        raise ConfigError("command line", "CMD", "nothing to run: put the command after --, e.g. "
                                                 "fab exec -i INVENTORY -- 'bin/rails db:migrate:status'")
    run = open_run("exec", opts,
                   options={"command": command, "tty": tty, "limit": opts.limit, "service": service})
    inv = run.inv
    inv.require("app.name", "fab exec")
    inv.require("app.kind", "fab exec")
    if tty and len(run.hosts) != 1:
        raise ConfigError("command line", "--tty", f"an interactive terminal needs exactly one host; "
                                                   f"{len(run.hosts)} selected (use --limit HOST)")
    from ..config.app import Layout

    lay = Layout.from_inventory(inv)
    register_env_secrets(run)
    cmd = exec_cmd(inv, lay, command, tty=tty, service=service)
    run.extra["command"] = command

    def one(ctx):
        t0 = time.monotonic()
        if tty:
            code = _interactive(ctx, cmd)
        else:
            r = ctx.run(cmd, check=False, stream=True, timeout=EXEC_TIMEOUT + 60, what="exec")
            code = r.exited
        ctx.record("exec", "changed" if code == 0 else "failed", f"exit {code}", t0)
        ctx.note = f"exit {code}"
        ctx.data["exit"] = code
        if code != 0:
            ctx.error = f"exit {code}"
        audit(ctx, "exec", None, f"exit={code}", f"cmd={command[:300]}")

    run.each(one)
    run.extra["exit"] = {h.name: run.ctx(h).data.get("exit") for h in run.hosts}
    finish(run)


def _interactive(ctx, cmd: Cmd) -> int:
    """A pty on the host wired to this terminal (invoke puts it in raw mode)."""
    conn = ctx.connect()
    text = become(cmd, ctx.host.user).render()
    ctx.commands.append(text)
    r = conn.run(text, pty=True, warn=True, hide=False)
    return r.exited
