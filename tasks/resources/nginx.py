"""nginx: the app's site and upstream from templates/nginx/, and the one
safe way to change nginx config.

`nginx_apply(ctx, files)` (deploy reuses it for upstream switches) runs one
remote script that, for the files whose bytes/link/absence differ:
  1. saves the current state of each path in a backup dir (cp -a: same bytes,
     owner, mode; or a marker that it did not exist),
  2. puts the new files in place (temp file in the same dir + rename),
  3. runs `nginx -t` on the whole config,
  4. if that fails: restores every path byte for byte, does NOT reload (nginx
     keeps serving the old config) and exits non-zero with nginx -t's message;
  5. else reloads nginx (or starts it when it is not running).
It also makes sure nginx is enabled and running when nothing changed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..config.app import ACME_ROOT, UPSTREAM_DIR
from ..config.schema_types import parse_size
from ..core.commands import Cmd, script, sh
from ..core.step import CHANGED, DEFAULT_FAILED, OK, Change, Failure, Record
from ..core.templates import render, sha256, unified_diff
from ..facts.script import (
    FileSpec,
    put_files_lines,
    restore_lines,
    stage_lines,
    tar_payload,
)

NGINX_TEST_FAILED = 6


def upstream_name(app: str) -> str:
    return f"{app}_backend"


def upstream_path(app: str) -> str:
    return f"{UPSTREAM_DIR}/{app}-upstream.conf"


def nginx_size(value) -> str:
    """'10M', '512MiB', 1048576 -> nginx's size syntax (10m, 512m, 1m)."""
    n = parse_size(value)
    for suffix, div in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if n and n % div == 0:
            return f"{n // div}{suffix}"
    return str(n)


def render_upstream(app: str, ports: list[int]) -> str:
    return render("nginx/upstream.conf.j2", upstream=upstream_name(app), ports=list(ports))


# A URL path nginx can take as a location without quoting: no spaces, quotes, ';', braces, '$', '#'.
LOCATION_PATH = re.compile(r"/[A-Za-z0-9._~!*+,=:@%/-]*")
RETRY_AFTER = 300


def maintenance_flag(app: str) -> str:
    """While this file exists the site answers 503 (fab maintenance on|off)."""
    return f"{UPSTREAM_DIR}/{app}.maintenance"


def maintenance_page(app: str) -> str:
    return f"{UPSTREAM_DIR}/{app}-maintenance.html"


def health_location(path: str | None) -> str | None:
    """The health check's path as an exact location (query string dropped), or
    None when nginx could not take it as it is (then it is not excepted)."""
    p = (path or "").split("?", 1)[0]
    return p if p and p != "/" and LOCATION_PATH.fullmatch(p) else None


def maintenance_spec(app: str, health_path: str | None = "/health", maintenance: dict | None = None) -> dict:
    m = maintenance or {}
    exact = [p for p in [health_location(health_path)] if p]
    prefix = [p for p in (m.get("allow_paths") or []) if p not in exact]
    bad = [p for p in prefix if not LOCATION_PATH.fullmatch(p) or p == "/"]
    if bad:
        raise ValueError(f"nginx.maintenance.allow_paths: {bad[0]!r} cannot be an nginx location")
    return {"flag": maintenance_flag(app), "dir": UPSTREAM_DIR, "page": maintenance_page(app).rsplit("/", 1)[1],
            "retry_after": int(m.get("retry_after") or RETRY_AFTER), "exact": exact, "prefix": prefix}


def render_site(*, app: str, server_names: list[str], client_max_body_size="10M", websocket: bool = True,
                proxy_read_timeout: int = 60, tls: dict | None = None, proxy: bool = True,
                static_root: str = "", ipv6: bool = True, health_path: str | None = "/health",
                maintenance: dict | None = None) -> str:
    names = [n for n in server_names if n] or ["_"]
    return render(
        "nginx/site.conf.j2", maint=maintenance_spec(app, health_path, maintenance),
        proxy=proxy, upstream=upstream_name(app), upstream_file=upstream_path(app),
        conn_var="fabship_" + re.sub(r"[^A-Za-z0-9_]", "_", app) + "_connection",
        websocket=websocket, client_max_body_size=nginx_size(client_max_body_size),
        acme_root=ACME_ROOT, proxy_read_timeout=proxy_read_timeout, tls=tls,
        server_names=names, default_server=names == ["_"], static_root=static_root, ipv6=ipv6,
    )


# -- deciding what differs --------------------------------------------------------------

def file_differs(facts, f: FileSpec) -> bool:
    """Does the host's path differ from the wanted FileSpec (per facts)?"""
    st = facts.stats.get(f.path)
    if f.kind == "absent":
        return st is not None
    if f.kind == "link":
        return facts.links.get(f.path) != f.link
    if st is None or not st.is_file:
        return True
    return facts.sha256.get(f.path) != sha256(f.content or b"") or not st.matches(f.owner, f.group, f.mode)


def describe(f: FileSpec) -> str:
    return {"absent": f"remove {f.path}", "link": f"link {f.path} -> {f.link}"}.get(f.kind, f"write {f.path}")


def diff_for(facts, files: list[FileSpec]) -> str:
    out = []
    for f in files:
        if f.kind == "file":
            out.append(unified_diff(facts.contents.get(f.path), (f.content or b"").decode(), f.path))
        else:
            out.append(f"# {describe(f)}\n")
    return "".join(out)


# -- the remote script ------------------------------------------------------------------

def _differs_test(f: FileSpec) -> str:
    p = sh("{}", f.path).render()
    if f.kind == "absent":
        return f"[ -e {p} ] || [ -L {p} ]"
    if f.kind == "link":
        return sh('[ "$(readlink -- {} 2>/dev/null)" != {} ]', f.path, f.link).render()
    mode = format(int(f.mode, 8), "o")
    want = sha256(f.content or b"")
    return (sh('[ "$(sha256sum < {} 2>/dev/null | cut -d" " -f1)" != {} ]', f.path, want).render() + " || "
            + sh('[ "$(stat -c %U:%G:%a -- {} 2>/dev/null)" != {} ]', f.path,
                 f"{f.owner}:{f.group}:{mode}").render())


def nginx_apply_cmd(files: list[FileSpec], service: str = "nginx", backup_parent: str = "/etc/nginx") -> Cmd:
    """See the module doc. Prints `wrote PATH` / `removed PATH` / `linked PATH`,
    `reloaded` or `started`; on nginx -t failure prints its output on stderr
    and exits NGINX_TEST_FAILED after restoring the previous files."""
    L = stage_lines() + [
        # outside every include glob of nginx.conf, same filesystem as the config
        sh("backup=$(mktemp -d {}/.fabship-backup.XXXXXX)", backup_parent).render(),
        "trap 'rm -rf \"$stage\" \"$backup\"' EXIT",
        "n=0",
    ]
    for i, f in enumerate(files):
        L.append(f"if {_differs_test(f)}; then c{i}=1; n=$((n + 1)); else c{i}=0; fi")
    for i, f in enumerate(files):
        body = " ; ".join(put_files_lines([f], backup="backup", offset=i))
        verb = {"absent": "removed", "link": "linked"}.get(f.kind, "wrote")
        L.append(f'if [ "$c{i}" = 1 ]; then {body} ; echo ' + sh("{} {}", verb, f.path).render() + "; fi")
    restore = []
    for i, f in enumerate(files):
        restore.append(f'if [ "$c{i}" = 1 ]; then ' + " ; ".join(restore_lines([f], "backup", offset=i)) + "; fi")
    svc = sh("{}", service).render()
    L += [
        'if [ "$n" -gt 0 ]; then',
        '  if ! out=$(nginx -t 2>&1); then',
        *["    " + r for r in restore],
        '    echo "$out" >&2; exit %d' % NGINX_TEST_FAILED,
        "  fi",
        f"  if systemctl is-active -q {svc}; then",
        f'    if ! out=$(systemctl reload {svc} 2>&1); then',
        *["      " + r for r in restore],
        '      echo "$out" >&2; exit 7; fi; echo reloaded',
        f"  else systemctl start {svc} && echo started; fi",
        "fi",
        f"systemctl is-enabled -q {svc} 2>/dev/null || {{ systemctl enable -q {svc} && echo enabled; }}",
        f"systemctl is-active -q {svc} || {{ systemctl start {svc} && echo started; }}",
    ]
    return script(L)


@dataclass
class ApplyResult:
    changed: bool
    lines: list


def nginx_apply(ctx, files: list[FileSpec], *, facts=None, step: str = "nginx") -> ApplyResult:
    """Apply nginx config files safely (see the module doc). With `facts`, no
    command runs when every file already matches and nginx is enabled and
    running. Raises StepFailed (via ctx.fail) when nginx -t rejects the config."""
    if facts is not None:
        stale = [f for f in files if file_differs(facts, f)]
        running = facts.unit_enabled("nginx.service") and facts.unit_active("nginx.service")
        if not stale and running:
            ctx.ok(step, "site and upstream up to date; nginx running")
            return ApplyResult(False, [])
        msg = "; ".join(describe(f) for f in stale) or "enable and start nginx"
        diff = lambda: diff_for(facts, stale)  # noqa: E731  the dry run's preview (old bytes: dry-run facts)
    else:
        msg, diff = "; ".join(describe(f) for f in files), ""
    done = ctx.apply(step, Change(
        msg, (nginx_apply_cmd(files),), stdin=tar_payload(files), diff=diff,
        dry_message=msg + (" (then nginx -t, reload)" if "write" in msg or "remove" in msg else ""),
        exits={NGINX_TEST_FAILED: _nginx_test_failure}, failed=DEFAULT_FAILED, tail=40, outcome=_nginx_outcome))
    return ApplyResult(done.changed, applied_lines(done.stdout))


def _nginx_outcome(res) -> list[Record]:
    lines = applied_lines(res.stdout)
    return [Record(CHANGED, "; ".join(lines))] if lines else [Record(OK, "up to date")]


def applied_lines(stdout: str) -> list[str]:
    """What nginx_apply_cmd printed it did (wrote/removed/linked PATH, reloaded...)."""
    return [ln for ln in stdout.splitlines() if ln.split(" ", 1)[0] in
            ("wrote", "removed", "linked", "reloaded", "started", "enabled")]


def _nginx_test_failure(res) -> Failure:
    first = next((ln for ln in res.stderr.splitlines() if "emerg" in ln or "error" in ln.lower()),
                 res.stderr.strip().splitlines()[0] if res.stderr.strip() else "")
    # "2026/11/22 00:40:16 [emerg] 5916#5916: unknown directive ..." -> "[emerg] unknown directive ..."
    first = re.sub(r"^(nginx: )?\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (\[\w+\]) \d+#\d+: ", r"\2 ", first.strip())
    return Failure(f"nginx -t rejected the new config; previous files restored, nginx still serving "
                   f"the old config: {first.strip()}", res.stderr.strip())
