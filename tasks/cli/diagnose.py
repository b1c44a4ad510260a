"""`fab diagnose`: what an operator looks at when something is wrong, per
host, in one read-only round trip, with secrets masked.

Sections: app unit status and journal (or containers and their logs),
failed units, nginx -t and the tail of its error log, disk, memory, load,
listening ports, the current release, the deploy lock and the last
deploys/rollbacks from the audit log.

Masking, in three layers (the env file itself is never read):
  1. values of the env source when it is a local file (env.source type file)
     are registered as Secrets: any appearance in any output becomes ***;
  2. `KEY=VALUE`, `KEY: VALUE` and `"KEY": "VALUE"` for the env contract's
     keys and for names that look secret (PASSWORD, TOKEN, SECRET, API_KEY...)
     have their value replaced by ***;
  3. the Run's output masking (every registered Secret) on top.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..core.commands import Cmd, Secret, mask_text
from ..core.dotenv import secret_looking
from ..resources.envfile import mask_pairs  # noqa: F401  (one masking rule
from ..verify.probes import MARK, parse_facts, q


@dataclass
class Section:
    title: str
    snippet: str


def sections(inv, host, lines: int = 200) -> list[Section]:
    """The read-only commands, per section (pure: unit-tested)."""
    from ..config.app import Layout

    n = int(lines)
    out: list[Section] = []
    app = inv.get("app.name")
    lay = Layout.from_inventory(inv) if app else None
    if lay and lay.systemd:
        units = [lay.instance(p) for p in lay.ports] if lay.blue_green else [lay.unit]
        out.append(Section("systemctl status " + " ".join(units),
                           "systemctl status --no-pager -l -n 0 " + " ".join(q(u) for u in units) + " 2>&1"))
        pattern = f"{lay.app}@*" if lay.blue_green else lay.unit
        out.append(Section(f"journalctl -u {pattern} -n {n}",
                           f"journalctl --no-pager -o short-iso -n {n} -u {q(pattern)}"))
    if lay and lay.docker:
        flt = q(f"label=fabship.app={lay.app}")
        out.append(Section("docker ps (app containers)",
                           f"docker ps -a --filter {flt} --format 'table {{{{.Names}}}}\\t{{{{.Image}}}}\\t"
                           f"{{{{.Status}}}}\\t{{{{.Ports}}}}'"))
        out.append(Section(f"docker logs --tail {n} (running app containers)",
                           f"for c in $(docker ps -q --filter {flt}); do echo \"== $(docker inspect -f "
                           f"'{{{{.Name}}}}' $c)\"; docker logs --tail {n} --timestamps $c 2>&1; done"))
    out.append(Section("failed units", "systemctl list-units --failed --no-pager --plain --no-legend"))
    if inv.get("nginx") is not None and inv.get("nginx.enabled", True):
        out.append(Section("nginx -t", "nginx -t 2>&1"))
        out.append(Section("systemctl status nginx", "systemctl status --no-pager -l -n 0 nginx 2>&1"))
        out.append(Section(f"tail -n {min(n, 100)} /var/log/nginx/error.log",
                           f"tail -n {min(n, 100)} /var/log/nginx/error.log"))
    out.append(Section("df -h", "df -h -x tmpfs -x devtmpfs -x squashfs 2>/dev/null || df -h"))
    out.append(Section("free -m", "free -m"))
    out.append(Section("uptime", "uptime"))
    out.append(Section("listening ports (ss -ltnp)", "ss -ltnp"))
    if lay:
        out.append(Section("current release", f"readlink -- {q(lay.current)} || echo '(no current release)'"))
        out.append(Section("deploy lock", f"cat -- {q(lay.lock_dir + '/holder.json')} 2>/dev/null "
                                          f"|| echo '(not held)'"))
        out.append(Section("last deploys (audit log)", f"tail -n 20 -- {q(lay.audit_log)}"))
    return out


def diagnose_script(secs: list[Section]) -> str:
    """One script: each section's output base64-encoded under a marker, so
    nothing a log contains can break the framing."""
    body = ['probe() { n=$1; shift; o=$(eval "$1" 2>&1); r=$?; printf \'%s %s %s\\n\' '
            f'"{MARK}" "$n" "$r"; printf \'%s\' "$o" | base64 | tr -d \'\\n\'; printf \'\\n\'; }}']
    for i, s in enumerate(secs):
        body.append(f"probe s{i} {q(s.snippet)}")
    return "\n".join(body) + "\n"


# -- masking -----------------------------------------------------------------------------------

def sensitive_keys(inv) -> list[str]:
    c = inv.get("env.contract") or {}
    keys = list(c.get("required") or []) + list(c.get("optional") or []) + list((c.get("rules") or {}).keys())
    return sorted(set(keys))


def local_env_secrets(inv) -> tuple[list[Secret], str]:
    """Values of a local env source file that look secret (secret_looking),
    to mask wherever they appear. AWS sources are not fetched (diagnose must
    work when AWS does not)."""
    spec = inv.get("env.source") or {}
    if (spec.get("type") or "file") != "file" or not spec.get("file"):
        return [], ""
    try:
        from ..config.env_sources import from_file

        vals = from_file(inv, spec).values
    except Exception as e:  # masking is best effort; say so
        return [], f"env source not loaded for masking: {type(e).__name__}"
    rules = (inv.get("env.contract") or {}).get("rules") or {}
    return [v for k, v in vals.items() if isinstance(v, Secret) and secret_looking(k, v, rules.get(k))], ""


def render_report(host, secs: list[Section], facts: dict, keys: list[str], secrets: list[Secret]) -> str:
    head = f"===== {host.name} ({host.address}) ====="
    out = [head]
    for i, s in enumerate(secs):
        f = facts.get(f"s{i}")
        text = f.out.rstrip("\n") if f else "(no output: the section did not run)"
        text = mask_text(mask_pairs(text, keys), secrets)
        out.append(f"--- {s.title}" + (f" (exit {f.rc})" if f and f.rc not in (0,) and text.strip() == "" else ""))
        out.append(text if text.strip() else "(empty)")
    return "\n".join(out) + "\n"


def report_path(out_dir: Path, host_name: str) -> Path:
    """OUT/HOST.txt, and nowhere else: a host name (an EC2 tag) holding '/' or
    '..' must not write outside --out."""
    from ..core.errors import ConfigError

    name = f"{host_name}.txt"
    if "/" in host_name or "\0" in host_name or host_name.startswith(".") or Path(name).name != name:
        raise ConfigError("command line", "--out", f"host name {host_name!r} cannot be a file name in {out_dir}")
    return out_dir / name


def write_report(out_dir: Path, host_name: str, text: str) -> None:
    # O_NOFOLLOW: a symlink planted at OUT/HOST.txt is not followed to another file
    fd = os.open(report_path(out_dir, host_name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def diagnose(opts, lines=200, out=None) -> None:
    """`fab diagnose` (read-only): `opts` is the task's RunOptions (tasks/cli/base.py)."""
    from ..core.errors import ConfigError
    from .base import finish, open_run

    try:
        n = int(lines)
        if n < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError("command line", "--lines", f"expected a positive number of lines, got {lines!r}") from None
    out_dir = None
    if out:
        out_dir = Path(out).expanduser()
        try:
            out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise ConfigError("command line", "--out", f"cannot create {out_dir}: {e.strerror}") from None
    run = open_run("diagnose", opts, options={"lines": n, "out": out, "limit": opts.limit})
    secrets, note = local_env_secrets(run.inv)
    run.add_secrets(secrets)
    if note:
        run.out.line("", f"note: {note}")
    keys = sensitive_keys(run.inv)
    reports: dict[str, str] = {}
    if out_dir:
        for h in run.hosts:  # before connecting
            report_path(out_dir, h.name)

    def one(ctx):
        secs = sections(ctx.inv, ctx.host, n)
        # never streamed (-vv): the frames are base64, which the output masking
        # cannot see into; the report below is decoded first, then masked
        res = ctx.run(Cmd("sh", "-c", diagnose_script(secs)), check=False, stream=False, what="diagnose")
        facts = parse_facts(res.stdout)
        if not facts:
            ctx.fail("diagnose", f"the diagnose script failed (exit {res.exited})", res.tail())
        reports[ctx.host.name] = ctx.mask(render_report(ctx.host, secs, facts, keys, run.secrets))
        ctx.ok("diagnose", f"{len(secs)} sections")

    run.each(one)
    for h in run.hosts:
        text = reports.get(h.name)
        if text is None:
            continue
        run.out.line("", text.rstrip("\n"))
        if out_dir:
            write_report(out_dir, h.name, text)
    if out_dir:
        run.out.line("", f"reports written to {out_dir}/HOST.txt")
    finish(run)
