"""`fab rotate-env`: validated, atomic, versioned, reversible env rotation.

Before anything connects: load the new values (--env-file or env.source:
file, Secrets Manager, SSM), check them against env.contract (rule names in
messages, never values) and against differ_from inventories. Then per host,
under the deploy lock:

  1. facts (one round trip): the env file's sha256, owner/group/mode, a
     short hash per key (computed on the host: old values never leave it),
     and the current release;
  2. diff by key name (added/removed/changed; hashes only with --show-hashes);
  3. install: temp file 0600 in the target dir, fsync, rename; the previous
     version kept as PATH.prev (older ones PATH.prev.1..; env.keep_previous);
  4. restart with the deploy strategy and health-check (service.restart_app);
  5. on failure: put the previous file back (checked against its sha256),
     restart again, and fail the host with the reason;
  6. on success: snapshot the env file for the current release
     (APP_ROOT/.fabship/env/<release>.env, root 0600) so `fab rollback`
     restores code and env together; one audit line either way.

`--dry-run` validates, shows the key diff per host and changes nothing.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from ..core.commands import Cmd, script, sh
from ..core.dotenv import (
    describe_diff,
    key_diff,
    key_hashes_cmd,
    parse_key_hashes,
    render_dotenv,
    sha256_hex,
    value_hashes,
)
from ..core.errors import StepFailed
from ..core.step import CHANGED, FAILED, SKIP, Change, Failure, Record
from ..facts.script import applied_env_sha, parse_sha
from ..release.envsnap import (
    EnvTarget,
    _put_in_place,
    release_env_restore_cmd,
    snapshot_cmd,
)
from ..resources.envfile import docker_literal, install_env_file

MARK = "@@fabship:"
# Values shorter than this are not registered for output masking: masking
# "true" or "info" would garble output and run records, and a value that
# short is not a secret worth the name. (Nothing prints values anyway.)


# -- where the env file lives ---------------------------------------------------------


# -- command builders (pure) --------------------------------------------------------------

def facts_cmd(t: EnvTarget) -> Cmd:
    """One round trip: env file state, per-key hashes, current release."""
    return Cmd("sh", "-c", "\n".join([
        sh("f={}", t.path).render(),
        f"echo {MARK}file",
        'if [ -f "$f" ]; then echo "present $(sha256sum < "$f" | cut -d" " -f1) $(stat -c %U:%G:%a -- "$f")";'
        " else echo missing; fi",
        f"echo {MARK}keys",
        key_hashes_cmd(t.path).render() + " || true",
        f"echo {MARK}current",
        sh("readlink -- {} 2>/dev/null || true", t.current).render(),
        f"echo {MARK}applied",
        applied_env_sha(t.current, t.snapshots),   # what the running app was started with
        f"echo {MARK}end",
    ]))


@dataclass
class EnvFacts:
    exists: bool = False
    sha: str | None = None
    owner: str = ""
    group: str = ""
    mode: str = ""
    hashes: dict = field(default_factory=dict)
    current: str | None = None
    applied: str | None = None   # sha256 of the env the running release was started with (None: unknown)

    @property
    def pending(self) -> bool:
        """The env file was installed but the app was not restarted with it
        (a rotate-env killed between its install and its restart)."""
        return bool(self.exists and self.applied and self.sha and self.applied != self.sha)

    def perms_ok(self, t: EnvTarget) -> bool:
        return (self.owner, self.group, self.mode) == (t.owner, t.group, t.mode.lstrip("0") or "0")


def parse_facts(text: str) -> EnvFacts:
    sec: dict[str, list[str]] = {}
    cur = None
    for ln in text.splitlines():
        if ln.startswith(MARK):
            cur = ln[len(MARK):].strip()
            sec[cur] = []
        elif cur:
            sec[cur].append(ln)
    f = EnvFacts()
    line = (sec.get("file") or ["missing"])[0].split()
    if line and line[0] == "present" and len(line) >= 3:
        f.exists, f.sha = True, line[1]
        own = line[2].split(":")
        if len(own) == 3:
            f.owner, f.group, f.mode = own
    f.hashes = parse_key_hashes("\n".join(sec.get("keys", [])))
    link = "\n".join(sec.get("current", [])).strip()
    if link:
        f.current = link.rstrip("/").rsplit("/", 1)[-1]
    f.applied = parse_sha(sec.get("applied", []))
    return f


def restore_previous_cmd(t: EnvTarget, old_sha: str | None) -> Cmd:
    """Put PATH.prev back (only if it is the version we replaced: sha256
    check), or remove the file when there was none before."""
    if not old_sha:
        return sh("rm -f -- {} && echo removed", t.path)
    return script([
        sh("want={} prev={}", old_sha, f"{t.path}.prev"),
        '[ -f "$prev" ] || { echo "$prev is missing: cannot restore the previous env file" >&2; exit 3; }',
        'got=$(sha256sum < "$prev" | cut -d" " -f1)',
        '[ "$got" = "$want" ] || { echo "$prev is not the version that was replaced (sha256 differs)" >&2; exit 4; }',
        *_put_in_place(t, f"{t.path}.prev", keep=0),
        "echo restored",
    ])


# -- for deploy/rollback (ARCHITECTURE.md "Env files") -------------------------------------


# -- planning (no host) -----------------------------------------------------------------------

@dataclass
class Plan:
    target: EnvTarget
    values: dict            # KEY -> Secret
    content: bytes
    sha: str
    hashes: dict            # KEY -> short hash, comparable with the host's
    source: str
    warnings: list
    show_hashes: bool = False

    def __repr__(self) -> str:  # never the content
        return f"Plan({self.target.path}, {len(self.values)} keys from {self.source}, sha256 {self.sha[:12]})"


def plan(inv, env_file: str | None = None, show_hashes: bool = False) -> Plan:
    """Everything that can be checked without a host: raises ConfigError
    (or EnvSourceError) before any connection."""
    from ..config.env_contract import (
        EnvContractError,
        check_contract,
        differ_check,
        enforce,
    )
    from ..config.env_sources import load_env_source

    target = EnvTarget.from_inventory(inv)
    check_contract(inv)
    ev = load_env_source(inv, env_file)
    enforce(inv, ev.values, ev.label)
    dr = differ_check(inv, ev.values)
    if dr.errors:
        raise EnvContractError(ev.label, dr.errors, inv.file_of("env.contract"))
    content = render_dotenv(ev.values, docker_literal(inv), ev.label)
    warnings = list(dr.warnings)
    if ev.key in ("--env-file", "env.source.file"):
        import os
        import stat as st

        mode = st.S_IMODE(os.stat(ev.label).st_mode)
        if mode & 0o077:
            warnings.append(f"{ev.label} is readable by other users (mode {mode:04o}); chmod 600 it")
    return Plan(target=target, values=ev.values, content=content, sha=sha256_hex(content),
                hashes=value_hashes(ev.values, docker_literal(inv)), source=ev.label, warnings=warnings,
                show_hashes=show_hashes)


def diff_text(old: dict, new: dict, show_hashes: bool = False) -> str:
    """Key names only; with show_hashes, `KEY (old8 -> new8)` for changed keys."""
    added, removed, changed = key_diff(old, new)
    if show_hashes and changed:
        changed = [f"{k} ({old[k][:8]} -> {new[k][:8]})" for k in changed]
    return describe_diff(added, removed, changed)


# -- one host ---------------------------------------------------------------------------------

def rotate_host(ctx, p: Plan, lock_wait: float | None = None) -> None:
    from ..release.lock import deploy_lock

    with deploy_lock(ctx, "rotate-env", wait=lock_wait):
        rotate_locked(ctx, p)


def rotate_locked(ctx, p: Plan, only_pending: bool = False) -> None:
    """Install `p` and restart the app with it (health-checked; the previous
    file back on failure). The caller holds the app's deploy lock: rotate_host,
    or bootstrap, which installed the file itself and asks (`only_pending`)
    only for the restart of a serving release whose env it changed: a file
    the app was not restarted with would be applied, unrecorded, by the next
    crash-restart or reboot."""
    from ..release.audit import audit

    t = p.target
    with _audit_interrupted(ctx):
        facts = parse_facts(ctx.run(facts_cmd(t), stream=False, what="env facts").stdout)
        diff = diff_text(facts.hashes, p.hashes, p.show_hashes) if facts.exists else \
            f"new file; added {', '.join(p.values)}"
        same_bytes = facts.sha == p.sha
        # installed but not applied: the app must restart even when the new file is the same
        pending = facts.pending and bool(facts.current) and _is_release(facts.current)
        if only_pending:
            if not pending:
                return   # bootstrap's own step installed it; nothing deployed, or the app already runs it
            ctx.say(f"the env file {t.path} changed (sha256 {facts.applied[:12]} -> {facts.sha[:12]}): "
                    f"restarting release {facts.current} with it")
        else:
            ctx.say(f"env keys: {diff}" + (" (file unchanged)" if same_bytes else ""))
            if pending:
                ctx.say(f"the env file {t.path} (sha256 {facts.sha[:12]}) was installed but never applied: the "
                        f"app still runs sha256 {facts.applied[:12]} (an earlier run stopped before its restart); "
                        "restarting with it")
        if same_bytes and facts.perms_ok(t) and not pending:
            ctx.ok("env file", f"{t.path} up to date (sha256 {p.sha[:12]})")
            ctx.note = "unchanged"
            audit(ctx, "rotate-env", facts.current, "unchanged", f"env sha256 {p.sha[:12]}")
            return
        if facts.exists and facts.current and _is_release(facts.current) and not facts.applied:
            # No record of what the app runs yet (released before snapshots): record
            # the file it runs with now, so a run killed after the install below is
            # detected as installed-but-not-applied by the next one (no step of its own).
            ctx.apply("env snapshot", Change(commands=(snapshot_cmd(t, facts.current),), dry_run=SKIP))
            facts.applied = facts.sha
        ctx.note = diff
        inst = None
        if not same_bytes or not facts.perms_ok(t):
            inst = install_env_file(ctx, p.content, t.path, t.owner, t.group, t.mode, keep_previous=t.keep,
                                    step="env file")
        else:
            ctx.ok("env file", f"{t.path} up to date (sha256 {p.sha[:12]}), not applied yet")
        if ctx.dry_run:  # the restart below is activation's sequence (activation.py): a dry run plans it as one step
            if not same_bytes or pending:
                ctx.change("restart", "restart the app with the new env and health-check it "
                                      "(on failure: restore the previous env file and restart)")
            return
        if (inst is None or not inst.changed or same_bytes) and not pending:
            # same bytes (only owner/mode were fixed): the app needs no restart
            ctx.skipped("restart", "env values unchanged")
            audit(ctx, "rotate-env", facts.current, "ok", f"env sha256 {p.sha[:12]} (owner/mode fixed)")
            return
        old_sha = inst.old_sha if inst is not None else facts.sha
        detail = f"env sha256 {(old_sha or '-')[:12]} -> {p.sha[:12]}; {diff}"
        if pending:
            detail = (f"env sha256 {facts.applied[:12]} (running) -> {p.sha[:12]}; " +
                      ("applied the env file bootstrap installed" if only_pending else
                       f"applied the env file an interrupted run installed (sha256 {facts.sha[:12]})" +
                       ("" if same_bytes else f", then the new one; {diff}")))
        if not facts.current:
            ctx.skipped("restart", f"nothing deployed yet ({t.current} is missing): the new env applies "
                                   "at the first deploy")
            audit(ctx, "rotate-env", None, "ok", detail)
            return
        try:
            restart(ctx)
        except StepFailed as e:
            reason = e.message
            if pending:  # back to what the app ran with, not to the never-applied file
                ctx.say(f"restart with the new env failed: {reason}; restoring the env file the app ran with")
                _restore_applied(ctx, t, facts.current)
            else:
                ctx.say(f"restart with the new env failed: {reason}; restoring the previous env file")
                _restore(ctx, t, old_sha)
            if getattr(e, "old_serving", False):
                # blue/green: the old instance (old env) never stopped serving; the
                # restored file is what it runs with, so a restart would change nothing
                after = "the previous env file is back; the old instance kept serving with it"
            else:
                try:
                    restart(ctx)
                    after = "the previous env file is back and the app is healthy"
                except StepFailed as e2:
                    after = f"the previous env file is back but the app is still failing: {e2.message}"
            audit(ctx, "rotate-env", facts.current, "failed", f"{detail}; rolled back: {reason}")
            ctx.note = "rolled back"
            raise StepFailed(f"rotate-env failed: {reason}; {after}", e.details) from None
        if facts.current and _is_release(facts.current):
            ctx.run(snapshot_cmd(t, facts.current), what="env snapshot")
            ctx.debug(f"env recorded for release {facts.current} ({t.snapshot(facts.current)})")
        audit(ctx, "rotate-env", facts.current, "ok", detail)
        ctx.note = ("applied the pending env file; " if pending else "") + diff


@contextlib.contextmanager
def _audit_interrupted(ctx):
    """Ctrl-C/SIGTERM mid-rotation: the audit log says so (the file is the old
    or the new one; one installed but not applied is applied by the next run).
    A step that failed before the restart (the install itself: a full disk)
    is audited as failed; a failed restart audits itself."""
    from ..release.audit import audit

    try:
        yield
    except StepFailed as e:
        if not e.message.startswith("rotate-env failed"):   # the restart's failure: audited where it happens
            audit(ctx, "rotate-env", None, "failed", e.message[:200])
        raise
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt) or type(e).__name__ == "Terminated":
            audit(ctx, "rotate-env", None, "interrupted",
                  "Ctrl-C/SIGTERM; a file installed but not applied is applied by the next run")
        raise


def _is_release(rid: str) -> bool:
    from ..facts.releases import is_release_id

    return is_release_id(rid)


def _restore(ctx, t: EnvTarget, old_sha: str | None) -> None:
    ctx.apply("restore env file", Change(
        f"{t.path} restored (sha256 {(old_sha or 'none')[:12]})", (restore_previous_cmd(t, old_sha),),
        what="restore previous env file",
        failed=lambda r: Failure(f"could not restore {t.path}: {ctx.mask(r.tail(3))}", details="")))


def _restore_applied(ctx, t: EnvTarget, rid: str) -> None:
    """Put back the env the running release was started with (its snapshot)."""
    def restored(r) -> list[Record]:
        if not r.ok or r.stdout.strip().split()[:1] == ["missing"]:
            return [Record(FAILED, f"could not restore {t.path} from {t.snapshot(rid)}: "
                                   f"{ctx.mask(r.tail(3)) or 'no snapshot'}")]
        return [Record(CHANGED, f"{t.path} restored to the env release {rid} ran with")]

    ctx.apply("restore env file", Change(commands=(release_env_restore_cmd(t, rid),), check=False,
                                         what="restore the applied env file", outcome=restored))


def restart(ctx) -> None:
    """Restart with the deploy strategy and health-check (tasks/release/activation.py)."""
    from ..release.activation import restart_app

    restart_app(ctx)


# -- the task ---------------------------------------------------------------------------------

def rotate_env(opts, env_file=None, show_hashes=False) -> None:
    """`fab rotate-env`: `opts` is the task's RunOptions (tasks/cli/base.py)."""
    from .base import finish, open_run

    inv = opts.load()
    p = plan(inv, env_file, show_hashes)          # validation: before any connection
    run = open_run("rotate-env", opts, inv=inv,
                   options={"env_file": env_file, "show_hashes": show_hashes, "limit": opts.limit,
                            "gate": opts.gate})
    from ..core.dotenv import mask_worthy

    run.add_secrets(mask_worthy(p.values, inv.get("env.contract.rules")))
    for w in p.warnings:
        run.out.line("", f"warning: {w}")
    run.extra.update({"env_source": p.source, "env_sha256": p.sha[:12], "env_keys": sorted(p.values)})
    run.out.line("", f"rotate-env: {len(p.values)} keys from {p.source} (sha256 {p.sha[:12]}) -> {p.target.path}")
    from ..release.notify import Notifier

    notifier = Notifier(run, "rotate-env")
    notifier.start()
    try:
        run.each(lambda ctx: rotate_host(ctx, p, opts.lock_wait))
        if opts.gate and not opts.dry_run:
            _gate(run)
    except BaseException:
        notifier.finish(interrupted=True)
        raise
    notifier.finish()
    finish(run)


def _gate(run) -> None:
    """The verification gate after a change, where verify.gate enables it."""
    from ..verify.gate import run_gate

    run_gate(run)
