"""HTTP health checks that run ON the host: one remote shell loop with curl
(retries, interval, timeout from the inventory's `health` section), so a
check costs one round trip however many attempts it takes.

Headers may carry tokens: they travel on stdin into a private temp file
(`curl -H @file`), never on the command line. When `dead_if` is given (a
shell condition true once the process has died, e.g. the unit entered
auto-restart), the loop stops early instead of waiting out every retry.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..core.commands import Cmd, sh
from ..core.step import OK, Change, Record

MARK = "FABSHIP_HEALTH"
BODY_BYTES = 500
QUICK = 0.1  # seconds between polls while the port refuses connections


def quick_polls(interval: float) -> int:
    """How many QUICK polls make one interval (1: no quick polling)."""
    return max(1, int(round(interval / QUICK)))


@dataclass
class HealthSpec:
    path: str = "/health"
    scheme: str = "http"
    method: str = "GET"
    headers: dict | None = None
    expect_status: int = 200
    body_contains: str | None = None
    timeout: float = 5
    interval: float = 1
    retries: int = 30
    port: int | None = None

    @classmethod
    def from_inventory(cls, inv, **over) -> "HealthSpec":
        h = dict(inv.get("health") or {})
        spec = cls(**{k: v for k, v in h.items() if k in cls.__dataclass_fields__})
        for k, v in over.items():
            if v is not None:
                setattr(spec, k, v)
        return spec

    def budget(self) -> float:
        """Worst-case seconds the loop can take (for the command timeout)."""
        return self.retries * (self.timeout + self.interval) + 30


@dataclass
class HealthResult:
    ok: bool
    status: int | None = None       # last HTTP status (None: no answer)
    body_snippet: str = ""          # first 500 bytes of the last body
    error: str = ""                 # curl's error, or why the loop stopped
    attempts: int = 0
    url: str = ""
    died: bool = False              # the process died while we waited

    def describe(self) -> str:
        got = f"HTTP {self.status}" if self.status else (self.error or "no answer")
        what = "healthy" if self.ok else ("process died" if self.died else "unhealthy")
        return f"{self.url}: {what} after {self.attempts} attempt(s): {got}"

    def report(self) -> str:
        """Multi-line text for a failure report (body snippet included)."""
        lines = [f"last health response: {self.describe()}"]
        if self.error and self.status:
            lines.append(f"  error: {self.error}")
        if self.body_snippet:
            lines.append("  body: " + self.body_snippet.replace("\n", "\n        "))
        return "\n".join(lines)


def url_for(spec: HealthSpec, port: int) -> str:
    return f"{spec.scheme}://127.0.0.1:{port}{spec.path}"


TMP_TEMPLATE = "/tmp/fabship-health.XXXXXX"   # named: a leftover says whose it is


def _fmt(x: float) -> str:
    return f"{x:g}"


def health_cmd(spec: HealthSpec, port: int, *, dead_if: str | None = None, attempts: int | None = None) -> Cmd:
    """The remote loop. Prints `FABSHIP_HEALTH <ok|fail|dead> <attempt> <code>`,
    then curl's last error line, then the body's first 500 bytes."""
    retries = attempts or spec.retries
    curl = ["curl", "-sS", "-o", '"$t/b"', "-w", "'%{http_code}'", "-m", _fmt(spec.timeout)]
    if spec.scheme == "https":
        curl.append("-k")  # 127.0.0.1 never matches the certificate's name
    if spec.method == "HEAD":
        curl.append("--head")
    elif spec.method == "POST":
        curl += ["-X", "POST", "--data-binary", "''"]
    if spec.headers:
        curl += ["-H", '@"$t/h"']
    curl.append(sh("{}", url_for(spec, port)).render())
    good = sh('[ "$code" = {} ]', str(spec.expect_status)).render()
    if spec.body_contains:
        good += " && " + sh('grep -qF -- {} "$t/b"', spec.body_contains).render()
    lines = [
        "set -u", "umask 077",
        # a fab killed mid-check closes the channel: the final echo then dies of SIGPIPE, which
        # skips an EXIT trap unless the signal is trapped to an exit (no /tmp leftover)
        't=; trap \'rm -rf -- ${t:+"$t"}\' EXIT; trap "exit 129" HUP INT TERM PIPE',
        f"t=$(mktemp -d {TMP_TEMPLATE})",
        ': > "$t/b"; : > "$t/e"',
        'cat > "$t/h"' if spec.headers else "exec 0</dev/null",
        # While nothing listens yet (curl exit 7: refused) poll every QUICK s, so a
        # fresh process is seen as soon as it listens; N quick polls use up one
        # interval, so the whole loop still lasts at most retries x interval.
        f"i=0; q=0; n={quick_polls(spec.interval)}; code=000; state=fail",
        f"while [ $i -lt {int(retries)} ]; do",
        "  code=$(" + " ".join(curl) + ' 2>"$t/e"); rc=$?',
        f"  if {good}; then i=$((i+1)); state=ok; break; fi",
    ]
    if dead_if:
        lines.append(f"  if {dead_if}; then i=$((i+1)); state=dead; break; fi")
    lines += [
        f'  if [ "$rc" = 7 ] && [ $q -lt $((n-1)) ]; then q=$((q+1)); sleep {_fmt(QUICK)}; continue; fi',
        "  q=0; i=$((i+1))",
        f"  [ $i -lt {int(retries)} ] && [ \"$rc\" != 7 ] && sleep {_fmt(spec.interval)}",
        f"  [ $i -lt {int(retries)} ] && [ \"$rc\" = 7 ] && sleep {_fmt(QUICK)}",
        "done",
        f'echo "{MARK} $state $i $code"',
        'printf "%s\\n" "$(head -n 1 "$t/e")"',
        f'head -c {BODY_BYTES} "$t/b"',
        '[ "$state" = ok ]',
    ]
    return Cmd("sh", "-c", "\n".join(lines))


def headers_stdin(spec: HealthSpec) -> str | None:
    if not spec.headers:
        return None
    return "".join(f"{k}: {v}\n" for k, v in spec.headers.items())


def parse_health(stdout: str, url: str = "") -> HealthResult:
    lines = stdout.split("\n")
    idx = next((i for i, ln in enumerate(lines) if ln.startswith(MARK + " ")), None)
    if idx is None:
        return HealthResult(False, error=f"health check did not run: {stdout.strip()[:200]}", url=url)
    bits = lines[idx].split()
    state, attempts, code = bits[1], int(bits[2]), bits[3] if len(bits) > 3 else "000"
    err = lines[idx + 1].strip() if len(lines) > idx + 1 else ""
    body = "\n".join(lines[idx + 2:])[:BODY_BYTES]
    status = int(code) if code.isdigit() and code != "000" else None
    if state == "dead" and not err:
        err = "the process exited while being health-checked"
    return HealthResult(ok=state == "ok", status=status, body_snippet=body.strip(), error=err,
                        attempts=attempts, url=url, died=state == "dead")


def unit_dead(unit: str) -> str:
    """Shell condition: the systemd unit has crashed (failed, or waiting to restart)."""
    return sh('{{ s=$(systemctl show -p ActiveState,SubState --value {} | tr "\\n" " "); '
              'case "$s" in failed*|*auto-restart*|inactive*) true;; *) false;; esac; }}', unit).render()


def container_dead(name: str) -> str:
    return sh('[ "$(docker inspect -f "{{{{.State.Running}}}}" {} 2>/dev/null)" != true ]', name).render()


def check_health(ctx, port: int | None = None, *, attempts: int | None = None, dead_if: str | None = None,
                 spec: HealthSpec | None = None, quiet: bool = False) -> HealthResult:
    """Poll http://127.0.0.1:PORT<health.path> on ctx's host until it answers
    as expected (or retries run out). One remote command. Never raises for
    an unhealthy app: the caller decides (switch back, report)."""
    spec = spec or HealthSpec.from_inventory(ctx.inv)
    port = port or spec.port or ctx.inv.get("app.port")
    if not port:
        raise ctx.inv.error("health.port", "no port to health-check: set health.port or app.port")
    url = url_for(spec, port)
    found = [HealthResult(True, url=url, error="dry run")]   # a dry run checks nothing (no new instance)

    def judged(r) -> list[Record]:
        res = found[0] = parse_health(ctx.mask(r.stdout), url)
        if quiet:
            return []
        if res.ok:
            return [Record(OK, res.describe())]
        ctx.debug(res.describe())
        return []

    ctx.apply("health check", Change(
        f"{url} (dry run: not checked)", (health_cmd(spec, port, dead_if=dead_if, attempts=attempts),),
        stdin=headers_stdin(spec), check=False, dry_status=OK, shown=(), outcome=judged,
        timeout=spec.budget() if not attempts else attempts * (spec.timeout + spec.interval) + 30))
    return found[0]
