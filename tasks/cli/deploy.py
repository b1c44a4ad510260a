"""`fab deploy`: build a release, health-check it, switch, roll back on failure.
(Longer than most: the per-host sequence and the fleet around it -- locks, batches,
max-fail, the fleet rollback, interruption -- are one flow read top to bottom.)

Per host (`deploy_host`), new before old:
  1. release dir /opt/APP/releases/<id> from the source (git / artifact /
     image / compose, tasks/release/sources.py), build commands as the app user,
     shared dirs/files linked in;
  2. activate it (tasks/release/activation.py): blue/green start beside the old one,
     health-check, switch the nginx upstream, stop the old one; or restart;
  3. record it: releases.jsonl entry + audit line (one round trip), env
     snapshot for rollback, old releases pruned (keep N, never the current
     or the last good one).
A failed build/start/health check leaves the old release serving (never
switched) or switches back, appends a `failed` entry and an audit line, and
the host's failure shows the journal/docker logs, unit status and the last
health response.

Fleet (`Fleet`): every host's deploy lock is taken first (a second deploy
fails fast naming the holder, before anything changes), then rolling batches
(--batch N or N%); once failures pass --max-fail (unreachable hosts count)
the deploy stops, and hosts already switched in this run roll back to their
previous release in reverse order (--no-rollback-fleet keeps them). Ctrl-C
and SIGTERM interrupt the in-flight remote commands, each host cleans up
(the old release keeps serving), switched hosts roll back, locks are
released. The summary says which host runs which release.
"""
from __future__ import annotations

import math
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from ..config.app import Layout
from ..core.commands import Cmd
from ..core.errors import ConfigError, ConnectError, FabshipError, StepFailed
from ..core.step import CHANGED, SKIP, Change, Record
from ..core.templates import render
from ..facts.releases import HostState
from ..release.activation import (
    Cancelled,
    activate,
    check_cancel,
    check_installed,
    ensure_connection,
    gather_state,
)
from ..release.alb import out_of_service_if
from ..release.hooks import all_hooks, run_hooks
from ..release.notify import Notifier
from ..release.record import record, record_cmd, release_entry
from ..release.releases import (
    delete_releases,
    link_shared,
    refused_step,
    release_id,
    releases_to_delete,
)
from ..release.sources import (
    Source,
    build_cmd,
    kill_build_cmd,
    plan_source,
    release_meta_cmd,
)

# per-host outcomes, shown in the summary
DEPLOYED, FAILED, ROLLED_BACK, NOT_STARTED, UNREACHABLE, UNCHANGED, INTERRUPTED = (
    "deployed", "failed", "rolled back", "not started", "unreachable", "unchanged", "interrupted")


# -- options ----------------------------------------------------------------------------

def parse_amount(value, total: int, what: str, *, minimum: int = 0) -> int:
    """'3' -> 3, '25%' of 8 hosts -> 2. Batches round up (at least 1);
    failure allowances round down."""
    text = str(value).strip()
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if not 0 <= pct <= 100:
                raise ValueError
            n = math.ceil(total * pct / 100) if minimum else math.floor(total * pct / 100)
        else:
            n = int(text)
            if n < 0:
                raise ValueError
    except ValueError:
        raise ConfigError("command line", what, f"expected a count such as 2 or a percent such as 25%, "
                                                f"got {value!r}") from None
    return max(minimum, n)


def batches_of(hosts: list, size: int) -> list[list]:
    size = max(1, size)
    return [hosts[i:i + size] for i in range(0, len(hosts), size)]


@dataclass
class Plan:
    lay: Layout
    src: Source
    rid: str
    batch: int
    max_fail: int
    rollback_fleet: bool
    lock_wait: float
    alb: object = None
    shared_dirs: list = field(default_factory=list)
    shared_files: list = field(default_factory=list)


def validate_app(inv, lay: Layout, action: str = "deploy") -> None:
    """Everything about the app section a deploy/rollback needs, checked
    before connecting; errors name the file and key."""
    inv.require("app.name", action)
    inv.require("app.kind", action)
    if lay.kind in ("node", "python", "docker") and not lay.port:
        raise inv.error("app.port", f"required for {action} of a {lay.kind} app (the port it listens on)")
    if lay.kind in ("node", "python") and lay.strategy == "blue_green" and not lay.nginx:
        raise inv.error("deploy.strategy", "blue_green switches traffic with nginx, but nginx is not enabled; "
                                           "enable nginx or use strategy: restart")
    if lay.blue_green:
        ports = list(lay.ports)
        if len(ports) != 2 or ports[0] == ports[1]:
            raise inv.error("deploy.ports", "blue/green needs exactly two different ports")
        if lay.port in ports:
            raise inv.error("deploy.ports", f"must not include app.port ({lay.port})")
    from ..config.schema import check_env_mode

    check_env_mode(inv)   # rollback restores, and deploy snapshots, the env file with that mode
    source = inv.get("deploy.source")
    allowed = {"node": ("git", "artifact"), "python": ("git", "artifact"), "static": ("git", "artifact"),
               "docker": ("image",), "compose": ("compose",)}[lay.kind]
    if action == "deploy" and source not in allowed:
        raise inv.error("deploy.source", f"{source} does not fit app.kind {lay.kind} "
                                         f"(use {' or '.join(allowed)})")


def plan_deploy(inv, hosts, *, ref=None, artifact=None, tag=None, batch=None, max_fail=None,
                rollback_fleet=True, lock_wait=None) -> Plan:
    if not inv.get("app"):
        raise ConfigError(inv.path, "app", "required for deploy: the app section (name, kind, port)")
    if not inv.get("deploy"):
        raise ConfigError(inv.path, "deploy", "required for deploy: the deploy section (source, ...)")
    lay = Layout.from_inventory(inv)
    validate_app(inv, lay)
    src = plan_source(inv, ref=ref, artifact=artifact, tag=tag)
    total = len(hosts)
    b = parse_amount(batch if batch not in (None, "") else (inv.get("deploy.batch") or total or 1), total,
                     "--batch", minimum=1)
    mf = parse_amount(max_fail if max_fail not in (None, "") else (inv.get("deploy.max_fail") or "0"), total,
                      "--max-fail")
    alb = None
    if inv.get("hooks.alb"):
        from ..release.alb import preflight

        alb = preflight(inv, hosts)
    return Plan(lay=lay, src=src, rid=release_id(src.version), batch=b, max_fail=mf,
                rollback_fleet=rollback_fleet if inv.get("deploy.rollback_fleet", True) else False,
                lock_wait=float(lock_wait if lock_wait not in (None, "") else inv.get("deploy.lock_wait") or 0),
                alb=alb, shared_dirs=list(lay.shared_dirs), shared_files=list(lay.shared_files))


# -- one host ---------------------------------------------------------------------------------


def finish_release(ctx, cmds: list, message: str) -> None:
    """After the switch: one round trip for the bookkeeping. A failure here
    is a warning, never a failed deploy (the release already serves)."""
    cmd = Cmd("sh", "-c", "rc=0\n" + "\n".join(f"{c.render()} || rc=1" for c in cmds) + "\nexit $rc")
    ran: list = []

    def write() -> tuple:
        """Run it (again, on a fresh connection, when an interruption cut it)."""
        try:
            r = ctx.run(cmd, check=False, timeout=120, what="record release")
        except Exception:   # the interruption closed the transport under it, or before it
            if not _cancelled(ctx):
                raise
            r = None
        if (r is None or not r.ok) and _cancelled(ctx):
            # Ctrl-C/SIGTERM cut it: the release served, so its line must be written (the
            # fleet rollback then logs going back); a repeat at worst writes the line twice
            ensure_connection(ctx)
            r = ctx.run(cmd, check=False, timeout=120, what="record release")
        ran.append(r)
        return ()

    def recorded(_) -> list[Record]:
        if ran[-1].ok:
            return [Record(CHANGED, message)]
        ctx.say(f"warning: recording the release partly failed: {ctx.mask(ran[-1].tail(3))}")
        return []

    ctx.apply("record release", Change(message, write, shown=(cmd,), outcome=recorded))


def run_build(ctx, plan: Plan) -> None:
    lay, rid = plan.lay, plan.rid
    what = "; ".join(plan.src.build)
    t0 = time.monotonic()

    def built(r) -> list[Record]:
        if r.exited == -1 and not _cancelled(ctx):  # the channel closed without an exit status
            ctx.record("build", "failed", "connection lost", t0)
            raise ConnectError(f"{ctx.host.address}: connection lost during the build")
        if not r.ok:
            ctx.record("build", "failed", f"exit {r.exited}", t0)
            out = "\n".join((r.stdout + r.stderr).strip().splitlines()[-40:])
            raise StepFailed(f"build failed (exit {r.exited}) in {lay.release_dir(rid)}; the old release keeps "
                             "serving", ctx.mask(f"--- build output (last 40 lines)\n{out}"))
        return [Record(CHANGED, f"{len(plan.src.build)} command(s)")]

    # check=False: the outcome words a failed build (its output, and which release dir)
    ctx.apply("build", Change(what, (build_cmd(lay, rid, plan.src.build),), check=False, announce=f"build: {what}",
                              outcome=built))


def prepare_release(ctx, plan: Plan, st: HostState) -> dict:
    lay, rid = plan.lay, plan.rid
    meta = plan.src.prepare(ctx, lay, st, rid)
    check_cancel(ctx)
    run_hooks(ctx, "before_build", rid, image=meta.get("image", ""))  # env file present, release dir filled
    if plan.src.build:
        run_build(ctx, plan)
        check_cancel(ctx)
    ls = link_shared(lay, rid, plan.shared_dirs, plan.shared_files)
    info = {"id": rid, "version": plan.src.version, "source": plan.src.kind, **{k: v for k, v in meta.items() if v}}
    try:
        if ls is not None:
            ctx.change("shared", f"{len(plan.shared_dirs)} dir(s), {len(plan.shared_files)} file(s) linked", ls)
        ctx.apply("release meta", Change(commands=(release_meta_cmd(lay, rid, render("deploy/release.json.j2",
                                                                                   release=info)),),
                                         dry_run=SKIP))   # no step of its own: the release dir's metadata file
    except StepFailed as e:
        raise refused_step(e) from None   # a link the app user planted: the one line naming it
    return meta


def deploy_host(ctx, plan: Plan) -> None:
    """One host's deploy, under the lock the fleet took. Raises on failure
    after leaving the old release serving (or switching back)."""
    lay, rid = plan.lay, plan.rid
    st: HostState = ctx.data["state"]
    prev = st.current
    since = st.now or int(time.time())
    ctx.data.update(previous=prev, outcome=None, switched=False, rid=rid)
    meta: dict = {}
    try:
        check_cancel(ctx)
        meta = prepare_release(ctx, plan, st)
        check_cancel(ctx)
        image = meta.get("image", "")
        run_hooks(ctx, "before_switch", rid, image=image)  # a failure: never switched, the old release serves
        check_cancel(ctx)
        with out_of_service_if(ctx, plan.alb):
            act = activate(ctx, lay, st, rid, since=since, image=image, previous=prev)
        ctx.data["outcome"] = DEPLOYED
    except BaseException as e:
        ctx.data["outcome"] = INTERRUPTED if _cancelled(ctx) else FAILED
        _after_failure(ctx, plan, st, prev, meta, e)
        if _cancelled(ctx) and not isinstance(e, Cancelled):
            # the cut connection is not the host's fault: say what happened
            raise Cancelled("interrupted (Ctrl-C/SIGTERM): " +
                            ("the fleet rollback handles this host" if ctx.data.get("switched")
                             else "never switched, the old release keeps serving")) from None
        raise
    # The release serves. Record it (env snapshot for rollback, release log +
    # audit line, keep-N pruning: one round trip); nothing here undoes the switch.
    entry = release_entry(rid, action="deploy", result="ok", previous=prev, meta=meta, src=plan.src, st=st,
                          port=str(act.port or ""))
    st.log.append(entry)
    if rid not in st.releases:
        st.releases.append(rid)
    doomed, prune_cmds = prune_plan(ctx, lay, st, protect=(rid,))
    cmds = [c for c in [_snapshot_cmd(ctx, rid), record_cmd(ctx, lay, entry, f"previous={prev or '-'} "
                                                                     f"port={act.port or '-'}")] if c is not None]
    finish_release(ctx, cmds + prune_cmds, "release log + audit; env snapshot" +
                   (f"; pruned {len(doomed)} old release(s): {', '.join(doomed)}" if doomed else ""))
    st.releases = [r for r in st.releases if r not in doomed]
    ctx.note = f"-> {rid}" + (f" (was {prev})" if prev else " (first release)")
    run_hooks(ctx, "after_switch", rid, image=meta.get("image", ""))  # reported, never undoes the switch


def _after_failure(ctx, plan: Plan, st: HostState, prev: str | None, meta: dict, e: BaseException) -> None:
    """Leave the host as it was: kill a build still running, log the failed
    attempt. activate() already stopped a new instance or switched back."""
    lay, rid = plan.lay, plan.rid
    interrupted = isinstance(e, (KeyboardInterrupt, Cancelled)) or type(e).__name__ == "Terminated" or \
        _cancelled(ctx)
    if ctx.dry_run:  # not a step: a dry run changed nothing to clean up
        return
    try:
        ensure_connection(ctx)  # an interruption cut the old one
        ctx.run(kill_build_cmd(lay), check=False, timeout=30, what="stop build")
        if ctx.data.get("switched") and interrupted and prev:
            ctx.say(f"interrupted after the switch: the fleet rollback puts {prev} back")
        why = "interrupted" if interrupted else (e.message if isinstance(e, FabshipError) else str(e))
        entry = release_entry(rid, action="deploy", result="interrupted" if interrupted else "failed",
                              previous=prev, meta=meta, src=plan.src, st=st, reason=why[:300])
        if interrupted:   # get out fast: the next deploy prunes
            record(ctx, lay, entry, f"previous={prev or '-'}; {why[:200]}")
            return
        # Retention counts failed releases too: a loop of failing deploys must not fill
        # the disk. Older failed/unfinished dirs go now (this one stays for inspection,
        # never the current or the last good one), with the log line: one round trip.
        doomed, prune = prune_plan(ctx, lay, st, protect=(rid,))
        cmds = [record_cmd(ctx, lay, entry, f"previous={prev or '-'}; {why[:200]}"), *prune]
        r = ctx.run(Cmd("sh", "-c", "rc=0\n" + "\n".join(f"{c.render()} || rc=1" for c in cmds) + "\nexit $rc"),
                    check=False, timeout=120, what="release log")
        if not r.ok:
            ctx.say(f"warning: recording the failed release partly failed: {ctx.mask(r.tail(3))}")
        elif doomed:
            st.releases = [x for x in st.releases if x not in doomed]
            ctx.say(f"pruned {len(doomed)} old release(s): {', '.join(doomed)}")
    except Exception as err:  # cleanup must not hide the real failure
        ctx.say(f"warning: cleanup after the failure: {err}")


def _cancelled(ctx) -> bool:
    ev = getattr(ctx.run_, "cancel", None)
    return bool(ev is not None and ev.is_set())


def _snapshot_cmd(ctx, rid: str) -> Cmd | None:
    """Rollback restores code and env together (ARCHITECTURE.md, env per
    release): the env file this release runs with (tasks/cli/rotate_env.py)."""
    from ..release.envsnap import EnvTarget, snapshot_cmd

    return snapshot_cmd(EnvTarget.from_inventory(ctx.inv), rid)


def prune_plan(ctx, lay: Layout, st: HostState, protect: tuple = ()) -> tuple[list[str], list[Cmd]]:
    """Keep N releases; never the current one or the last good one. Returns
    (release ids to delete, commands: dirs, env snapshots, unused images)."""
    doomed = releases_to_delete(st.releases, st.log, st.current, lay.keep, protect)
    if not doomed:
        return [], []
    cmds = [delete_releases(lay, doomed)]
    from ..release.envsnap import EnvTarget, snapshot_delete_cmd

    c = snapshot_delete_cmd(EnvTarget.from_inventory(ctx.inv), doomed)
    if c is not None:
        cmds.append(c)
    if lay.kind == "docker":
        keep_images = {e.image for e in st.log if e.id not in doomed and e.image}
        drop = sorted({e.image for e in st.log if e.id in doomed and e.image} - keep_images)
        for c in st.containers:  # never an image a container still uses
            drop = [i for i in drop if i != c["image"]]
        if drop:
            cmds.append(Cmd("sh", "-c", 'docker rmi "$@" >/dev/null 2>&1 || true', "sh", *drop))
    return doomed, cmds


# -- the fleet ----------------------------------------------------------------------------------

class Fleet:
    """Locks, batches, max-fail, fleet rollback, interruption, summary."""

    def __init__(self, run, plan: Plan | None, action: str = "deploy"):
        self.run = run
        self.plan = plan
        self.action = action
        self.lay = plan.lay if plan else Layout.from_inventory(run.inv)
        run.cancel = threading.Event()
        self.lock_wait = plan.lock_wait if plan else None
        self.failed: set[str] = set()
        self.interrupted: BaseException | None = None
        self.order: list[str] = []     # hosts in the order they were switched (batch by batch)

    # parallel with interruption: Ctrl-C/SIGTERM cancels the in-flight commands,
    # then waits for every host to clean up before re-raising
    def parallel(self, fn, hosts: list, width: int | None = None) -> None:
        if not hosts:
            return
        width = min(width or self.run.parallel, len(hosts))
        pool = ThreadPoolExecutor(max_workers=width, thread_name_prefix="fabship")
        futs: list = []
        try:
            for h in hosts:
                futs.append(pool.submit(self.run.each, fn, [h], 1))
            pending = set(futs)
            while pending:
                _, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
        except BaseException as e:
            self.interrupted = e
            self.run.out.line("", "interrupted: stopping the work in flight; the hosts clean up "
                                  "(Ctrl-C again to abandon the cleanup)")
            self.run.cancel.set()
            for h in hosts:
                _abort(self.run.ctx(h))
            try:
                wait(futs)
            finally:
                pool.shutdown(wait=False, cancel_futures=True)
            return
        pool.shutdown(wait=True)

    def lock_all(self, hosts: list, release: str | None, want_state: bool = True, **state_kw) -> list:
        """Take every host's lock and gather its facts; returns the hosts that
        are ready, or [] when a lock is held elsewhere (before any change).

        Connections open in parallel, but the locks are taken one host at a
        time in one global order (address, port, name): of two runs that want
        overlapping hosts, the one that wins the first shared host gets all of
        them and the other stops there. Taken in parallel, two runs could each
        get half and both give up."""
        from ..core.errors import LockError
        from ..release.lock import acquire

        self.parallel(lambda ctx: ctx.connect(), hosts)
        if self.interrupted:
            return []
        reachable = [h for h in hosts if not self.run.ctx(h).error]
        blocked: list[str] = []

        def take(ctx):
            if blocked:
                ctx.status = "skipped"
                ctx.note = f"lock not taken: {blocked[0]}'s lock is held by another run"
                return
            try:
                ctx.data["holder"] = acquire(ctx, self.action, release, self.lock_wait)
                ctx.data["locked"] = True
            except LockError:
                blocked.append(ctx.host.name)
                raise

        self.parallel(take, sorted(reachable, key=lambda h: (h.address, h.port, h.name)), width=1)
        if self.interrupted or blocked:
            return []

        def facts(ctx):
            st = gather_state(ctx, self.lay, **state_kw)
            check_installed(ctx, self.lay, st)

        if want_state:
            self.parallel(facts, reachable)
        if self.interrupted:
            return []
        return [h for h in hosts if not self.run.ctx(h).error]

    def unlock_all(self) -> None:
        from ..release.lock import release

        held = [h for h in self.run.hosts if self.run.ctx(h).data.get("holder")]
        if not held:
            return
        ev = self.run.cancel
        self.run.cancel = threading.Event()

        def one(ctx):
            release(ctx, ctx.data.get("holder"))
            ctx.data.pop("holder", None)

        pool = ThreadPoolExecutor(max_workers=min(self.run.parallel, len(held)))
        try:
            list(pool.map(lambda h: one(self.run.ctx(h)), held))
        finally:
            pool.shutdown(wait=True)
            self.run.cancel = ev


def _abort(ctx) -> None:
    """Cut the host's in-flight command: close the SSH transport under it.
    The host's cleanup then runs on a fresh connection."""
    conn = ctx.conn
    if conn is None:
        return
    try:
        t = conn.client.get_transport()
        if t is not None:
            t.close()
    except Exception:
        pass


def deploy(opts, ref=None, artifact=None, tag=None, strategy=None, batch=None, max_fail=None,
           rollback_fleet=True) -> None:
    """`fab deploy`: `opts` is the task's RunOptions (tasks/cli/base.py)."""
    from .base import finish, open_run

    if strategy not in (None, "", "blue_green", "restart"):
        raise ConfigError("command line", "--strategy", f"expected blue_green or restart, got {strategy!r}")
    inv = opts.load(cli={"deploy.strategy": strategy or None})
    hosts = inv.resolve_hosts(opts.limit)
    plan = plan_deploy(inv, hosts, ref=ref, artifact=artifact, tag=tag, batch=batch, max_fail=max_fail,
                       rollback_fleet=rollback_fleet, lock_wait=opts.lock_wait)
    run = open_run("deploy", opts, inv=inv, hosts=hosts,
                   options={"ref": ref, "artifact": artifact, "tag": tag, "strategy": plan.lay.strategy,
                            "batch": batch, "max_fail": max_fail, "rollback_fleet": plan.rollback_fleet,
                            "limit": opts.limit, "gate": opts.gate})
    register_env_secrets(run)
    notifier = Notifier(run, "deploy", plan.rid)   # webhook URLs are masked from here on
    run.extra.update({"release": plan.rid, "source": plan.src.describe(), "hooks": all_hooks(inv)})
    run.out.line("", f"deploy {plan.src.describe()} as release {plan.rid} to {len(hosts)} host(s): "
                     f"{plan.lay.kind}, {'blue/green' if plan.lay.blue_green else 'restart'}, batches of "
                     f"{plan.batch}, max-fail {plan.max_fail}{' (dry run)' if opts.dry_run else ''}")
    fleet = Fleet(run, plan)
    notifier.start()
    try:
        run_fleet(fleet, hosts)
    finally:
        fleet.unlock_all()
    # the verification gate runs inside activation (tasks/release/activation.py gated/gate_or_switch_back)
    print_outcome(run, plan.lay, plan.rid)
    notifier.finish(interrupted=bool(fleet.interrupted))
    if fleet.interrupted:
        run.finish()
        raise fleet.interrupted
    finish(run, summary=False)


def register_env_secrets(run) -> None:
    """Mask the app's env values in everything this run prints or records:
    a failure report quotes the app's own logs, which may echo a secret.
    Local env files only (deploy never needs AWS to read them); best effort."""
    spec = run.inv.get("env.source") or {}
    if (spec.get("type") or "file") != "file" or not spec.get("file"):
        return
    try:
        from ..config.env_sources import from_file

        values = from_file(run.inv, spec).values
    except Exception:  # deploy does not depend on the env source; rotate-env validates it
        return
    from ..core.dotenv import mask_worthy

    run.add_secrets(mask_worthy(values, run.inv.get("env.contract.rules")))


def run_fleet(fleet: Fleet, hosts: list) -> None:
    run, plan = fleet.run, fleet.plan
    git = plan.src.kind == "git"
    ready = fleet.lock_all(hosts, plan.rid, git=git)
    if fleet.interrupted:
        return
    if not ready:
        for h in hosts:
            c = run.ctx(h)
            if not c.error:
                c.status = "skipped"
                c.note = c.note or "not deployed: another run holds the deploy lock"
        return
    for h in hosts:
        c = run.ctx(h)
        if h in ready and plan.rid in c.data["state"].releases:
            c.error = f"release dir {plan.lay.release_dir(plan.rid)} already exists (deploy again in a second)"
            ready.remove(h)
    failures = len(hosts) - len(ready)
    if failures > plan.max_fail:
        run.out.line("", f"deploy stopped before changing anything: {failures} host(s) failed the checks "
                         f"(max-fail {plan.max_fail})")
        for h in ready:
            run.ctx(h).status = "skipped"
            run.ctx(h).note = "not deployed (other hosts failed their checks)"
        return
    switched: list[list] = []
    batches = batches_of(ready, plan.batch)
    stopped = False
    for i, batch in enumerate(batches):
        if len(batches) > 1:
            run.out.line("", f"batch {i + 1}/{len(batches)}: {', '.join(h.name for h in batch)}")
        fleet.parallel(lambda ctx: deploy_host(ctx, plan), batch)
        # switched: deployed, or failed after its switch (activation switches back itself otherwise)
        switched.append([h for h in batch if run.ctx(h).data.get("switched")])
        failures += sum(1 for h in batch if run.ctx(h).data.get("outcome") != DEPLOYED)
        if fleet.interrupted:
            stopped = True
            break
        if failures > plan.max_fail:
            stopped = True
            rest = [h for b in batches[i + 1:] for h in b]
            if rest:
                run.out.line("", f"deploy stopped: {failures} host(s) failed (max-fail {plan.max_fail}); "
                                 f"not deploying {', '.join(h.name for h in rest)}")
            for h in rest:
                run.ctx(h).status = "skipped"
                run.ctx(h).note = "not deployed (deploy stopped)"
            break
    if stopped and plan.rollback_fleet and any(switched) and not run.dry_run:
        fleet_rollback(fleet, switched)


def fleet_rollback(fleet: Fleet, switched: list[list]) -> None:
    """Hosts that switched in this run go back to their previous release,
    batch by batch in reverse order."""
    run = fleet.run
    interrupted = fleet.interrupted
    fleet.interrupted = None
    run.cancel = threading.Event()
    try:
        for batch in reversed(switched):
            batch = [h for h in batch if run.ctx(h).data.get("previous")]
            if not batch:
                continue
            run.out.line("", f"fleet rollback: {', '.join(h.name for h in reversed(batch))} back to their "
                             "previous release")
            fleet.parallel(lambda ctx: _rollback_switched(ctx, fleet.plan.alb), list(reversed(batch)))
            if fleet.interrupted:
                break
    finally:
        fleet.interrupted = fleet.interrupted or interrupted


def _rollback_switched(ctx, alb) -> None:
    from ..release.rollback import rollback_host

    ctx.error = None
    prev = ctx.data["previous"]
    ensure_connection(ctx)  # an interruption closed its transport: the rollback needs a live one
    try:
        rollback_host(ctx, prev, reason=f"fleet rollback after the failed deploy of {ctx.data.get('rid', '')}",
                      restore_env=False, alb=alb)
        ctx.data["outcome"] = ROLLED_BACK
        ctx.note = f"rolled back to {prev} (the deploy failed elsewhere)"
        ctx.status = "rolled back"
    except BaseException:
        ctx.data["outcome"] = FAILED
        ctx.note = f"fleet rollback to {prev} FAILED: still on the new release"
        raise


def print_outcome(run, lay: Layout, rid: str | None, action: str = "deploy") -> None:
    """The summary table, then exactly which host serves which release and
    what this run did there (deploy: rid is the new release; rollback: None)."""
    run.summary()
    lines = ["releases now serving:"]
    serving = {}
    for h in run.hosts:
        c = run.ctx(h)
        st = c.data.get("state")
        cur = st.current if st is not None else _read_serving(c, lay)
        serving[h.name] = cur
        if run.dry_run:  # in-memory state moved on; the host did not
            cur = c.data.get("previous", cur)
            lines.append(f"  {h.name} -> {cur or '(none)'} (dry run: would deploy {rid})" if rid else
                         f"  {h.name} -> {cur or '(none)'} (dry run)")
            continue
        lines.append("  " + outcome_line(c, cur, rid, action))
    run.out.line("", "\n".join(lines))
    run.extra["serving"] = serving


def _read_serving(ctx, lay: Layout) -> str | None:
    """A host refused before its facts were read (its lock was held, or another
    host's was): what it serves is one readlink away. None when unknown."""
    if ctx.status == "unreachable" or ctx.conn is None or ctx.dry_run:
        return None
    from ..core.commands import sh

    try:
        r = ctx.run(sh("readlink -- {} 2>/dev/null || echo -", lay.current), check=False, timeout=15,
                    what="read current release")
    except Exception:  # the summary must not fail the run
        return None
    link = r.stdout.strip().rstrip("/").rsplit("/", 1)[-1] if r.ok else ""
    if link in ("", "-"):
        return "" if r.ok else None  # "": nothing deployed
    return link


def outcome_line(ctx, serving: str | None, rid: str | None, action: str = "deploy") -> str:
    """`HOST -> SERVING  [what happened]`: SERVING is the release the host serves
    now; the bracket says what this run did, naming the release it concerned
    (a failed deploy of C on a host still serving B reads `B  [still serving;
    deploy of C failed]`, never as if B had failed)."""
    c = ctx
    data = c.data
    prev = data.get("previous")
    target = rid if action == "deploy" else data.get("target")
    what = f"{action} of {target}" if action == "deploy" and target else \
        (f"rollback to {target}" if target else action)
    outcome = data.get("outcome")
    if c.status == "unreachable":
        return f"{c.host.name} -> unknown  [unreachable]"
    shown = serving if serving else ("(nothing deployed)" if serving == "" else "unknown")
    if outcome == DEPLOYED:
        return f"{c.host.name} -> {shown}  [deployed]" + (f" (was {prev})" if prev else " (first release)")
    if outcome == ROLLED_BACK:
        if action == "rollback":
            return f"{c.host.name} -> {shown}  [rolled back from {prev or '?'}]"
        return f"{c.host.name} -> {shown}  [rolled back] (the deploy of {target or '?'} was undone)"
    if outcome in (FAILED, INTERRUPTED):
        word = "interrupted" if outcome == INTERRUPTED else "failed"
        if data.get("switched") and target:  # the switch happened and was not undone
            why = c.note if c.note and "FAILED" in c.note else "it is not healthy"
            return f"{c.host.name} -> {target}  [{what} {word} after the switch: {why}]"
        if serving:
            return f"{c.host.name} -> {shown}  [still serving; {what} {word}]"
        return f"{c.host.name} -> {shown}  [{what} {word}]"
    # never started here: refused before any change
    if data.get("lock_refused"):
        why = f"its deploy lock is held by {data['lock_refused']}"
    elif c.error:
        why = c.error if len(c.error) <= 120 else c.error[:117] + "..."
    else:
        why = c.note or "nothing to do"
    not_done = "not deployed" if action == "deploy" else "not rolled back"
    for prefix in (f"{not_done}: ", f"{not_done} ", "cannot roll back: "):
        why = why.removeprefix(prefix)
    if why.startswith("(") and why.endswith(")"):
        why = why[1:-1]
    if serving:
        return f"{c.host.name} -> {shown}  [still serving; {not_done}: {why}]"
    return f"{c.host.name} -> {shown}  [{not_done}: {why}]"
