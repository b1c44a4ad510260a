"""(Just over 600 lines: each probe of the one fact script and the parser of its
output change together, so they sit together.)

The facts script verify runs: ONE read-only shell script per host that
gathers every fact the checks need (`facts_script(spec)`), each probe's output
framed once (base64 between markers) and parsed by `parse_facts`; header values
and the CA travel on its stdin (`facts_stdin`), never its command line. Then one
pure parser per fact kind (stat, swaps, listen, units, packages, certificates,
HTTP responses)."""
from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from datetime import datetime

from ..core.commands import quote
from ..facts.script import OWN_SWAPS, parse_x509
from .spec import _REF, HttpCheck, Spec, env_refs

MARK = "@@fabship-fact@@"


def q(value) -> str:
    return quote(value)   # the command builder's one quoting rule (refuses a Secret)


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
    if spec.nginx and spec.app:
        from ..resources.nginx import maintenance_flag

        # fab maintenance on|off: the flag file the site checks (its mtime: since when)
        probe("maintenance", f"stat -c %Y -- {q(maintenance_flag(spec.app))} 2>/dev/null || echo off")
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
    """The served certificate (facts/script.py parse_x509, the one openssl parser);
    None when there is none. Without subjectAltName the subject's CN names it."""
    x = parse_x509(text)
    if x.not_after is None and not x.issuer:
        return None
    names = x.names
    if not names:
        m = _DN_CN.search(x.subject)
        names = [m.group(1).strip()] if m else []
    return CertInfo(x.not_after, x.issuer, x.subject, names)


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
