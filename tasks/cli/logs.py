"""`fab logs [-f] [--since T] [--lines N] [--grep RE]`: the app's logs from every
selected host, merged, each line prefixed with the host.

node/python: the unit's journal (`APP@*.service` for blue/green, `APP.service`);
docker: the running container's `docker logs`; compose: `compose logs` of the
current release; static: nginx's log files (tail). Every line passes the host-side mask
(tasks/release/hooks.py mask_filter: the env file's secret-looking values,
read on the host by root, -> ***) and the run's registered secrets. Without -f
the hosts' lines are merged by their timestamps; with -f they are printed as
they arrive until Ctrl-C (or SIGTERM), which closes every channel (the remote
reader dies with it) and exits 0.
"""
from __future__ import annotations

import heapq
import re
import threading
import time

from ..config.app import Layout
from ..core.commands import Cmd, become, quote, sh
from ..core.errors import ConfigError, ConnectError, HostKeyError
from ..release.hooks import mask_filter, mask_rule_keys

SINCE_REL = re.compile(r"(\d+)\s*(s|m|min|h|d)")
SINCE_ABS = re.compile(r"\d{4}-\d\d-\d\d(?:[ T]\d\d:\d\d(?::\d\d)?)?")
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?")


def parse_since(value) -> tuple[str, str] | None:
    """--since as (journalctl's form, docker's form); 10m, 2h, 1d, 30s or a date/time."""
    if value in (None, ""):
        return None
    text = str(value).strip()
    m = SINCE_REL.fullmatch(text)
    if m:
        n, u = int(m.group(1)), m.group(2)
        unit = {"s": "s", "m": "min", "min": "min", "h": "h", "d": "d"}[u]
        docker = f"{n * 24}h" if u == "d" else f"{n}{'m' if u in ('m', 'min') else u}"
        return f"-{n}{unit}", docker
    if SINCE_ABS.fullmatch(text):
        return text.replace("T", " "), text.replace(" ", "T")
    raise ConfigError("command line", "--since", f"expected a duration such as 10m, 2h, 1d or a date/time such as "
                                                 f"2025-01-31 12:00, got {text!r}")


def parse_lines(value) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        n = -1
    if n < 0:
        raise ConfigError("command line", "--lines", f"expected a whole number (0 or more), got {value!r}")
    return n


def check_grep(value) -> str | None:
    if value in (None, ""):
        return None
    if "\n" in str(value) or "\x00" in str(value):
        raise ConfigError("command line", "--grep", "expected one regular expression (no line breaks)")
    return str(value)


def source_cmd(inv, lay: Layout, *, follow: bool, since: tuple | None, lines: int) -> str:
    """The shell line that prints the app's log lines (timestamps first where the tool allows)."""
    if lay.kind == "static":
        # no process of its own: nginx's log files (every site's; nginx keeps them, not the journal)
        if since:
            raise ConfigError("command line", "--since", "a static app's logs are nginx's log files, which "
                                                         "tail cannot cut by time; use --lines")
        return Cmd("tail", "-n", str(lines), *(["-F"] if follow else []), "/var/log/nginx/access.log",
                   "/var/log/nginx/error.log").render()
    if lay.kind in ("node", "python"):
        unit = f"{lay.app}@*.service" if lay.blue_green else lay.unit
        args = ["journalctl", "-u", unit, "--no-pager", "--utc", "-o", "short-iso", "-n", str(lines)]
        if since:
            args.append(f"--since={since[0]}")
        if follow:
            args.append("-f")
        return Cmd(*args).render()
    if lay.kind == "docker":
        args = ["--timestamps", "--tail", str(lines)] + (["--since", since[1]] if since else []) + \
            (["--follow"] if follow else [])
        return "\n".join([
            sh("c=$(docker ps --filter label=fabship.app={} --format '{{{{.Names}}}}' | head -n 1)", lay.app).render(),
            sh('if [ -z "$c" ]; then echo "fabship: no running container of {} on this host" >&2; exit 3; fi',
               lay.app).render(),
            Cmd("docker", "logs", *args).render() + ' "$c"',
        ])
    # compose: the current release's project
    proj = lay.compose_project or lay.app
    d = lay.current
    args = ["logs", "--no-color", "--timestamps", "--tail", str(lines)] + (["--since", since[1]] if since else []) + \
        (["--follow"] if follow else [])
    return "\n".join([
        'if docker compose version >/dev/null 2>&1; then dc="docker compose"; else dc=docker-compose; fi',
        sh("cd {} && $dc -p {} -f docker-compose.yml --env-file compose.env", d, proj).render() + " " +
        " ".join(quote(a) for a in args),
    ])


def logs_cmd(inv, lay: Layout, *, follow: bool, since: tuple | None, lines: int, grep: str | None) -> Cmd:
    """source | mask [| grep]; with -f the reader runs in its own session and
    dies when the SSH channel closes (a watcher on the channel's stdin)."""
    mask = mask_filter(lay, mask_rule_keys(inv))
    if grep:
        mask = "{ " + mask + "\n} | " + Cmd("grep", "-E", "--line-buffered", "-e", grep).render() + " || true"
    body = "{ " + source_cmd(inv, lay, follow=follow, since=since, lines=lines) + "\n} 2>&1 | { " + mask + "\n}"
    return follow_wrapper(body) if follow else Cmd("sh", "-c", body)


def follow_wrapper(body: str) -> Cmd:
    """`body` in its own session, ended (the whole group) once the channel's stdin closes."""
    return Cmd("sh", "-c", "\n".join([
        "exec 3<&0",
        'setsid sh -c "$1" sh & p=$!',   # pid = its session and process group
        # the channel closed (Ctrl-C on the control machine): end the whole reader
        '( cat <&3 >/dev/null 2>&1; kill -TERM "-$p" 2>/dev/null ) >/dev/null 2>&1 &',
        "exec 3<&-",
        'wait "$p"',
    ]), "sh", body)


# -- streaming over one channel per host -----------------------------------------------------------

def stream(ctx, cmd: Cmd, on_line, stop: threading.Event) -> int | None:
    """Run cmd on ctx's host, calling on_line(text) per line of stdout/stderr as
    it arrives. Returns the exit status, or None when stopped (channel closed)."""
    conn = ctx.connect()
    text = become(cmd, ctx.host.user).render()
    ctx.commands.append(text)
    chan = conn.client.get_transport().open_session(timeout=30)
    bufs = {"out": b"", "err": b""}

    def feed(key: str, data: bytes, final: bool = False) -> None:
        bufs[key] += data
        *done, bufs[key] = bufs[key].split(b"\n")
        if final and bufs[key]:
            done.append(bufs[key])
            bufs[key] = b""
        for ln in done:
            on_line(ln.decode(errors="replace").rstrip("\r"))

    try:
        chan.exec_command(text)
        pause = 0.005
        while True:
            if stop.is_set():
                return None
            if chan.recv_ready():
                feed("out", chan.recv(65536))
                pause = 0.005
            elif chan.recv_stderr_ready():
                feed("err", chan.recv_stderr(65536))
                pause = 0.005
            elif chan.exit_status_ready():
                while chan.recv_ready():
                    feed("out", chan.recv(65536))
                while chan.recv_stderr_ready():
                    feed("err", chan.recv_stderr(65536))
                feed("out", b"", final=True)
                feed("err", b"", final=True)
                return chan.recv_exit_status()
            elif chan.closed:
                return None
            else:
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
    finally:
        chan.close()


def sort_key(line: str) -> str:
    m = STAMP.search(line[:80])
    return m.group(0) if m else ""


def merged(per_host: dict[str, list[str]]):
    """Each host's lines are in time order: merge them by their timestamps."""
    def keyed(host: str, lines: list[str]):
        return [(sort_key(ln), i, host, ln) for i, ln in enumerate(lines)]

    for _key, _i, host, ln in heapq.merge(*(keyed(h, lines) for h, lines in per_host.items())):
        yield host, ln


def logs(opts, follow=False, since=None, lines=None, grep=None) -> None:
    """`fab logs` (read-only): `opts` is the task's RunOptions (tasks/cli/base.py)."""
    from .base import Terminated, finish, open_run
    from .deploy import register_env_secrets

    since_t = parse_since(since)
    n = parse_lines(lines if lines not in (None, "") else (10 if follow else 100))
    pattern = check_grep(grep)
    run = open_run("logs", opts,
                   options={"follow": follow, "since": since, "lines": n, "grep": grep, "limit": opts.limit})
    inv = run.inv
    inv.require("app.name", "fab logs")
    inv.require("app.kind", "fab logs")
    lay = Layout.from_inventory(inv)
    register_env_secrets(run)
    cmd = logs_cmd(inv, lay, follow=follow, since=since_t, lines=n, grep=pattern)
    stop = threading.Event()
    per_host: dict[str, list[str]] = {h.name: [] for h in run.hosts}

    def one(ctx):
        on_line = (lambda ln: run.out.line(ctx.host.name, ln)) if follow else per_host[ctx.host.name].append
        try:
            code = stream(ctx, cmd, on_line, stop)
        except (HostKeyError, ConnectError) as e:
            ctx.error, ctx.status = run.mask_text(str(e)), "unreachable"
            run.out.line(ctx.host.name, f"unreachable  {ctx.error}")
            return
        except Exception as e:  # the channel died under us
            if stop.is_set():
                return
            ctx.error = run.mask_text(f"{type(e).__name__}: {e}")
            return
        if code not in (None, 0):
            ctx.error = f"the log reader exited {code}"
            tail = per_host[ctx.host.name][-3:] if not follow else []
            if tail:
                ctx.error += ": " + run.mask_text(" / ".join(tail))

    threads = [threading.Thread(target=one, args=(run.ctx(h),), daemon=True, name=f"logs-{h.name}")
               for h in run.hosts]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(0.2)
    except (KeyboardInterrupt, Terminated):
        stop.set()
        for h in run.hosts:   # closing the transports ends the remote readers too
            conn = run.ctx(h).conn
            try:
                if conn is not None and conn.client.get_transport() is not None:
                    conn.client.get_transport().close()
            except Exception:
                pass
        for t in threads:
            t.join(5)
        run.out.line("", f"stopped following {len(run.hosts)} host(s)")
    if not follow:
        for host, ln in merged(per_host):
            run.out.line(host, ln)
    for h in run.hosts:
        c = run.ctx(h)
        if c.error:
            run.out.line(h.name, f"FAILED       {c.error}")
    finish(run, summary=False)
