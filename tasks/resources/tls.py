"""TLS with certbot: obtain a certificate over HTTP-01, let the nginx
template serve it, keep the renewal timer on.

certbot only *obtains* the certificate (`certbot certonly --nginx` or
`--webroot`); the HTTPS server block and the HTTP->HTTPS redirect come from
templates/nginx/site.conf.j2. Letting `certbot --nginx --redirect` edit the
site file would make every later bootstrap rewrite certbot's edits (and
break HTTPS); with certonly the template is the single owner of the file.

Skipped when a certificate for all domains exists with more than
tls.min_days left and was issued by the configured ACME server. A failure
leaves the plain-HTTP site serving (the TLS site is only rendered once the
certificate exists) and reports certbot's own error.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.commands import Cmd, Raw, script, sh
from ..core.step import DEFAULT_FAILED, Change
from ..core.templates import render
from ..facts.script import FileSpec, put_files_lines, stage_lines, tar_payload

STEP = "tls"
LE_SERVER = "https://acme-v02.api.letsencrypt.org/directory"
CA_PATH = "/etc/fabship/acme-ca.pem"
CERTBOT_DROPIN = "/etc/systemd/system/certbot.service.d/fabship-acme-ca.conf"
RENEW_UNITS = ("certbot-renew.service", "certbot-renew.timer")


@dataclass
class TlsSpec:
    domains: list[str]
    email: str
    method: str
    server: str | None
    ca_pem: str | None       # the ACME server's CA (local file content), for private ACME servers
    min_days: int

    @property
    def cert_name(self) -> str:
        return self.domains[0]

    @property
    def live_dir(self) -> str:
        return f"/etc/letsencrypt/live/{self.cert_name}"

    @property
    def paths(self) -> dict:
        return {"cert": f"{self.live_dir}/fullchain.pem", "key": f"{self.live_dir}/privkey.pem"}


def tls_spec(inv, host) -> TlsSpec | None:
    """The host's TLS settings, validated before connecting (None: TLS off)."""
    t = inv.get("tls") or {}
    if not t.get("enabled"):
        return None
    domains = host.expand(list(t.get("domains") or []))
    if not domains:
        names = host.expand(inv.get("nginx.server_name") or "")
        domains = [n for n in str(names).split() if n and n != "_"]
    if not domains:
        raise inv.error("tls.domains", "tls.enabled is true but no domain is set: set tls.domains "
                                       "(or nginx.server_name)")
    for d in domains:
        if d.startswith("*"):
            raise inv.error("tls.domains", f"{d}: wildcard names need DNS-01; fabship uses HTTP-01")
    if not t.get("email"):
        raise inv.error("tls.email", "tls.enabled is true: set tls.email (the ACME account contact)")
    ca = None
    if t.get("acme_ca_file"):
        p = Path(t["acme_ca_file"]).expanduser()
        try:
            ca = p.read_text()
        except OSError as e:
            raise inv.error("tls.acme_ca_file", f"cannot read {p}: {e.strerror}") from None
        if "BEGIN CERTIFICATE" not in ca:
            raise inv.error("tls.acme_ca_file", f"{p} is not a PEM certificate")
    return TlsSpec(domains, t["email"], t.get("method") or "nginx", t.get("acme_server"), ca,
                   int(t.get("min_days") or 30))


def cert_state(facts, spec: TlsSpec) -> tuple[bool, str]:
    """(good, why): is the existing certificate good enough to skip certbot?"""
    c = facts.certs.get(spec.cert_name)
    if c is None or not c.exists:
        return False, f"no certificate for {spec.cert_name} yet"
    missing = [d for d in spec.domains if d not in c.names]
    if missing:
        return False, f"certificate lacks {', '.join(missing)}"
    if not c.valid_for_min:
        return False, f"certificate expires {c.not_after} (less than {spec.min_days} days left)"
    server = (facts.renewal.get(spec.cert_name) or {}).get("server")
    want = spec.server or LE_SERVER
    if server and server.rstrip("/") != want.rstrip("/"):
        return False, f"certificate was issued by {server}, tls.acme_server is {want}"
    return True, f"valid certificate for {', '.join(spec.domains)} until {c.not_after}"


def support_files(spec: TlsSpec, platform) -> list[FileSpec]:
    """The ACME CA (private ACME servers such as Pebble) and certbot's renewal unit config."""
    files = []
    ca = CA_PATH if spec.ca_pem else ""
    if spec.ca_pem:
        files.append(FileSpec(CA_PATH, render("tls/acme-ca.pem.j2", pem=spec.ca_pem.strip()).encode(),
                              "root", "root", "0644"))
    if platform.certbot_via_pip:
        files.append(FileSpec(f"/etc/systemd/system/{RENEW_UNITS[0]}", render(
            "systemd/certbot-renew.service.j2", ca_file=ca, certbot="/usr/local/bin/certbot").encode()))
        files.append(FileSpec(f"/etc/systemd/system/{RENEW_UNITS[1]}",
                              render("systemd/certbot-renew.timer.j2").encode()))
    elif spec.ca_pem:
        files.append(FileSpec(CERTBOT_DROPIN, render("systemd/certbot-acme-ca.conf.j2", ca_file=ca).encode()))
    return files


def timer_name(platform) -> str:
    return RENEW_UNITS[1] if platform.certbot_via_pip else "certbot.timer"


# ACME errors worth another try: a rejected anti-replay nonce (certbot retries
# once; a second one in a row ends in an unhelpful crash on Debian's certbot) and
# a CA-side hiccup. Never a failed validation: that would burn the CA's
# failed-validation rate limit for nothing. Five attempts: certbot survives one
# rejected nonce per request, not two in a row; a CA that rejects a fifth of
# them (Pebble asked to, tests/integration/faults/test_faults_services.py; its
# default is 5%) ends about one certbot run in three (4% per request, ~10
# requests), which three attempts would turn into one failed bootstrap in 27,
# five into one in 250.
TRANSIENT_ACME = "urn:ietf:params:acme:error:(badNonce|serverInternal)"
ACME_ERROR = "urn:ietf:params:acme:error:[A-Za-z]+"
CERTBOT_LOG = "/var/log/letsencrypt/letsencrypt.log"
RETRY_PAUSE = 2  # seconds times the attempt number


def with_acme_retries(cmd: Cmd, attempts: int = 5) -> Cmd:
    """Run a certbot command, again (up to `attempts`) while the ACME error
    that ended it is a transient one; print the last attempt's output, keep
    its status. Only this attempt's part of certbot's log counts, and in it
    the last ACME error: Debian's certbot appends every run to one log
    (max-log-backups = 0, logrotate's job), so a badNonce of any earlier run,
    or one certbot itself retried in this run, must not make a failed
    validation or an unknown account look transient."""
    log = CERTBOT_LOG
    body = "\n".join([
        "n=1",
        "while :; do",
        sh("  set -- $(stat -c '%i %s' {} 2>/dev/null || echo 0 0); ino=$1; off=$2", log).render(),
        f"  out=$({cmd.render()} 2>&1); rc=$?",
        '  if [ "$rc" -eq 0 ]; then printf \'%s\\n\' "$out"; exit 0; fi',
        # rotated by certbot (another file) or logrotate (shorter) meanwhile: this attempt's log is all of it
        sh("  set -- $(stat -c '%i %s' {} 2>/dev/null || echo 0 0)", log).render(),
        '  if [ "$1" != "$ino" ] || [ "$2" -lt "$off" ]; then off=0; fi',
        sh('  last=$(tail -c +$((off + 1)) {} 2>/dev/null | grep -oE {} | tail -n 1)', log, ACME_ERROR).render(),
        sh('  if [ "$n" -lt {} ] && printf "%s" "$last" | grep -qE {}; then', str(attempts),
           TRANSIENT_ACME).render(),
        '    echo "transient ACME error (attempt $n): retrying" >&2; '
        f'sleep $((n * {int(RETRY_PAUSE)})); n=$((n + 1)); continue',
        "  fi",
        '  printf \'%s\\n\' "$out" >&2; exit "$rc"',
        "done",
    ])
    return Cmd("sh", "-c", body)


def certbot_cmd(spec: TlsSpec, acme_root: str, force: bool = False) -> Cmd:
    """certbot certonly for all domains (cert name = first domain)."""
    parts: list = []
    if spec.ca_pem:
        parts.append(Raw(f"REQUESTS_CA_BUNDLE={CA_PATH}"))
    parts += ["certbot", "certonly"]
    parts += ["--nginx"] if spec.method == "nginx" else ["--webroot", "-w", acme_root]
    parts += ["--cert-name", spec.cert_name]
    for d in spec.domains:
        parts += ["-d", d]
    parts += ["--non-interactive", "--agree-tos", "-m", spec.email, "--no-eff-email",
              "--deploy-hook", "systemctl reload nginx"]
    if spec.server:
        parts += ["--server", spec.server]
    if force:
        parts.append("--force-renewal")
    return Cmd(*parts)


def support_cmd(files: list[FileSpec], timer: str) -> Cmd:
    lines = stage_lines() + put_files_lines(files) + [
        "systemctl daemon-reload",
        sh("systemctl enable -q --now {}", timer).render(),
    ]
    return script(lines)


def apply_support(ctx, facts, spec: TlsSpec, platform) -> None:
    """CA file, renewal unit config and the renewal timer (enabled and running)."""
    from .nginx import file_differs

    files = support_files(spec, platform)
    timer = timer_name(platform)
    stale = [f for f in files if file_differs(facts, f)]
    timer_ok = facts.unit_enabled(timer) and facts.unit_active(timer)
    if not stale and timer_ok:
        ctx.ok("tls renewal", f"{timer} enabled" + (f"; {CA_PATH} up to date" if spec.ca_pem else ""))
        return
    msg = "; ".join([f"write {f.path}" for f in stale] + ([f"enable --now {timer}"] if not timer_ok else []))
    ctx.apply("tls renewal", Change(msg, (support_cmd(files, timer),), stdin=tar_payload(files),
                                    failed=DEFAULT_FAILED))


def obtain(ctx, facts, spec: TlsSpec, acme_root: str) -> bool:
    """Run certbot when the certificate is missing/expiring/wrong. True when a
    new certificate was obtained (a dry run obtains none: it shows the certbot
    command); StepFailed (HTTP keeps serving) on failure."""
    good, why = cert_state(facts, spec)
    if good:
        ctx.skipped(STEP, why)
        return False
    c = facts.certs.get(spec.cert_name)
    cmd = certbot_cmd(spec, acme_root, force=bool(c and c.exists))
    domains = ", ".join(spec.domains)

    def refused(res) -> str:
        reason = _certbot_reason((res.stderr + "\n" + res.stdout).strip())
        return f"certbot failed for {domains}: {reason}; the site keeps serving plain HTTP"

    done = ctx.apply(STEP, Change(
        f"{why}: obtained a certificate for {domains}", (with_acme_retries(cmd),), shown=(cmd,), timeout=600,
        dry_message=f"{why}: request one from {spec.server or LE_SERVER}", failed=refused, tail=30))
    return done.ran


def _certbot_reason(text: str) -> str:
    for key in ("Detail:", "Error:", "error:", "An unexpected error occurred:"):
        for ln in text.splitlines():
            if key in ln:
                return ln.strip()[:300]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Saving debug log")]
    return lines[-1][:300] if lines else "no output"
