"""`fab verify` and the verification gate: the checks of tasks/verify/checks.py run
against hosts over fabship's own SSH connection, through testinfra.

Why a custom testinfra backend (FabshipBackend) rather than testinfra's
`paramiko://`: testinfra's paramiko backend sets paramiko's WarningPolicy and
loads no known_hosts, so it talks to any host that answers (a warning in a
log nobody reads). fabship's connection (tasks/core/ssh.py) loads the inventory's
known_hosts and refuses unknown or changed keys. Running testinfra on that
connection keeps one SSH layer (same keys, user, sudo, timeouts), costs no
extra connection, and lets the gate reuse the connection the task already has
open. The pytest suite (tasks/verify/suite/) uses the same backend by default;
with `--hosts` it wraps paramiko:// in StrictParamikoBackend (known_hosts +
RejectPolicy) and recommends ssh:// with the ssh_config this module writes.

All facts come from one read-only script per host (one round trip); the
checks are pure functions over those facts.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import testinfra.backend.base
import testinfra.host

from ..core.errors import FabshipError
from . import checks as C
from . import probes as CP
from . import spec as CS

GATE_STEP = "verify gate"


# -- testinfra backends -----------------------------------------------------------------

class FabshipBackend(testinfra.backend.base.BaseBackend):
    """testinfra over a fabship HostContext: commands go through `ctx.run`
    (strict host keys, sudo -n for non-root users, output masking, the run
    record), on the connection the run already holds."""

    NAME = "fabship"

    def __init__(self, ctx, *args: Any, **kwargs: Any):
        self.ctx = ctx
        super().__init__(ctx.host.name, *args, **kwargs)

    def get_pytest_id(self) -> str:
        return self.ctx.host.name

    def run(self, command: str, *args: str, **kwargs: Any) -> testinfra.backend.base.CommandResult:
        cmd = self.get_command(command, *args)
        # never streamed (-vv): probe output is base64-framed, where masking cannot
        # see a secret; verify_host prints the decoded facts masked instead
        r = self.ctx.run(cmd, stdin=kwargs.get("stdin"), check=False, timeout=kwargs.get("timeout"),
                         stream=False, what="verify facts")
        return self.result(r.exited, cmd.encode("utf-8", "replace"), r.stdout, r.stderr)


def testinfra_host(ctx) -> testinfra.host.Host:
    host = ctx.data.get("testinfra_host")
    if host is None:
        backend = FabshipBackend(ctx)
        host = testinfra.host.Host(backend)
        backend.set_host(host)
        ctx.data["testinfra_host"] = host
    return host


def strict_paramiko_backend(hostspec: str, known_hosts: str, **kwargs):
    """testinfra's paramiko backend with real host key checking."""
    import paramiko
    from testinfra.backend.paramiko import ParamikoBackend

    from ..core.ssh import StrictPolicy

    class StrictParamikoBackend(ParamikoBackend):
        @property
        def client(self):  # testinfra's is a cached_property with WarningPolicy
            if getattr(self, "_strict_client", None) is None:
                client = paramiko.SSHClient()
                if Path(known_hosts).exists():
                    client.load_host_keys(known_hosts)
                client._host_keys_filename = None
                client.set_missing_host_key_policy(StrictPolicy(Path(known_hosts), int(self.host.port or 22)))
                cfg = {"hostname": self.host.name, "port": int(self.host.port or 22),
                       "username": self.host.user, "timeout": self.timeout}
                if self.ssh_identity_file:
                    cfg.update(key_filename=self.ssh_identity_file, look_for_keys=False)
                client.connect(**cfg)
                self._strict_client = client
            return self._strict_client

    return StrictParamikoBackend(hostspec, **kwargs)


# -- gathering and evaluating ----------------------------------------------------------

def run_with_stdin(host: testinfra.host.Host, command: str, stdin: bytes | None, timeout: float = 60):
    """host.run(command) with `stdin` fed to it (the facts script's header files
    and CA: never on a command line). testinfra's backends have no stdin, so each
    supported one is driven here: fabship's (ctx.run), strict paramiko (a channel
    of its client), ssh:// (the ssh command it builds, with input) and local."""
    import subprocess

    from testinfra.backend.local import LocalBackend
    from testinfra.backend.paramiko import ParamikoBackend
    from testinfra.backend.ssh import SshBackend

    b = host.backend
    if stdin is None:
        return host.run(command, timeout=timeout)
    if isinstance(b, FabshipBackend):
        return b.run(command, timeout=timeout, stdin=stdin)
    cmd = b.get_command(command)
    if isinstance(b, ParamikoBackend):
        chan = b.client.get_transport().open_session()
        try:
            chan.settimeout(timeout)
            chan.exec_command(b.encode(cmd))
            chan.sendall(stdin)
            chan.shutdown_write()
            out = b"".join(chan.makefile("rb"))
            err = b"".join(chan.makefile_stderr("rb"))
            return b.result(chan.recv_exit_status(), b.encode(cmd), out, err)
        finally:
            chan.close()
    if isinstance(b, SshBackend) and not b.host.password:
        argv, args = b._build_ssh_command(cmd)
        line = b.quote(" ".join(argv), *args)
    elif isinstance(b, LocalBackend):
        line = cmd
    else:
        raise FabshipError(f"verify: the {b.NAME}:// backend cannot send the facts script its stdin "
                           "(header values and the CA never go on a command line): use ssh://, paramiko:// "
                           "or fabship's own connection")
    p = subprocess.run(line, shell=True, input=stdin, capture_output=True, timeout=timeout)
    return b.result(p.returncode, b.encode(cmd), p.stdout, p.stderr)


def gather(host: testinfra.host.Host, spec: CS.Spec, timeout: float = 60) -> dict[str, CP.Fact]:
    """Every fact the checks need, in one round trip (one `sh -c`); header
    values and the CA certificate on its stdin."""
    script = CP.facts_script(spec)
    res = run_with_stdin(host, f"sh -c {CP.q(script)}", CP.facts_stdin(spec), timeout=timeout)
    facts = CP.parse_facts(res.stdout)
    if "now" not in facts:
        raise FabshipError(f"verify: the facts script failed on {host.backend.get_hostname()} "
                           f"(exit {res.rc}): {CP.snippet(res.stderr or res.stdout, 200)}")
    return facts


def plan(inv, host, stage: str | None = None, only: list | None = None) -> tuple[CS.Spec, list[C.Check]]:
    """Expectations and the selected checks for one host. Pure; raises
    ConfigError naming the inventory key when the verify section is wrong."""
    spec = build_spec(inv, host)
    selected = C.select(C.checks_for(spec), stage=stage, only=only, skip=spec.skip)
    return spec, selected


def build_spec(inv, host) -> CS.Spec:
    spec = CS.build_spec(inv, host)
    bad = C.unknown_names(spec.skip, [])
    if bad:
        raise inv.error("verify.skip", f"unknown check name(s): {', '.join(bad)}; known: "
                                       f"{', '.join(C.STATIC_NAMES)}, http:NAME")
    return spec


def verify_host(ctx, stage: str | None = None, only: list | None = None) -> list[C.CheckResult]:
    spec, selected = plan(ctx.inv, ctx.host, stage, only)
    if not selected:
        return []
    facts = gather(testinfra_host(ctx), spec, timeout=max(60.0, float(spec.health.get("timeout", 5)) * 8))
    if ctx.verbose >= 2:  # what -vv used to stream as base64: decoded, then masked
        from ..resources.envfile import mask_pairs

        for name, f in facts.items():
            ctx.say(f"fact {name} (exit {f.rc}):")
            if name == "packages":  # every installed package: only how many
                ctx.say(f"  ({len(f.out.splitlines())} lines)")
                continue
            for ln in ctx.mask(mask_pairs(f.out, spec.mask_keys)).splitlines():
                ctx.say(f"  {ln}")
    return C.evaluate(selected, C.Probe(spec, facts, stage))


# -- the gate ---------------------------------------------------------------------------------

def gate_enabled(inv, stage: str) -> bool:
    g = inv.get("verify.gate") or {}
    return bool(g.get(stage, True))


def run_gate(ctx, stage: str | None = None, *, enabled: bool | None = None) -> list[C.CheckResult]:
    """The checks relevant to `stage` (bootstrap, deploy, rotate-env,
    rollback) on one host, after the task changed it. Records one step
    ("verify gate": ok, failed or skipped) and returns the failed checks;
    the caller decides what a failure means (deploy: a failed health check,
    so it rolls back). Skipped in dry-run, with --no-gate (`enabled=False`, or
    the run's options["gate"] False) and where verify.gate.STAGE is false.

    Also accepts a Run (gates every host that has not failed; the stage is the
    task name) for callers that gate after `run.each`."""
    from ..core.runner import Run

    if isinstance(ctx, Run):
        gate_run(ctx, stage or ctx.task, enabled=enabled)
        return []
    if stage is None:
        stage = ctx.run_.task
        if stage not in CS.STAGES:  # a task without a gate (e.g. a restart from another tool)
            return []
    if stage not in CS.STAGES:
        raise ValueError(f"unknown gate stage {stage!r}; expected one of {', '.join(CS.STAGES)}")
    if enabled is False or (getattr(ctx.run_, "options", None) or {}).get("gate") is False:
        ctx.skipped(GATE_STEP, "--no-gate")
        return []
    if not gate_enabled(ctx.inv, stage):
        ctx.skipped(GATE_STEP, f"verify.gate.{stage} is false")
        return []
    if ctx.dry_run:
        ctx.skipped(GATE_STEP, "dry run (nothing changed to verify)")
        return []
    t0 = time.monotonic()
    results = verify_host(ctx, stage)
    ctx.data["gate_results"] = results
    failed = [r for r in results if r.status == C.FAIL]
    passed = sum(1 for r in results if r.status == C.PASS)
    skipped = [r for r in results if r.status == C.SKIP]
    for r in skipped:
        ctx.debug(f"  gate: {r.name} skipped: {r.message}")
    if failed:
        ctx.record(GATE_STEP, "failed", "; ".join(f"{r.name}: {r.message}" for r in failed), t0)
    else:
        ctx.record(GATE_STEP, "ok", f"{passed} check(s) passed" + (f", {len(skipped)} skipped" if skipped
                                                                      else ""), t0)
    return failed


def gate_failure_message(failed: list[C.CheckResult]) -> str:
    """One line for a StepFailed / health failure built from gate failures."""
    return "verify gate failed: " + "; ".join(f"{r.name}: {r.message}" for r in failed)


def gate_run(run, stage: str, *, enabled: bool | None = None) -> dict[str, list]:
    """Gate every host of a run that has not failed and was not gated during
    the task already (activation gates inside tasks/release/activation.py); a host whose
    gate fails is marked failed (so the task exits non-zero)."""
    ok_hosts = [c.host for c in run.contexts.values() if not c.error and "gate_results" not in c.data]
    out: dict[str, list] = {}

    def one(ctx):
        failed = run_gate(ctx, stage, enabled=enabled)
        out[ctx.host.name] = failed
        if failed:
            ctx.error = gate_failure_message(failed)

    run.each(one, hosts=ok_hosts)
    return out


# -- fab verify ---------------------------------------------------------------------------------


# -- ssh_config for testinfra's ssh:// backend ---------------------------------------------

def ssh_config_text(inv, hosts) -> str:
    """An OpenSSH client config for the inventory's hosts with strict host key
    checking against the inventory's known_hosts (for `pytest --hosts=ssh://NAME
    --ssh-config=FILE`). Every value is one ssh_config word: whitespace, a quote,
    a '#' or a '%' (ssh's token escape) in a name, user or path is refused, so
    nothing can add a line (a ProxyCommand) to the file."""
    from ..core.runner import ssm_proxy_of
    from ..core.ssh import (
        check_key_file,
        known_hosts_path,
        link_option,
        parse_jump_hosts,
    )

    ssh = inv.data["ssh"]
    key = check_key_file(inv, ssh.get("key_file"))
    kh = known_hosts_path(inv)
    hops = parse_jump_hosts(ssh.get("jump_host"), ssh["user"])
    word = _ssh_config_word
    strict = ["  StrictHostKeyChecking yes", f"  UserKnownHostsFile {word(inv, 'ssh.known_hosts', str(kh))}",
              "  BatchMode yes", f"  ConnectTimeout {int(ssh['connect_timeout'])}"]
    # ssh -F reads no other config, and OpenSSH forwards no agent by default
    if link_option(ssh, "forward_agent"):
        strict.append("  ForwardAgent yes")
    if ssh.get("keepalive"):  # set in the inventory: OpenSSH gives up on a dead link the same way
        strict += [f"  ServerAliveInterval {max(1, round(ssh['keepalive']))}",
                   f"  ServerAliveCountMax {int(link_option(ssh, 'dead_after'))}"]
    if key:
        strict += [f"  IdentityFile {word(inv, 'ssh.key_file', key)}", "  IdentitiesOnly yes"]
    if any(c in str(inv.path) for c in "\n\r"):  # the comment line must stay one line
        raise inv.error("inventory", "the inventory's path has a line break")
    lines = [f"# written by `fab verify --write-ssh-config` for {inv.path}"]
    for h in hosts:
        lines += [f"Host {word(inv, 'hosts', h.name, h)}", f"  HostName {word(inv, 'hosts', h.address, h)}",
                  f"  User {word(inv, 'hosts', h.user, h)}", f"  Port {int(h.port)}", *strict]
        if hops:
            lines.append("  ProxyJump " + ",".join(word(inv, "ssh.jump_host", j.target) for j in hops))
        argv, key_name = ssm_proxy_of(inv, h)
        if argv:  # ssh.via: ssm: the same Session Manager proxy the run connects through, the key under its id
            lines += ["  ProxyCommand " + " ".join(word(inv, "ssh.ssm", a, h) for a in argv),
                      f"  HostKeyAlias {word(inv, 'ssh.ssm', key_name, h)}"]
    for j in hops:  # every bastion is checked as strictly as the hosts
        lines += [f"Host {word(inv, 'ssh.jump_host', j.address)}", *strict]
    return "\n".join(lines) + "\n"


def _ssh_config_word(inv, key: str, value: str, host=None) -> str:
    import re

    if not value or re.search(r"[\s\"'#%\\\x00-\x1f\x7f]", value):
        who = f"host {host.name!r}: " if host is not None and value != host.name else ""
        raise inv.error(key, f"{who}{value!r} cannot go into an ssh_config file (whitespace, quotes, "
                             f"'#', '%', '\\' or control characters)")
    return value


def write_ssh_config(inv, hosts, path: str) -> None:
    p = Path(path).expanduser()
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(ssh_config_text(inv, hosts))
