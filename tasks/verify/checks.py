"""(One module for ~30 small check functions and their registry: each reads one
or two facts; spread out, the registry would import them all back.)

The verification checks: read-only questions about a host, each with a
stable name and a one-line failure message that says what is wrong and what
was expected.

How it fits together (pure, no connection here):
  Spec      what the inventory promises for one host (paths, owners, modes,
            units, ports, domains, HTTP checks) — `spec.build_spec(inv, host)`
  probes    one shell script that gathers every fact the checks need in a
            single round trip (`probes.facts_script(spec)`), parsed by
            `probes.parse_facts` (tasks/verify/probes.py)
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

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from .probes import (
    _DN_CN,
    Fact,
    fstab_swap_lines,
    name_covered,
    parse_cert,
    parse_failed_units,
    parse_http,
    parse_kv,
    parse_listen,
    parse_packages,
    parse_stat,
    parse_swaps,
    snippet,
)
from .spec import COMPLETED, HttpCheck, Spec

PASS, FAIL, SKIP = "passed", "failed", "skipped"


class CheckFailed(AssertionError):
    """The host is not in the promised state; the message says how."""


class CheckSkipped(Exception):
    """The check does not apply here (the message says why)."""


# -- what the inventory promises ------------------------------------------------------


# -- ${KEY} in HTTP check bodies and headers (values read on the host) ------------------


# -- the facts script: one round trip per host -----------------------------------------


# -- files on the facts script's stdin: headers and the CA ---------------------------------
#
# Header values may be tokens: they reach the host on the script's stdin, each
# probe's lines into its own file in the private dir (umask 077, so 0600) that curl
# reads with `-H @file`; the CA certificate for the chain check travels the same way.
# Each file is a known number of lines, read with the shell's `read` builtin (which
# never reads ahead), so one stdin carries them all.


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


# -- parsers of command output (pure, unit-tested) --------------------------------


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


def check_maintenance(p: Probe) -> str:
    """fab maintenance on: reported as such, not as the 503s it causes."""
    f = p.facts.get("maintenance")   # not gathered (older facts): nothing says it is on
    out = f.out.strip() if f else ""
    if not out.isdigit():
        return "off (nginx passes requests to the app)"
    since = datetime.fromtimestamp(int(out), timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    raise CheckFailed(f"maintenance mode is on since {since}: nginx answers 503 with the maintenance page "
                      "(the health check and ACME still pass); `fab maintenance off` ends it")


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
        # fab verify only: deploying during maintenance mode is what it is for
        Check("maintenance", check_maintenance, (), lambda s: s.nginx and bool(s.app),
              doc="maintenance mode is off (fab maintenance on|off)"),
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
