"""The verification checks: read-only questions about a host, each with a
stable name and a one-line failure message that says what is wrong and what
was expected.

How it fits together (pure, no connection here):
  Spec      what the inventory promises for one host (paths, owners, modes,
            units, ports, domains, HTTP checks) — `build_spec(inv, host)`
  probes    one shell script that gathers every fact the checks need in a
            single round trip (`facts_script(spec)`), parsed by `parse_facts`
  CHECKS    plain functions `check(probe) -> str` that return a short "ok"
            detail, raise `CheckFailed` (an AssertionError, so they read like
            testinfra assertions under pytest) or `CheckSkipped`
  evaluate  runs the selected checks in order; a check whose prerequisite
            failed is *skipped* naming it, so one broken thing shows as one
            failed check (a stopped unit fails `unit_active`, not also
            `health` and every HTTP check behind it)

The runner (`tasks/verify/gate.py`) executes the facts script over fabship's own
SSH connection (through a testinfra backend) and the pytest suite
(`tasks/verify/suite/`) wraps the same checks as parametrized tests.
"""
from __future__ import annotations

import base64
import json
import re
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from ..config.schema_types import parse_size
from ..facts.script import OWN_SWAPS

PASS, FAIL, SKIP = "passed", "failed", "skipped"
STAGES = ("bootstrap", "deploy", "rotate-env", "rollback")
MARK = "@@fabship-fact@@"
COMPLETED = ("ok",)  # releases.jsonl result of a finished deploy (tasks/release/releases.py)


class CheckFailed(AssertionError):
    """The host is not in the promised state; the message says how."""


class CheckSkipped(Exception):
    """The check does not apply here (the message says why)."""


# -- what the inventory promises ------------------------------------------------------

@dataclass
class HttpCheck:
    name: str
    method: str = "GET"
    path: str = "/"
    headers: dict = field(default_factory=dict)
    body: str | None = None
    expect_status: int = 200
    body_contains: str | None = None
    via: str = "app"
    session: str | None = None   # checks sharing it run in list order with one cookie jar
    step: int = 0                # 1-based position in its session
    refs: tuple = ()             # env keys the body/header values reference as ${KEY}


@dataclass
class Spec:
    """Everything the checks compare against, for one host."""

    host: str = ""
    app: str | None = None
    kind: str | None = None
    user: str = ""
    group: str = ""
    root: str = ""
    config_dir: str = ""
    root_mode: str = "0755"
    config_dir_mode: str = "0750"
    strategy: str = "restart"
    blue_green: bool = False
    systemd: bool = False
    docker: bool = False
    port: int | None = None
    ports: tuple = ()
    compose_project: str = ""
    node_version: str | None = None
    python_version: str | None = None
    packages: list = field(default_factory=list)
    swap_path: str | None = None
    swap_size: str | None = None
    swap_bytes: int = 0
    swap_tolerance: float = 0.05
    env_path: str | None = None
    env_owner: str = "root"
    env_group: str = ""
    env_mode: str = "0600"
    nginx: bool = False
    server_name: str | None = None
    upstream_file: str = ""
    tls: bool = False
    tls_method: str = "nginx"
    domains: list = field(default_factory=list)
    cert_min_days: int = 14
    cert_issuer: str | None = None
    cert_ca: str | None = None        # PEM text of the CA the chain must reach (None: the host's store)
    cert_ca_from: str = ""            # where it came from, for messages
    health: dict = field(default_factory=dict)
    http_checks: list = field(default_factory=list)
    skip: list = field(default_factory=list)
    mask_keys: list = field(default_factory=list)   # env keys whose values messages mask (KEY=VALUE...)
    ignore_failed_units: list = field(default_factory=list)
    dir_specs: list = field(default_factory=list)
    # docker.secrets_dir / certs_dir (tasks/resources/docker_files.py):
    # (kind, dir, owner, group, mode, [(path, owner, group, mode), ...])
    docker_sets: list = field(default_factory=list)
    bootstrap: object = field(default=None, repr=False)   # tasks.cli.bootstrap.AppSpec
    tls_spec: object = field(default=None, repr=False)    # tasks.resources.tls.TlsSpec

    # paths derived from the layout (ARCHITECTURE.md "Host layout")
    @property
    def current(self) -> str:
        return f"{self.root}/current"

    @property
    def state_dir(self) -> str:
        return f"{self.root}/.fabship"

    @property
    def release_log(self) -> str:
        return f"{self.state_dir}/releases.jsonl"

    @property
    def audit_log(self) -> str:
        return f"{self.state_dir}/audit.log"

    def unit_for(self, port: int | None) -> str | None:
        if not self.systemd or not self.app:
            return None
        if self.blue_green:
            return f"{self.app}@{port}.service" if port else None
        return f"{self.app}.service"

    def dirs(self) -> list[tuple[str, str | None, str | None, str | None]]:
        """(path, owner, group, mode) bootstrap promises (tasks/cli/bootstrap.py layout_dirs)."""
        return list(self.dir_specs)


def http_check_name(c: dict) -> str:
    return c.get("name") or f"{c.get('method') or 'GET'} {c['path']}"


def build_spec(inv, host) -> Spec:
    """The expectations for one host, from the validated inventory. Pure
    (reads no host): the inventory is read the way bootstrap reads it
    (tasks/cli/bootstrap.py app_spec, layout_dirs, wanted_packages; tasks/resources/tls.py
    tls_spec) and the release layout the way deploy does (tasks/release/releases.py),
    so verify checks exactly what those tasks promise, with their errors."""
    d = inv.data
    expand = host.expand
    s = Spec(host=host.name)
    s.packages = list(d.get("packages") or [])
    swap = d.get("swap")
    if swap:
        s.swap_path, s.swap_size = swap["path"], swap["size"]
        s.swap_bytes = parse_size(swap["size"])
    v = d.get("verify") or {}
    s.swap_tolerance = float(v.get("swap_tolerance", 0.05))
    s.cert_min_days = int(v.get("cert_min_days", 14))
    s.cert_issuer = v.get("cert_issuer")
    s.cert_ca, s.cert_ca_from = _cert_ca(inv)
    s.skip = list(v.get("skip") or [])
    s.ignore_failed_units = list(v.get("ignore_failed_units") or [])
    if inv.get("app.name"):
        from ..config.app import Layout, app_spec, layout_dirs

        a = app_spec(inv)  # bootstrap's own reading of the inventory: verify checks what it promises
        lay = Layout.from_inventory(inv)
        s.bootstrap = a
        from ..config.app import app_identity

        s.app, s.kind = a.name, a.kind
        s.user, s.group = app_identity(inv)   # the one rule bootstrap, deploy and rotate-env use
        s.root, s.config_dir = lay.root, a.config_dir
        s.root_mode, s.config_dir_mode = a.root_mode, a.config_dir_mode
        s.strategy, s.systemd, s.docker = a.strategy, a.has_unit, lay.docker
        s.nginx = a.nginx is not None
        s.blue_green = a.strategy == "blue_green" and (a.has_unit or (a.kind == "docker" and s.nginx))
        s.port, s.ports = a.port, tuple(a.ports)
        s.upstream_file = lay.upstream_file
        s.compose_project = inv.get("docker.compose_project") or a.name
        s.node_version, s.python_version = a.node_version, a.python_version
        s.dir_specs = [tuple(x) for x in layout_dirs(a)]
        from ..resources.docker_files import plan_layout

        s.docker_sets = [(fs.kind, fs.dir, fs.owner, fs.group, fs.mode,
                          [(f.path, f.owner, f.group, f.mode) for f in fs.files]) for fs in plan_layout(inv).sets]
        if d.get("env") is not None:
            s.env_path, s.env_owner, s.env_group, s.env_mode = a.env_path, a.env_owner, a.env_group, a.env_mode
    from ..resources.tls import tls_spec

    ts = tls_spec(inv, host)
    s.tls_spec = ts
    s.tls = ts is not None and s.nginx
    if ts is not None:
        s.domains, s.tls_method = list(ts.domains), ts.method
    names = expand(inv.get("nginx.server_name") or "").split()
    names = [n for n in names if n != "_"]
    s.server_name = names[0] if names else (s.domains[0] if s.domains else None)
    s.health = dict(d.get("health") or {})
    s.health["headers"] = expand(s.health.get("headers") or {})
    check_headers(inv, "health.headers", s.health["headers"])
    c = (d.get("env") or {}).get("contract") or {}
    s.mask_keys = sorted(set(list(c.get("required") or []) + list(c.get("optional") or [])
                             + list((c.get("rules") or {}).keys())))
    seen = set()
    sessions: dict[str, tuple[int, str]] = {}   # name -> (steps so far, via)
    for i, c in enumerate(v.get("checks") or []):
        name = http_check_name(c)
        if name in seen:
            raise inv.error(f"verify.checks[{i}].name", f"duplicate check name '{name}' (give each check a unique name)")
        seen.add(name)
        via = c.get("via") or "app"
        if via in ("nginx", "https") and not s.nginx:
            raise inv.error(f"verify.checks[{i}].via", f"'{via}' needs nginx, which is disabled (nginx.enabled)")
        if via == "https" and not s.tls:
            raise inv.error(f"verify.checks[{i}].via", "'https' needs tls.enabled: true")
        headers = expand(c.get("headers") or {})
        check_headers(inv, f"verify.checks[{i}].headers", headers)
        refs = _check_refs(inv, i, name, c, headers)
        session, step = c.get("session"), 0
        if session:
            step, first_via = sessions.get(session, (0, via))
            if via != first_via:  # cookies belong to one origin
                raise inv.error(f"verify.checks[{i}].via", f"check '{name}' is in session '{session}', whose "
                                f"earlier steps use via {first_via}: a session's steps must share one via")
            step += 1
            sessions[session] = (step, via)
        s.http_checks.append(HttpCheck(name=name, method=c.get("method") or "GET", path=c["path"],
                                       headers=headers, body=c.get("body"),
                                       expect_status=c.get("expect_status") or 200,
                                       body_contains=c.get("body_contains"), via=via,
                                       session=session, step=step, refs=tuple(refs)))
    return s


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def check_headers(inv, where: str, headers: dict) -> None:
    """Header names are HTTP tokens and values one line: each header is one line
    of the 0600 file curl reads (`-H @file`). Errors name the key, never the value."""
    for k, val in headers.items():
        if not _TOKEN.fullmatch(str(k)):
            raise inv.error(where, f"header name {str(k)[:40]!r} is not a valid HTTP header name")
        if "\n" in str(val) or "\r" in str(val) or "\0" in str(val):
            raise inv.error(f"{where}.{k}", "the value holds a line break (a header value is one line)")


def _cert_ca(inv) -> tuple[str | None, str]:
    """The CA the served certificate must chain to: verify.cert_ca_file (a local
    PEM, relative to the inventory file that set it), else the sandbox's ACME
    issuing root (Pebble's, regenerated per start), else None: the host's
    system store. Read before connecting; it travels on the facts script's stdin."""
    from pathlib import Path

    for key in ("verify.cert_ca_file", "sandbox.acme_issuer_root"):
        val = inv.get(key)
        if not val:
            continue
        p = Path(str(val)).expanduser()
        if not p.is_absolute():
            p = Path(inv.file_of(key)).parent / p
        try:
            text = p.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise inv.error(key, f"cannot read {p}: {getattr(e, 'strerror', None) or e}") from None
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise inv.error(key, f"{p} is not a PEM certificate")
        return text if text.endswith("\n") else text + "\n", f"{key} {p}"
    return None, "the host's CA store"


# -- ${KEY} in HTTP check bodies and headers (values read on the host) ------------------

_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\{")


def env_refs(text: str | None) -> list[str]:
    """The env keys `text` references as ${KEY}, in order, once each (`$${`
    is a literal `${`). Raises ValueError for a `${` that is not `${KEY}`."""
    keys: list[str] = []
    for m in _REF.finditer(text or ""):
        if m.group(0) == "$${":
            continue
        if m.group(1) is None:
            raise ValueError("'${' must start a reference such as ${ADMIN_PASSWORD} (write $${ for a literal ${)")
        if m.group(1) not in keys:
            keys.append(m.group(1))
    return keys


def _check_refs(inv, i: int, name: str, c: dict, headers: dict) -> list[str]:
    """Validate a check's ${KEY} references before connecting: only in the body
    and header values, each a key of the env contract (so a typo cannot send an
    empty password). Returns the keys referenced."""
    where = [(f"verify.checks[{i}].body", c.get("body"))]
    where += [(f"verify.checks[{i}].headers.{k}", v) for k, v in headers.items()]
    found: list[str] = []
    for key, text in where:
        try:
            refs = env_refs(text)
        except ValueError as e:
            raise inv.error(key, f"check '{name}': {e}") from None
        found += [r for r in refs if r not in found]
    for key, text in ((f"verify.checks[{i}].path", c.get("path")),
                      *((f"verify.checks[{i}].headers", k) for k in headers)):
        if "${" in (text or "").replace("$${", ""):
            raise inv.error(key, f"check '{name}': ${{KEY}} references are read only in the body and in "
                                 "header values")
    if not found:
        return found
    env = inv.data.get("env")
    if env is None or not inv.get("app.name"):
        raise inv.error(where[0][0] if env_refs(c.get("body")) else f"verify.checks[{i}].headers",
                        f"check '{name}' references ${{{found[0]}}}, but the inventory has no "
                        f"{'env' if env is None else 'app'} section (the value is read from the app's env "
                        "file on the host)")
    contract = env.get("contract") or {}
    known = list(contract.get("required") or []) + list(contract.get("optional") or [])
    for key, text in where:
        for r in env_refs(text):
            if r not in known:
                import difflib

                near = difflib.get_close_matches(r, known, 1)
                hint = f" (did you mean {near[0]}?)" if near else ""
                raise inv.error(key, f"check '{name}' references ${{{r}}}, which is not a key of "
                                     f"env.contract (required/optional){hint}")
    return found


# -- the facts script: one round trip per host -----------------------------------------

def q(value) -> str:
    return shlex.quote(str(value))


# Shell helpers the probes use. `probe NAME SNIPPET` runs a snippet and prints
# a header with its exit code, then its output base64-encoded (any bytes, no
# delimiter clashes). `http` runs curl and prints "rc code", curl's error and
# the first 16 KiB of the body. Temp files are mktemp (0600, root).
_PRELUDE = r"""
probe() { n=$1; shift; o=$(eval "$1" 2>&1); r=$?; printf '%s %s %s\n' "MARK" "$n" "$r"; printf '%s' "$o" | base64 | tr -d '\n'; printf '\n'; }
http() { t=$(mktemp) || return 99; e=$(mktemp); c=$(curl -sS -o "$t" -w '%{http_code}' "$@" 2>"$e"); r=$?; printf '%s %s\n' "$r" "$c"; head -c 300 "$e" | tr '\n' ' '; printf '\n'; head -c 16384 "$t"; rm -f "$t" "$e"; return 0; }
""".replace("MARK", MARK)


def _curl_args(method: str, body: str | None, timeout: float) -> list[str]:
    args = ["--max-time", str(timeout)]
    if method == "HEAD":
        args.append("--head")
    elif method != "GET":
        args += ["-X", method]
    if body is not None:
        args += ["--data-binary", body]
    return args


def _header_arg(slot: str | None) -> str:
    """curl reads a check's headers from its 0600 file in the private dir (shell
    text): header values never go on a command line, where `ps` shows them."""
    return f'-H "@$fw/{slot}" ' if slot else ""


def _url_args(spec: Spec, via: str, path: str, port_var: str = "$port", scheme: str = "http") -> str:
    """The curl target for an HTTP probe, as shell text (the port may be a
    variable resolved on the host from the nginx upstream)."""
    if via == "https" or (via == "nginx" and spec.tls):
        # through nginx's front door: with TLS on, port 80 only redirects
        name = spec.server_name or "localhost"
        return f"--insecure --resolve {q(name + ':443:127.0.0.1')} {q('https://' + name + path)}"
    if via == "nginx":
        host_hdr = f"-H {q('Host: ' + spec.server_name)} " if spec.server_name else ""
        return f"{host_hdr}{q('http://127.0.0.1' + path)}"
    if scheme == "https":  # an app serving TLS itself: its certificate is not what we check here
        return f"--insecure \"https://127.0.0.1:{port_var}\"{q(path)}"
    return f"\"http://127.0.0.1:{port_var}\"{q(path)}"


def _http_snippet(spec: Spec, via: str, method: str, path: str, hslot: str | None, body, timeout: float,
                  port_var: str = "$port", scheme: str = "http") -> str:
    """`http ...` for one probe; `hslot` names its headers file (header_files)."""
    args = " ".join(q(a) for a in _curl_args(method, body, timeout))
    return f"http {args} {_header_arg(hslot)}{_url_args(spec, via, path, port_var, scheme)}"


# -- files on the facts script's stdin: headers and the CA ---------------------------------
#
# Header values may be tokens: they reach the host on the script's stdin, each
# probe's lines into its own file in the private dir (umask 077, so 0600) that curl
# reads with `-H @file`; the CA certificate for the chain check travels the same way.
# Each file is a known number of lines, read with the shell's `read` builtin (which
# never reads ahead), so one stdin carries them all.

def _plain_headers(c: HttpCheck) -> dict:
    return {k: v for k, v in c.headers.items() if not env_refs(v)}


def stdin_files(spec: Spec) -> list[tuple[str, str]]:
    """(slot, text) of every file the facts script reads from its stdin, in order."""
    out = []
    if spec.health.get("headers"):
        out.append(("h.health", "".join(f"{k}: {v}\n" for k, v in spec.health["headers"].items())))
    for i, c in enumerate(spec.http_checks):
        plain = _plain_headers(c)
        if plain:
            out.append((f"h.http.{i}", "".join(f"{k}: {v}\n" for k, v in plain.items())))
    if spec.cert_ca and spec.tls and spec.domains:
        out.append(("ca.pem", spec.cert_ca))
    return out


def facts_stdin(spec: Spec) -> bytes | None:
    """What the facts script expects on its stdin (None: it reads nothing)."""
    files = stdin_files(spec)
    return "".join(t for _, t in files).encode() if files else None


def _slot(spec: Spec, name: str) -> str | None:
    return name if any(n == name for n, _ in stdin_files(spec)) else None


# -- sessions and ${KEY} values (verify.checks[].session) ---------------------------------
#
# A check with a `session` or a ${KEY} reference runs through `sreq` (below) instead
# of `http`: checks of one session share a cookie jar in a private dir (mktemp -d,
# 0700, removed when the script exits); a failed step marks the session so its later
# steps are not sent. ${KEY} values are read from the app's env file ON THE HOST by
# an awk reader (the file is parsed, never sourced) and reach curl only through a
# pipe from the shell builtin printf (body) or a 0600 file in that dir (headers):
# never a command line (ps), never fabship's output. Response bodies are masked on
# the host (every referenced value, raw and JSON-escaped, becomes ***) before they
# are printed, so a server that echoes a password cannot leak it into a message.

# POSIX awk (mawk, gawk; run with LC_ALL=C so it works on bytes). ARGV[1] is the env
# file, read the way systemd's EnvironmentFile= reads it (comments, export, single
# quotes literal, double quotes with \" \\ \` \$ escapes, may span lines; last one
# wins), or with `lit` set (app.kind docker) the way docker's --env-file does
# (KEY=VALUE, the value as it is). ENVIRON["M"] says what to print:
#   json|form|raw  ENVIRON["T"] with each ${KEY} replaced (JSON-string-escaped, URL-
#                  encoded, as is; $${ is a literal ${), then "x" so $(...) keeps
#                  trailing newlines
#   header         the same without the "x"; a value with a line break is refused
#   mask           stdin (after the `part=2` argument) with the values of the keys in
#                  ENVIRON["K"] replaced by ***
ENV_AWK = r"""
function jesc(s,   o, i, c, n) {
  o = ""; n = length(s)
  for (i = 1; i <= n; i++) {
    c = substr(s, i, 1)
    if (c == "\\" || c == "\"") o = o "\\" c
    else if (c == "\n") o = o "\\n"
    else if (c == "\r") o = o "\\r"
    else if (c == "\t") o = o "\\t"
    else if ((c in ord) && ord[c] < 32) o = o sprintf("\\u%04x", ord[c])
    else o = o c
  }
  return o
}
function uesc(s,   o, i, c, n) {
  o = ""; n = length(s)
  for (i = 1; i <= n; i++) {
    c = substr(s, i, 1)
    if (c ~ /[A-Za-z0-9._~-]/) o = o c; else o = o sprintf("%%%02X", ord[c])
  }
  return o
}
function repl(s, a,   o, i) {
  o = ""
  while ((i = index(s, a)) > 0) { o = o substr(s, 1, i - 1) "***"; s = substr(s, i + length(a)) }
  return o s
}
function render(t, m,   o, i, k, val) {
  o = ""
  while ((i = index(t, "$")) > 0) {
    o = o substr(t, 1, i - 1); t = substr(t, i)
    if (substr(t, 1, 3) == "$${") { o = o "${"; t = substr(t, 4); continue }
    if (!match(t, /^[$][{][A-Za-z_][A-Za-z0-9_]*[}]/)) { o = o "$"; t = substr(t, 2); continue }
    k = substr(t, 3, RLENGTH - 3); t = substr(t, RLENGTH + 1)
    if (!(k in v)) { printf "${%s} is not set in %s\n", k, ARGV[1] > "/dev/stderr"; bad = 2; return "" }
    val = v[k]
    if (m == "header" && val ~ /[\r\n]/) {
      printf "${%s} holds a line break, which cannot go into a header\n", k > "/dev/stderr"; bad = 3; return ""
    }
    o = o (m == "json" ? jesc(val) : m == "form" ? uesc(val) : val)
  }
  return o t
}
BEGIN { for (i = 1; i < 256; i++) ord[sprintf("%c", i)] = i }
part == 2 { b = (FNR > 1 ? b "\n" : "") $0; next }
lit {
  line = $0; sub(/\r$/, "", line); sub(/^[ \t]+/, "", line)
  if (line == "" || line ~ /^#/) next
  e = index(line, "="); if (e == 0) next
  v[substr(line, 1, e - 1)] = substr(line, e + 1); next
}
{
  line = $0; sub(/\r$/, "", line)
  if (q != "") { rest = line; if (!cont) val = val "\n"; cont = 0 }
  else {
    sub(/^[ \t]+/, "", line)
    if (line == "" || line ~ /^[#;]/) next
    if (line ~ /^export[ \t]/) { line = substr(line, 8); sub(/^[ \t]+/, "", line) }
    e = index(line, "="); if (e == 0) next
    key = substr(line, 1, e - 1); sub(/[ \t]+$/, "", key)
    rest = substr(line, e + 1); sub(/^[ \t]+/, "", rest)
    c = substr(rest, 1, 1); val = ""
    if (c != "\"" && c != "'") {
      n = length(rest)
      for (i = 1; i <= n; i++) { c = substr(rest, i, 1); if (c == "\\" && i < n) c = substr(rest, ++i, 1); val = val c }
      sub(/[ \t]+$/, "", val); v[key] = val; next
    }
    q = c; rest = substr(rest, 2)
  }
  n = length(rest)
  for (i = 1; i <= n; i++) {
    c = substr(rest, i, 1)
    if (q == "\"" && c == "\\") {
      if (i == n) { cont = 1; break }
      c = substr(rest, ++i, 1); val = val (index("\"\\`$", c) ? c : "\\" c); continue
    }
    if (c == q) { v[key] = val; q = ""; break }
    val = val c
  }
}
END {
  m = ENVIRON["M"]
  if (m != "mask") { o = render(ENVIRON["T"], m); if (bad) exit bad; printf "%s%s", o, (m == "header" ? "" : "x"); exit 0 }
  nk = split(ENVIRON["K"], ks, " "); na = 0
  for (j = 1; j <= nk; j++) {
    if (!(ks[j] in v) || v[ks[j]] == "") continue
    a[++na] = v[ks[j]]; if (jesc(v[ks[j]]) != v[ks[j]]) a[++na] = jesc(v[ks[j]])
  }
  for (j = 1; j <= na; j++) for (l = j + 1; l <= na; l++) if (length(a[l]) > length(a[j])) { t = a[j]; a[j] = a[l]; a[l] = t }
  for (j = 1; j <= na; j++) b = repl(b, a[j])
  printf "%s", b
}
"""

# `sreq DIR STEP EXPECT NEEDLE BODYMODE HEADERS BODY CURL-ARGS...` prints what `http`
# prints ("rc code", curl's error, the body: masked), or `skip N` when step N of the
# session failed, or `build 0` + why when the request could not be built (a key
# missing from the env file). It marks DIR/failed with STEP when the request failed,
# answered another status, or lacks NEEDLE, so the session's later steps are not sent.
_SREQ = r"""
sbad() { printf '%s' "$2" > "$1/failed"; printf 'build 0\n'; head -c 300 "$1/e" | tr '\n' ' '; printf '\n'; rm -f "$1/h" "$1/e"; }
sreq() {
  d=$1 n=$2 want=$3 needle=$4 bm=$5 ht=$6 bt=$7; shift 7
  if [ -z "$fw" ] || [ ! -d "$d" ]; then printf 'build 0\ncannot make a private temp dir on the host\n'; return 0; fi
  if [ -s "$d/failed" ]; then printf 'skip %s\n' "$(cat "$d/failed")"; return 0; fi
  if [ -n "$ht$bm" ] && [ ! -r "$ef" ]; then printf '%s' "$n" > "$d/failed"; printf 'build 0\ncannot read %s\n' "$ef"; return 0; fi
  if [ -n "$ht" ]; then
    T=$ht M=header LC_ALL=C awk "$ea" "$ef" > "$d/h" 2> "$d/e" || { sbad "$d" "$n"; return 0; }
    set -- -H "@$d/h" "$@"
  fi
  if [ -n "$bm" ]; then
    b=$(T=$bt M=$bm LC_ALL=C awk "$ea" "$ef" 2> "$d/e") || { sbad "$d" "$n"; return 0; }
    c=$(printf '%s' "${b%x}" | curl -sS -o "$d/o" -w '%{http_code}' --data-binary @- "$@" 2> "$d/e"); r=$?; b=
  else
    c=$(curl -sS -o "$d/o" -w '%{http_code}' "$@" 2> "$d/e" < /dev/null); r=$?
  fi
  rm -f "$d/h"
  ok=0; [ "$r" = 0 ] && [ "$c" = "$want" ] && ok=1
  if [ "$ok" = 1 ] && [ -n "$needle" ]; then head -c 16384 "$d/o" | grep -qF -e "$needle" || ok=0; fi
  [ "$ok" = 1 ] || printf '%s' "$n" > "$d/failed"
  printf '%s %s\n' "$r" "$c"; head -c 300 "$d/e" | tr '\n' ' '; printf '\n'
  if [ -n "$fk" ]; then head -c 65536 "$d/o" | K=$fk M=mask LC_ALL=C awk "$ea" "$ef" part=2 - | head -c 16384
  else head -c 16384 "$d/o"; fi
  rm -f "$d/o" "$d/e"
}
""".strip("\n")


def body_mode(body: str | None, headers: dict) -> str:
    """How ${KEY} values go into a body: "json" when the body is JSON with every
    reference inside a string (values JSON-escaped: a quote in a password cannot
    break the document), "form" for application/x-www-form-urlencoded (URL-
    encoded), else "raw". "" when the body references nothing."""
    if not env_refs(body):
        return ""
    ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    if ctype.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        return "form"
    plain = _REF.sub(lambda m: "${" if m.group(0) == "$${" else "FABSHIPREF", body)
    try:
        json.loads(plain)
    except ValueError:
        return "raw"
    return "json"


def _session_dirs(spec: Spec) -> dict:
    """check index -> its private dir on the host (shell text): one per session, one
    per other check with ${KEY} references."""
    sessions: dict[str, str] = {}
    out = {}
    for i, c in enumerate(spec.http_checks):
        if c.session:
            out[i] = sessions.setdefault(c.session, f'"$fw/s{len(sessions)}"')
        elif c.refs:
            out[i] = f'"$fw/c{i}"'
    return out


def _private_setup(spec: Spec) -> list[str]:
    """The private dir (mktemp -d, umask 077, removed on exit) for sessions and
    for the files on stdin, then those files read into it, then stdin closed."""
    dirs = _session_dirs(spec)
    files = stdin_files(spec)
    if not _needs_private(spec):
        return []
    lines = ["umask 077", "fw=$(mktemp -d) || fw=", "trap 'rm -rf \"$fw\"' EXIT", "trap 'exit 129' HUP INT TERM"]
    if dirs:
        lines.append("[ -z \"$fw\" ] || mkdir " + " ".join(dict.fromkeys(dirs.values())))
    keys = list(dict.fromkeys(k for c in spec.http_checks for k in c.refs))
    if keys:
        # app.kind docker: docker's --env-file format (tasks/resources/envfile.py docker_literal), every value as it is
        awk = ("BEGIN { lit = 1 }\n" if spec.kind == "docker" else "") + ENV_AWK.strip()
        lines += [f"ef={q(spec.env_path or '')}", f"fk={q(' '.join(keys))}", f"ea={q(awk)}"]
    if dirs:
        lines.append(_SREQ)
    if files:
        # printf is a builtin: the lines reach the file without any process's argv
        lines.append('fin() { n=$2; [ -z "$fw" ] || : > "$fw/$1"; while [ "$n" -gt 0 ]; do IFS= read -r fl || fl=; '
                     '[ -z "$fw" ] || printf \'%s\\n\' "$fl" >> "$fw/$1"; n=$((n - 1)); done; fl=; }')
        lines += [f"fin {name} {text.count(chr(10))}" for name, text in files]
        lines.append("exec 0</dev/null")
    return lines


def _needs_private(spec: Spec) -> bool:
    # sessions, files from stdin, the served chain (cert_chain)
    return bool(_session_dirs(spec) or stdin_files(spec) or (spec.tls and spec.domains))


def _private_teardown(spec: Spec) -> list[str]:
    return ['rm -rf "$fw"'] if _needs_private(spec) else []


def _step_snippet(spec: Spec, i: int, c: HttpCheck, timeout: float) -> str:
    """The `sreq` call of one check with a session or ${KEY} values."""
    d = _session_dirs(spec)[i]
    templated = {k: v for k, v in c.headers.items() if env_refs(v)}
    bm = body_mode(c.body, c.headers)
    args = " ".join(q(a) for a in _curl_args(c.method, None if bm else c.body, timeout))
    jar = f"-b {d[:-1]}/jar\" -c {d[:-1]}/jar\" " if c.session else ""
    needle = c.body_contains if c.body_contains and "\n" not in c.body_contains else ""
    hdrs = "\n".join(f"{k}: {v}" for k, v in templated.items())   # ${KEY} templates only, never values
    hfile = _header_arg(f"h.http.{i}" if _plain_headers(c) else None)
    return (f"sreq {d} {c.step or 1} {c.expect_status} {q(needle)} {q(bm)} {q(hdrs)} {q(c.body if bm else '')} "
            f"{args} {hfile}{jar}{_url_args(spec, c.via, c.path)}")


def facts_script(spec: Spec) -> str:
    """One read-only shell script that gathers every fact the checks need."""
    P = []

    def probe(name: str, snippet: str):
        P.append(f"probe {q(name)} {q(snippet)}")

    P.append(_PRELUDE)
    probe("now", "date +%s")
    probe("virt", "systemd-detect-virt --container")
    probe("os", "cat /etc/os-release")
    # every installed package (a few KB): the expected list depends on the platform
    probe("packages", "if command -v dpkg-query >/dev/null; then dpkg-query -W "
                      "-f='${Package}\\t${db:Status-Abbrev}\\n'; else rpm -qa --qf '%{NAME}\\tii\\n'; fi")
    if spec.swap_path:
        probe("swaps", OWN_SWAPS)  # this host's entries only (the kernel's list is shared)
        probe("fstab", "cat /etc/fstab")
        probe("swapfile", f"stat -L -c '%s|%U|%a' -- {q(spec.swap_path)}")
        # /proc/swaps names a linked swap path by its target; and whether swap can
        # live there at all (overlayfs cannot hold a swap file).
        probe("swapreal", f"r=$(readlink -f -- {q(spec.swap_path)}) && echo \"$r\" && "
                          f"stat -f -c %T -- \"${{r%/*}}/\"")
    if spec.app:
        probe("user", f"id -u {q(spec.user)} && id -gn {q(spec.user)} && getent group {q(spec.group)}")
        stat_paths = [p for p, *_ in spec.dirs()]
        probe("dirs", "for f in " + " ".join(q(p) for p in stat_paths)
              + "; do stat -c '%n|%U|%G|%a|%F' -- \"$f\" 2>/dev/null || echo \"$f|MISSING\"; done")
    if spec.env_path:
        probe("env", f"stat -c '%n|%U|%G|%a|%F' -- {q(spec.env_path)}")
    for kind, d, _o, _g, _m, files in spec.docker_sets:
        # stat of the dir and each managed file, then what the dir holds (names only, never contents)
        probe(f"docker_{kind}", "for f in " + " ".join(q(x) for x in [d] + [f[0] for f in files])
              + "; do stat -c '%n|%U|%G|%a|%F' -- \"$f\" 2>/dev/null || echo \"$f|MISSING\"; done; echo --; "
              + f"ls -A1 -- {q(d)}")
    # The live port: the one nginx's upstream sends traffic to (blue/green), else app.port.
    default_port = spec.port or ""
    if spec.blue_green and spec.nginx:
        P.append(f"port=$(grep -oE 'server[[:space:]]+[^;[:space:]]+:[0-9]+' {q(spec.upstream_file)} 2>/dev/null"
                 " | head -n1 | sed 's/.*://')")
    elif spec.blue_green and spec.systemd:
        P.append("port=; for p in " + " ".join(str(p) for p in spec.ports)
                 + f"; do systemctl -q is-active {q(spec.app)}@$p.service && port=$p; done")
    else:
        P.append(f"port={q(default_port)}")
    if spec.health.get("port"):
        P.append(f"hport={int(spec.health['port'])}")
    else:
        P.append("hport=$port")
    probe("port", "echo $port")
    # before the probes that read them: the header files and the CA, from stdin
    P.extend(_private_setup(spec))
    if spec.systemd:
        unit = f"{spec.app}@$port.service" if spec.blue_green else f"{spec.app}.service"
        # UnitFileState from `show` is systemd's cache, stale after `enable --no-reload`
        # (which deploy uses); `is-enabled` reads the links on disk.
        probe("unit", f"systemctl show \"{unit}\" -p Id -p LoadState -p ActiveState -p SubState "
                      f"-p Result -p NRestarts; printf 'UnitFileState=%s\\n' \"$(systemctl is-enabled \"{unit}\" "
                      "2>/dev/null)\"")
    if spec.docker and spec.app:
        # docker kind: fabship labels its containers; compose: the project's label
        label = (f"com.docker.compose.project={spec.compose_project}" if spec.kind == "compose"
                 else f"fabship.app={spec.app}")
        probe("containers", "docker ps -a --filter " + q(f"label={label}")
              + " --format '{{.Names}}|{{.Label \"fabship.port\"}}|{{.State}}|{{.Status}}'")
    probe("failed", "systemctl list-units --failed --plain --no-legend --no-pager")
    if spec.nginx:
        probe("nginx_t", "nginx -t")
        probe("nginx_active", "systemctl is-active nginx")
        probe("listen", "ss -Hltn")
    if spec.tls and spec.domains:
        d0 = q(spec.domains[0])
        probe("cert", f"echo | timeout 10 openssl s_client -connect 127.0.0.1:443 -servername {d0} 2>/dev/null"
                      " | openssl x509 -noout -enddate -issuer -subject -ext subjectAltName")
        # the chain the server sends, verified against the configured CA or the host's store
        ca = '-CAfile "$fw/ca.pem" -no-CApath ' if _slot(spec, "ca.pem") else ""
        probe("cert_chain", '[ -n "$fw" ] || { echo "no private temp dir on the host"; exit 99; }; '
                            f"echo | timeout 10 openssl s_client -connect 127.0.0.1:443 -servername {d0} -showcerts "
                            "2>/dev/null | sed -n '/-BEGIN CERT/,/-END CERT/p' > \"$fw/chain.pem\"; "
                            f"openssl verify {ca}-purpose sslserver -untrusted \"$fw/chain.pem\" \"$fw/chain.pem\"")
        probe("redirect", "curl -sS -o /dev/null --max-time 5 -w '%{http_code} %{redirect_url}' "
                          f"-H {q('Host: ' + spec.domains[0])} http://127.0.0.1/")
    if spec.app and (spec.systemd or spec.docker or spec.health.get("port")):
        h = spec.health
        probe("health", _http_snippet(spec, "app", h.get("method", "GET"), h.get("path", "/health"),
                                      _slot(spec, "h.health"), None, h.get("timeout", 5), port_var="$hport",
                                      scheme=h.get("scheme") or "http"))
    if spec.nginx and spec.app:
        h = spec.health
        probe("nginx_proxy", _http_snippet(spec, "https" if spec.tls else "nginx", h.get("method", "GET"),
                                           h.get("path", "/health"), _slot(spec, "h.health"), None,
                                           h.get("timeout", 5)))
    if spec.app and (spec.systemd or spec.docker):
        probe("current", f"readlink -- {q(spec.current)} && test -d {q(spec.current + '/')} && echo isdir")
        probe("release_log", f"tail -n 200 -- {q(spec.release_log)}")
        if spec.blue_green and spec.systemd:
            probe("slot", f"readlink -- {q(spec.state_dir + '/slots/')}\"$port\"")
    for i, c in enumerate(spec.http_checks):
        if c.session or c.refs:
            probe(f"http.{i}", _step_snippet(spec, i, c, spec.health.get("timeout", 5)))
        else:
            probe(f"http.{i}", _http_snippet(spec, c.via, c.method, c.path, _slot(spec, f"h.http.{i}"), c.body,
                                             spec.health.get("timeout", 5)))
    P.extend(_private_teardown(spec))
    return "\n".join(P) + "\n"


@dataclass
class Fact:
    rc: int
    out: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


def parse_facts(text: str) -> dict[str, Fact]:
    facts: dict[str, Fact] = {}
    lines = text.splitlines()
    for i, ln in enumerate(lines):
        if not ln.startswith(MARK + " "):
            continue
        parts = ln.split(" ")
        if len(parts) < 3:
            continue
        name, rc = parts[1], parts[2]
        payload = lines[i + 1] if i + 1 < len(lines) else ""
        try:
            out = base64.b64decode(payload).decode("utf-8", "replace")
        except ValueError:
            out = ""
        facts[name] = Fact(int(rc) if rc.lstrip("-").isdigit() else 255, out)
    return facts


# -- parsers of command output (pure, unit-tested) --------------------------------

def parse_kv(text: str) -> dict[str, str]:
    out = {}
    for ln in text.splitlines():
        k, sep, v = ln.partition("=")
        if sep:
            out[k.strip()] = v.strip()
    return out


def parse_stat(text: str) -> dict[str, dict]:
    """Lines `path|owner|group|mode|type` (or `path|MISSING`)."""
    out = {}
    for ln in text.splitlines():
        parts = ln.split("|")
        if len(parts) == 2 and parts[1] == "MISSING":
            out[parts[0]] = None
        elif len(parts) >= 5:
            out[parts[0]] = {"owner": parts[1], "group": parts[2], "mode": f"{int(parts[3], 8):04o}",
                             "type": parts[4]}
    return out


def parse_swaps(text: str) -> dict[str, int]:
    """/proc/swaps -> {path: size in bytes}."""
    out = {}
    for ln in text.splitlines()[1:]:
        f = ln.split()
        if len(f) >= 3 and f[2].isdigit():
            out[f[0].replace("\\040", " ")] = int(f[2]) * 1024
    return out


def fstab_swap_lines(text: str, path: str) -> list[str]:
    """Active (uncommented) fstab lines that mount `path` as swap."""
    out = []
    for ln in text.splitlines():
        s = ln.strip()
        if not s or s.startswith("#"):
            continue
        f = s.split()
        if len(f) >= 3 and f[0] == path and f[2] == "swap":
            out.append(s)
    return out


def parse_listen(text: str) -> set[int]:
    """`ss -Hltn` -> set of listening TCP ports."""
    ports = set()
    for ln in text.splitlines():
        f = ln.split()
        if len(f) >= 4:
            port = f[3].rsplit(":", 1)[-1]
            if port.isdigit():
                ports.add(int(port))
    return ports


def parse_failed_units(text: str) -> list[str]:
    out = []
    for ln in text.splitlines():
        f = ln.split()
        if f and f[0] not in ("●", "*"):
            out.append(f[0])
        elif len(f) > 1:
            out.append(f[1])
    return out


def parse_packages(text: str) -> dict[str, bool]:
    """dpkg-query/rpm output -> {package: installed}."""
    out = {}
    for ln in text.splitlines():
        if "\t" in ln:
            name, status = ln.split("\t", 1)
            out[name.strip()] = status.strip().startswith("ii")
        else:
            m = re.search(r"no packages found matching (\S+)|package (\S+) is not installed", ln)
            if m:
                out[(m.group(1) or m.group(2)).strip()] = False
    return out


_DN_CN = re.compile(r"CN\s*=\s*([^,/]+)")


@dataclass
class CertInfo:
    not_after: datetime | None
    issuer: str
    subject: str
    names: list


def parse_cert(text: str) -> CertInfo | None:
    """`openssl x509 -noout -enddate -issuer -subject -ext subjectAltName`."""
    not_after = None
    issuer = subject = ""
    names: list = []
    lines = text.splitlines()
    for i, ln in enumerate(lines):
        if ln.startswith("notAfter="):
            raw = " ".join(ln.split("=", 1)[1].split())
            try:
                not_after = datetime.strptime(raw, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=timezone.utc)
            except ValueError:
                not_after = None
        elif ln.startswith("issuer="):
            issuer = ln.split("=", 1)[1].strip()
        elif ln.startswith("subject="):
            subject = ln.split("=", 1)[1].strip()
        elif "Subject Alternative Name" in ln and i + 1 < len(lines):
            names = [n.strip()[4:] for n in lines[i + 1].split(",") if n.strip().startswith("DNS:")]
    if not_after is None and not issuer:
        return None
    if not names:
        m = _DN_CN.search(subject)
        names = [m.group(1).strip()] if m else []
    return CertInfo(not_after, issuer, subject, names)


def name_covered(domain: str, names: list) -> bool:
    for n in names:
        if n == domain:
            return True
        if n.startswith("*.") and "." in domain and domain.split(".", 1)[1] == n[2:]:
            return True
    return False


@dataclass
class HttpResponse:
    curl_rc: int
    status: int
    error: str
    body: str


def parse_http(text: str) -> HttpResponse:
    lines = text.split("\n", 2)
    head = (lines[0] if lines else "").split()
    rc = int(head[0]) if head and head[0].lstrip("-").isdigit() else 255
    status = int(head[1]) if len(head) > 1 and head[1].isdigit() else 0
    err = lines[1].strip() if len(lines) > 1 else ""
    body = lines[2] if len(lines) > 2 else ""
    return HttpResponse(rc, status, err, body)


def snippet(text: str, n: int = 120) -> str:
    one = " ".join(text.split())
    return one if len(one) <= n else one[: n - 3] + "..."


# -- the checks ----------------------------------------------------------------------------

@dataclass
class Probe:
    """What a check looks at: the expectations and the gathered facts."""

    spec: Spec
    facts: dict
    stage: str | None = None
    # session name -> (step, check) that failed or was skipped: later steps are skipped
    sessions_failed: dict = field(default_factory=dict)

    def fact(self, name: str) -> Fact:
        f = self.facts.get(name)
        if f is None:
            raise CheckSkipped(f"no '{name}' fact was gathered")
        return f

    @property
    def port(self) -> int | None:
        f = self.facts.get("port")
        t = f.out.strip() if f else ""
        return int(t) if t.isdigit() else None

    @property
    def in_container(self) -> str | None:
        f = self.facts.get("virt")
        if f and f.ok and f.out.strip() and f.out.strip() != "none":
            return f.out.strip()
        return None


@dataclass(frozen=True)
class Check:
    name: str
    fn: Callable[[Probe], str]
    stages: tuple            # gate stages that run it (tasks/verify/gate.py run_gate); `fab verify` runs all
    applies: Callable[[Spec], bool]
    needs: tuple = ()        # checks that must have passed (else this one is skipped)
    doc: str = ""


def _mode_problem(actual: str, expected: str) -> str:
    a, e = int(actual, 8), int(expected, 8)
    notes = []
    if a & 0o007 and not e & 0o007:
        notes.append("world bits set")
    elif a & 0o070 and not e & 0o070:
        notes.append("group bits set")
    return f"mode {actual}, expected {expected}" + (f" ({', '.join(notes)})" if notes else "")


def expected_packages(spec: Spec, os_release: str) -> list[str]:
    """What bootstrap installs on this platform: the inventory's `packages`
    plus what the app kind, nginx and TLS need (tasks/cli/bootstrap.py)."""
    from ..config import platforms

    try:
        plat = platforms.detect(os_release)
    except platforms.UnsupportedPlatform:
        return list(spec.packages)
    if spec.bootstrap is not None:
        from ..resources.packages import wanted_packages

        return wanted_packages(spec.bootstrap, plat, spec.tls_spec if spec.tls else None)
    return list(dict.fromkeys(platforms.base_packages(plat) + list(spec.packages)))


def check_packages(p: Probe) -> str:
    want = expected_packages(p.spec, p.fact("os").out)
    got = parse_packages(p.fact("packages").out)
    missing = [x for x in want if not got.get(x)]
    if missing:
        raise CheckFailed(f"packages not installed: {', '.join(missing)}")
    return f"{len(want)} package(s) installed"


def _swap_real(p: Probe) -> tuple[str, str]:
    """(the swap path with links resolved, the filesystem type holding it)."""
    f = p.facts.get("swapreal")
    lines = f.out.split("\n") if f and f.ok else []
    return (lines[0].strip() if lines else p.spec.swap_path), (lines[1].strip() if len(lines) > 1 else "")


def check_swap_active(p: Probe) -> str:
    s = p.spec
    swaps = parse_swaps(p.fact("swaps").out)
    real, fs = _swap_real(p)
    # the target first: /proc/swaps is kernel-global, so in a container another host's
    # "/swapfile" may be listed while this host's linked swap file shows by its target
    name = real if real in swaps else s.swap_path
    if name not in swaps:
        others = {k: v for k, v in swaps.items() if k not in (s.swap_path, real)}
        sf = p.facts.get("swapfile")
        if sum(others.values()) >= s.swap_bytes and not (sf and sf.ok):
            # bootstrap leaves swap.path alone when enough swap is active elsewhere
            return f"enough swap active elsewhere: {', '.join(others)} ({_human(sum(others.values()))})"
        virt = p.in_container
        if virt and fs == "overlayfs":
            raise CheckSkipped(f"swap cannot be enabled inside this {virt} container ({s.swap_path} is on "
                               "overlayfs, which cannot hold a swap file); bootstrap skips swapon there too")
        other = f" (active swap: {', '.join(swaps)})" if swaps else " (no swap is active)"
        raise CheckFailed(f"swap {s.swap_path} is not active{other}; expected {s.swap_size}: "
                          f"run `swapon {s.swap_path}` or re-run bootstrap")
    size = swaps[name]
    # /proc/swaps leaves out the first page (the swap header)
    if abs(size + 4096 - s.swap_bytes) > s.swap_bytes * s.swap_tolerance:
        raise CheckFailed(f"swap {s.swap_path} is {_human(size)}, expected {s.swap_size} "
                          f"(±{s.swap_tolerance:.0%}, verify.swap_tolerance)")
    return f"{s.swap_path} active, {_human(size)}"


def check_swap_fstab(p: Probe) -> str:
    s = p.spec
    lines = fstab_swap_lines(p.fact("fstab").out, s.swap_path)
    if not lines:
        sf = p.facts.get("swapfile")
        others = {k: v for k, v in parse_swaps(p.fact("swaps").out).items() if k != s.swap_path}
        if sum(others.values()) >= s.swap_bytes and not (sf and sf.ok):
            raise CheckSkipped(f"{s.swap_path} not used: enough swap active elsewhere ({', '.join(others)})")
        raise CheckFailed(f"/etc/fstab has no swap line for {s.swap_path} (swap would be gone after a reboot)")
    if len(lines) > 1:
        raise CheckFailed(f"/etc/fstab has {len(lines)} swap lines for {s.swap_path}, expected exactly one")
    return f"one fstab line for {s.swap_path}"


def check_app_user(p: Probe) -> str:
    s = p.spec
    f = p.fact("user")
    if not f.ok:
        first = snippet(f.out, 100)
        raise CheckFailed(f"app user '{s.user}' or group '{s.group}' missing ({first})")
    return f"user {s.user}, group {s.group}"


def check_app_dirs(p: Probe) -> str:
    got = parse_stat(p.fact("dirs").out)
    problems = []
    for path, owner, group, mode in p.spec.dirs():
        st = got.get(path)
        if st is None:
            problems.append(f"{path} is missing")
            continue
        if st["type"] != "directory":
            problems.append(f"{path} is a {st['type']}, expected a directory")
            continue
        if owner and st["owner"] != owner or group and st["group"] != group:
            problems.append(f"{path} is owned by {st['owner']}:{st['group']}, expected "
                            f"{owner or st['owner']}:{group or st['group']}")
        if mode and st["mode"] != mode:
            problems.append(f"{path} has {_mode_problem(st['mode'], mode)}")
    if problems:
        raise CheckFailed("; ".join(problems))
    return f"{len(got)} directories with the expected owners and modes"


def _env_stat(p: Probe) -> dict:
    st = parse_stat(p.fact("env").out).get(p.spec.env_path)
    if not st:
        raise CheckFailed(f"env file {p.spec.env_path} is missing")
    return st


def check_env_present(p: Probe) -> str:
    st = _env_stat(p)
    if st["type"] != "regular file" and st["type"] != "regular empty file":
        raise CheckFailed(f"env file {p.spec.env_path} is a {st['type']}, expected a regular file")
    return f"{p.spec.env_path} present"


def check_env_owner(p: Probe) -> str:
    s, st = p.spec, _env_stat(p)
    if (st["owner"], st["group"]) != (s.env_owner, s.env_group):
        raise CheckFailed(f"env file {s.env_path} is owned by {st['owner']}:{st['group']}, expected "
                          f"{s.env_owner}:{s.env_group} (env.owner/env.group)")
    return f"{st['owner']}:{st['group']}"


def check_env_mode(p: Probe) -> str:
    s, st = p.spec, _env_stat(p)
    if int(s.env_mode, 8) & 0o007:
        raise CheckFailed(f"env.mode {s.env_mode} in the inventory lets every user read the env file "
                          f"{s.env_path}; use 0600 or 0640")
    if st["mode"] != s.env_mode:
        raise CheckFailed(f"env file {s.env_path} has {_mode_problem(st['mode'], s.env_mode)}")
    return st["mode"]


def _docker_files_check(kind: str):
    """docker_secrets / docker_certs: the managed dir and each file with the
    owner and mode bootstrap gives them (tasks/resources/docker_files.py)."""
    key = "docker.secrets_dir" if kind == "secrets" else "docker.certs_dir"

    def fn(p: Probe) -> str:
        _, d, owner, group, mode, files = next(x for x in p.spec.docker_sets if x[0] == kind)
        stat_text, _, listing = p.fact(f"docker_{kind}").out.partition("\n--\n")
        got = parse_stat(stat_text)
        st = got.get(d)
        if st is None:
            raise CheckFailed(f"{key} {d} is missing (run fab bootstrap)")
        if st["type"] != "directory":
            raise CheckFailed(f"{key} {d} is a {st['type']}, expected a directory")
        problems = []
        if (st["owner"], st["group"]) != (owner, group):
            problems.append(f"{d} is owned by {st['owner']}:{st['group']}, expected {owner}:{group}")
        if st["mode"] != mode:
            problems.append(f"{d} has {_mode_problem(st['mode'], mode)}")
        for path, fo, fg, fm in files:
            fst = got.get(path)
            if fst is None:
                problems.append(f"{path} is missing")
            elif not fst["type"].startswith("regular"):
                problems.append(f"{path} is a {fst['type']}, expected a regular file")
            else:
                if (fst["owner"], fst["group"]) != (fo, fg):
                    problems.append(f"{path} is owned by {fst['owner']}:{fst['group']}, expected {fo}:{fg}")
                if fst["mode"] != fm:
                    problems.append(f"{path} has {_mode_problem(fst['mode'], fm)}")
        if problems:
            raise CheckFailed("; ".join(problems) + " (fab bootstrap restores them)")
        managed = {f[0].rsplit("/", 1)[-1] for f in files}
        extra = [n for n in listing.splitlines() if n and n not in managed]
        fmode = files[0][3] if files else ""
        return (f"{d} {mode} {owner}:{group}, {len(files)} file(s)" + (f" {fmode}" if fmode else "")
                + (f"; also there, not managed by fabship: {', '.join(extra)}" if extra else ""))

    fn.__name__ = f"check_docker_{kind}"
    return fn


def _unit_props(p: Probe) -> tuple[str, dict]:
    port = p.port
    if p.spec.blue_green and not port:
        raise CheckFailed(f"no live port: nginx upstream {p.spec.upstream_file} names no port "
                          "(has the app been deployed?)")
    props = parse_kv(p.fact("unit").out)
    return props.get("Id") or p.spec.unit_for(port) or "?", props


def check_unit_enabled(p: Probe) -> str:
    unit, props = _unit_props(p)
    if props.get("LoadState") != "loaded":
        raise CheckFailed(f"unit {unit} is not installed (LoadState={props.get('LoadState') or '?'})")
    state = props.get("UnitFileState", "")
    if state not in ("enabled", "enabled-runtime", "static", "indirect", "generated"):
        raise CheckFailed(f"unit {unit} is {state or 'not enabled'}, expected enabled (it would not start "
                          f"after a reboot): systemctl enable {unit}")
    return f"{unit} {state}"


def check_unit_active(p: Probe) -> str:
    unit, props = _unit_props(p)
    active, sub = props.get("ActiveState", "?"), props.get("SubState", "?")
    if active != "active" or sub not in ("running", "exited", "listening"):
        result = props.get("Result", "")
        why = f", result {result}" if result and result != "success" else ""
        raise CheckFailed(f"unit {unit} is {active} ({sub}){why}, expected active (running); "
                          f"see: journalctl -u {unit}")
    restarts = props.get("NRestarts", "0")
    return f"{unit} active ({sub})" + (f", {restarts} restart(s)" if restarts not in ("", "0") else "")


def check_container(p: Probe) -> str:
    rows = [ln.split("|") for ln in p.fact("containers").out.splitlines() if ln.count("|") >= 3]
    running = [r for r in rows if r[2] == "running"]
    port = p.port
    if p.spec.blue_green and port:
        running_on = [r for r in running if r[1] == str(port)]
        if not running_on:
            raise CheckFailed(f"no running container of {p.spec.app} on live port {port} "
                              f"(containers: {', '.join(f'{r[0]} {r[2]}' for r in rows) or 'none'})")
        return f"{running_on[0][0]} running"
    if not running:
        raise CheckFailed(f"no running container of {p.spec.app} "
                          f"(containers: {', '.join(f'{r[0]} {r[2]}' for r in rows) or 'none'})")
    if p.spec.kind == "compose":
        down = [r for r in rows if r[2] != "running"]
        if down:
            raise CheckFailed(f"compose project {p.spec.compose_project}: not running: "
                              + ", ".join(f"{r[0]} ({r[3] or r[2]})" for r in down))
    return ", ".join(r[0] for r in running) + " running"


def check_failed_units(p: Probe) -> str:
    f = p.fact("failed")
    if not f.ok:
        raise CheckSkipped(f"cannot list systemd units: {snippet(f.out, 120)}")
    failed = [u for u in parse_failed_units(f.out) if u not in p.spec.ignore_failed_units]
    if failed:
        raise CheckFailed(f"failed systemd units: {', '.join(failed)} (systemctl status {failed[0]})")
    return "no failed units"


def check_nginx_config(p: Probe) -> str:
    f = p.fact("nginx_t")
    if not f.ok:
        lines = [ln for ln in f.out.splitlines() if "[emerg]" in ln or "failed" in ln] or f.out.splitlines()
        first = lines[0] if lines else "no output"
        # "2026/01/01 00:00:00 [emerg] 12#12: unknown directive ..." or "nginx: [emerg] unknown ..."
        m = re.search(r"\[emerg\]\s+(?:\d+#\d+:\s+)?(.*)", first)
        raise CheckFailed(f"nginx -t fails: {snippet(m.group(1) if m else first, 200)}")
    return "nginx -t ok"


def check_nginx_running(p: Probe) -> str:
    state = p.fact("nginx_active").out.strip()
    if state != "active":
        raise CheckFailed(f"nginx is {state or 'not running'}, expected active; see: journalctl -u nginx")
    return "nginx active"


def _listening(port: int):
    def fn(p: Probe) -> str:
        ports = parse_listen(p.fact("listen").out)
        if port not in ports:
            raise CheckFailed(f"nothing listens on TCP port {port} (expected nginx)")
        return f"listening on {port}"

    fn.__name__ = f"check_listen_{port}"
    return fn


def check_cert(p: Probe) -> str:
    s = p.spec
    d0 = s.domains[0]
    info = parse_cert(p.fact("cert").out)
    if info is None:
        raise CheckFailed(f"no certificate served on 127.0.0.1:443 for {d0} (openssl s_client got none)")
    problems = []
    now = datetime.fromtimestamp(int(p.fact("now").out.strip() or 0), timezone.utc)
    days = None
    if info.not_after is None:
        problems.append("cannot read its expiry date")
    else:
        days = (info.not_after - now).total_seconds() / 86400
        if days < 0:
            problems.append(f"expired on {info.not_after:%Y-%m-%d} ({-days:.0f} days ago)")
        elif days < s.cert_min_days:
            problems.append(f"expires on {info.not_after:%Y-%m-%d}, in {days:.0f} days: fewer than "
                            f"{s.cert_min_days} (verify.cert_min_days)")
    missing = [d for d in s.domains if not name_covered(d, info.names)]
    if missing:
        problems.append(f"does not cover {', '.join(missing)} (names: {', '.join(info.names) or 'none'})")
    chain = chain_problem(p)
    if chain:
        problems.append(chain)
    if s.cert_issuer and s.cert_issuer.lower() not in info.issuer.lower():
        problems.append(f"issuer is '{info.issuer}', expected '{s.cert_issuer}' (verify.cert_issuer)")
    if problems:
        raise CheckFailed(f"certificate for {d0}: " + "; ".join(problems))
    return f"valid for {d0} until {info.not_after:%Y-%m-%d} ({days:.0f} days), issuer {_cn(info.issuer)}"


def chain_problem(p: Probe) -> str:
    """Why the served chain does not verify (openssl verify against the
    configured CA or the host's store), or "" when it does. An issuer name
    alone proves nothing: anyone can self-sign a certificate with any name."""
    f = p.facts.get("cert_chain")
    if f is None:
        return "its chain was not checked (no cert_chain fact)"
    if f.ok and re.search(r": OK\s*$", f.out.strip()):
        return ""
    errors = [ln.strip() for ln in f.out.splitlines() if re.match(r"\s*error \d+ at", ln)]
    why = errors[-1] if errors else snippet(f.out, 160) or f"openssl verify exit {f.rc}"
    why = re.sub(r"^error (\d+) at (\d+) depth lookup: ?", r"", why) or why
    return f"does not chain to a trusted CA ({why}; trust: {p.spec.cert_ca_from})"


def _cn(dn: str) -> str:
    m = _DN_CN.search(dn)
    return m.group(1).strip() if m else dn


def check_redirect(p: Probe) -> str:
    d0 = p.spec.domains[0]
    out = p.fact("redirect").out.strip().split()
    status = int(out[0]) if out and out[0].isdigit() else 0
    loc = out[1] if len(out) > 1 else ""
    if status not in (301, 302, 307, 308) or not loc.startswith(f"https://{d0}"):
        got = f"{status} {loc}".strip() if status else f"no answer ({snippet(' '.join(out), 80) or 'curl failed'})"
        raise CheckFailed(f"http://{d0}/ answers {got}, expected a redirect to https://{d0}/")
    return f"{status} -> {loc}"


def _http_result(p: Probe, fact: str, what: str, expect: int, contains: str | None) -> str:
    r = parse_http(p.fact(fact).out)
    from ..resources.envfile import mask_pairs

    # the app's answer may echo env values: in messages KEY=VALUE and friends are
    # masked here, registered secrets again wherever a message is printed (runner)
    shown = mask_pairs(r.body, p.spec.mask_keys)
    if r.curl_rc != 0:
        raise CheckFailed(f"{what}: no answer ({r.error or f'curl exit {r.curl_rc}'})")
    if r.status != expect:
        raise CheckFailed(f"{what} answered {r.status}, expected {expect}"
                          + (f" (body: {snippet(shown, 100)})" if r.body.strip() else ""))
    if contains and contains not in r.body:
        raise CheckFailed(f"{what} answered {r.status} but the body lacks {contains!r} "
                          f"(body: {snippet(shown, 100)})")
    return f"{r.status}"


def check_health(p: Probe) -> str:
    h = p.spec.health
    port = h.get("port") or p.port
    what = f"{h.get('method', 'GET')} {h.get('scheme') or 'http'}://127.0.0.1:{port}{h.get('path', '/health')}"
    return what + " -> " + _http_result(p, "health", what, h.get("expect_status", 200), h.get("body_contains"))


def check_nginx_proxy(p: Probe) -> str:
    s, h = p.spec, p.spec.health
    base = f"https://{s.server_name}" if s.tls else "http://127.0.0.1" + (
        f" (Host: {s.server_name})" if s.server_name else "")
    what = f"{h.get('method', 'GET')} {base}{h.get('path', '/health')} through nginx"
    return what + " -> " + _http_result(p, "nginx_proxy", what, h.get("expect_status", 200), h.get("body_contains"))


def _current_id(p: Probe) -> str:
    f = p.fact("current")
    lines = f.out.splitlines()
    target = lines[0].strip() if lines else ""
    if not target:
        raise CheckFailed(f"{p.spec.current} does not exist (no release deployed yet?)")
    if "isdir" not in lines[1:]:
        raise CheckFailed(f"{p.spec.current} -> {target}, which is not a directory (release deleted?)")
    return target.rstrip("/").rsplit("/", 1)[-1]


def check_current_release(p: Probe) -> str:
    rid = _current_id(p)
    from ..facts.releases import parse_log

    entries = [e for e in parse_log(p.fact("release_log").out) if e.id == rid and e.action == "deploy"]
    if any(e.result in COMPLETED for e in entries):
        return f"current -> {rid} (completed)"
    results = ", ".join(e.result or "?" for e in entries)
    raise CheckFailed(f"current -> {rid}, which is not a completed release in {p.spec.release_log}"
                      + (f" (recorded: {results})" if results else " (not recorded)"))


def check_active_slot(p: Probe) -> str:
    rid = _current_id(p)
    port = p.port
    target = p.fact("slot").out.strip()
    slot_id = target.rstrip("/").rsplit("/", 1)[-1] if target else ""
    if slot_id != rid:
        raise CheckFailed(f"nginx sends traffic to port {port}, whose slot runs "
                          f"{slot_id or 'nothing'}, but current is {rid}")
    return f"port {port} runs {rid}"


def _http_check(index: int, c: HttpCheck):
    def fn(p: Probe) -> str:
        s = p.spec
        if c.via == "https" or (c.via == "nginx" and s.tls):
            base = f"https://{s.server_name}"
        elif c.via == "nginx":
            base = "http://127.0.0.1" + (f" (Host: {s.server_name})" if s.server_name else "")
        else:
            base = f"http://127.0.0.1:{p.port}"
        # header names only: values may be tokens
        what = f"{c.method} {base}{c.path}" + (f" [headers: {', '.join(c.headers)}]" if c.headers else "")
        if c.session or c.refs:
            return what + " -> " + _step_result(p, index, c, what)
        return what + " -> " + _http_result(p, f"http.{index}", what, c.expect_status, c.body_contains)

    return fn


def _step_result(p: Probe, index: int, c: HttpCheck, what: str) -> str:
    """The verdict of one `sreq` step (see _SREQ). After a failed or skipped step
    of a session, its later steps are skipped naming it (the host did not send them)."""
    if c.session and c.session in p.sessions_failed:
        step, name = p.sessions_failed[c.session]
        raise CheckSkipped(f"session step {step} failed ({name})")
    try:
        out = p.fact(f"http.{index}").out
        head = out.split("\n", 1)[0].split()
        if head[:1] == ["skip"]:  # the host saw an earlier step fail
            raise CheckSkipped(f"session step {head[1] if len(head) > 1 else '?'} failed")
        if head[:1] == ["build"]:
            err = parse_http(out).error
            raise CheckFailed(f"{what}: cannot build the request: {err or 'unknown error'}")
        return _http_result(p, f"http.{index}", what, c.expect_status, c.body_contains)
    except (CheckFailed, CheckSkipped):
        if c.session:
            p.sessions_failed.setdefault(c.session, (c.step, f"http:{c.name}"))
        raise


# The catalogue. Order matters: a check's `needs` come before it.
_ALL = ("bootstrap", "deploy", "rotate-env", "rollback")
_APP = ("deploy", "rotate-env", "rollback")


def _has_app(s): return bool(s.app)
def _has_unit(s): return s.systemd
def _has_container(s): return s.docker


def _runs_app(s):
    return s.systemd or s.docker


def static_checks() -> list[Check]:
    return [
        Check("packages", check_packages, ("bootstrap",), lambda s: True,
              doc="the inventory's `packages` and what the app kind, nginx and TLS need are installed"),
        Check("swap_active", check_swap_active, ("bootstrap",), lambda s: bool(s.swap_path),
              doc="swap file active at swap.size (± verify.swap_tolerance)"),
        Check("swap_fstab_once", check_swap_fstab, ("bootstrap",), lambda s: bool(s.swap_path),
              doc="exactly one /etc/fstab line for the swap file"),
        Check("app_user", check_app_user, ("bootstrap",), _has_app, doc="app user and group exist"),
        Check("app_dirs", check_app_dirs, ("bootstrap", "deploy"), _has_app,
              doc="app root, releases, shared, .fabship and config dir with their owners and modes"),
        Check("env_file", check_env_present, _ALL, lambda s: bool(s.env_path), doc="env file present"),
        Check("env_file_owner", check_env_owner, _ALL, lambda s: bool(s.env_path), ("env_file",),
              doc="env file owner:group as env.owner/env.group"),
        Check("env_file_mode", check_env_mode, _ALL, lambda s: bool(s.env_path), ("env_file",),
              doc="env file mode as env.mode, never world-accessible"),
        Check("docker_secrets", _docker_files_check("secrets"), ("bootstrap", "deploy"),
              lambda s: any(x[0] == "secrets" for x in s.docker_sets),
              doc="docker.secrets_dir 0700 (docker.secrets_owner/secrets_group) and each docker.secret_files "
                  "file 0400"),
        Check("docker_certs", _docker_files_check("certs"), ("bootstrap", "deploy"),
              lambda s: any(x[0] == "certs" for x in s.docker_sets),
              doc="docker.certs_dir 0755 root:root and each docker.cert_files file 0444"),
        # Not in the deploy/rollback/rotate-env gates: they run right after the traffic switch,
        # before the new blue/green instance is enabled and `current` re-pointed.
        Check("unit_enabled", check_unit_enabled, ("bootstrap",), _has_unit,
              doc="the app's systemd unit (the live blue/green instance) is enabled"),
        Check("unit_active", check_unit_active, _APP, _has_unit, doc="the app's unit is active (running)"),
        Check("container_running", check_container, _APP, _has_container,
              doc="the app's container runs (on the live port for blue/green)"),
        # fab verify only: an unrelated failed unit must not roll every deploy back
        Check("failed_units", check_failed_units, (), lambda s: True, doc="no failed systemd units"),
        Check("nginx_config", check_nginx_config, _ALL, lambda s: s.nginx, doc="nginx -t passes"),
        Check("nginx_running", check_nginx_running, _ALL, lambda s: s.nginx, doc="nginx is active"),
        Check("listen_http", _listening(80), _ALL, lambda s: s.nginx, ("nginx_running",),
              doc="something listens on port 80"),
        Check("listen_https", _listening(443), _ALL, lambda s: s.tls, ("nginx_running",),
              doc="something listens on port 443"),
        Check("cert_valid", check_cert, ("bootstrap", "deploy"), lambda s: s.tls and bool(s.domains),
              ("listen_https",),
              doc="the certificate served for the first domain is unexpired, has more than "
                  "verify.cert_min_days left, covers every domain and has verify.cert_issuer"),
        Check("http_redirect", check_redirect, ("bootstrap", "deploy"), lambda s: s.tls and bool(s.domains),
              ("listen_http",), doc="http:// redirects to https://"),
        Check("health", check_health, _APP, lambda s: _runs_app(s) or bool(s.health.get("port")),
              ("unit_active", "container_running"), doc="the health URL answers on the app's live port"),
        Check("nginx_proxy", check_nginx_proxy, _APP, lambda s: s.nginx and bool(s.app),
              ("health", "nginx_running"), doc="the health URL answers through nginx (https when TLS is on)"),
        Check("current_release", check_current_release, (), _runs_app,
              doc="`current` points to a completed release"),
        Check("active_slot", check_active_slot, (), lambda s: s.blue_green and s.systemd,
              ("current_release", "unit_active"), doc="the live blue/green port runs the current release"),
    ]


def checks_for(spec: Spec) -> list[Check]:
    """Every check that applies to this host (static ones + the inventory's HTTP checks)."""
    out = [c for c in static_checks() if c.applies(spec)]
    names = {c.name for c in out}
    for i, hc in enumerate(spec.http_checks):
        needs = tuple(n for n in ("unit_active", "container_running") if n in names)
        needs += ("nginx_running",) if hc.via != "app" else ()
        out.append(Check(f"http:{hc.name}", _http_check(i, hc), _APP, lambda s: True, needs,
                         doc=f"{hc.method} {hc.path} answers {hc.expect_status}"))
    return out


STATIC_NAMES = tuple(c.name for c in static_checks())


def select(checks: list[Check], *, stage: str | None = None, only: list[str] | None = None,
           skip: list[str] | None = None) -> list[Check]:
    """Checks for a gate stage (None = all), optionally narrowed with `only`
    (names or prefixes ending in '*', e.g. 'http:*') and minus `skip`."""
    def match(name, pats):
        return any(name == x or (x.endswith("*") and name.startswith(x[:-1])) for x in pats)

    out = [c for c in checks if stage is None or stage in c.stages]
    if only:
        out = [c for c in out if match(c.name, only)]
    if skip:
        out = [c for c in out if not match(c.name, skip)]
    return out


def unknown_names(names: list[str], spec_checks: list[str]) -> list[str]:
    known = set(STATIC_NAMES) | set(spec_checks)
    return [n for n in names if not (n in known or (n.endswith("*") and any(
        k.startswith(n[:-1]) for k in known)) or n.startswith("http:"))]


@dataclass
class CheckResult:
    name: str
    status: str
    message: str

    def as_dict(self):
        return {"name": self.name, "status": self.status, "message": self.message}


def evaluate(checks: list[Check], probe: Probe) -> list[CheckResult]:
    """Run the checks in order. A check whose prerequisite failed or was
    skipped is skipped naming it, so one fault is one failed check."""
    done: dict[str, tuple[str, str]] = {}   # name -> (status, the failed check at the root)
    out = []
    for c in checks:
        blocked = [n for n in c.needs if n in done and done[n][0] in (FAIL, SKIP)]
        if blocked:
            status, root = done[blocked[0]]
            if root:
                res = CheckResult(c.name, SKIP, f"{root} failed")
            else:
                res = CheckResult(c.name, SKIP, f"{blocked[0]} was skipped")
            done[c.name] = (SKIP, root)
        else:
            try:
                res = CheckResult(c.name, PASS, c.fn(probe) or "")
            except CheckSkipped as e:
                res = CheckResult(c.name, SKIP, str(e))
            except CheckFailed as e:
                res = CheckResult(c.name, FAIL, str(e))
            done[c.name] = (res.status, c.name if res.status == FAIL else "")
        out.append(res)
    return out


def _human(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
