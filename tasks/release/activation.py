"""Making a release serve traffic, per kind and strategy, new before old.
(Just over 600 lines: every kind's activation and its cleanup in one place, so the
one blue/green sequence and the restart variants are read side by side.)

One entry point, `activate(ctx, lay, state, rid, ...)`, used by deploy (the
new release), rollback (an older release) and `restart_app` (the current
release again, e.g. after rotate-env installed a new env file):

- node/python, blue_green: point the idle port's slot at the release, start
  APP@IDLE, health-check it on its port, rewrite the nginx upstream (nginx -t,
  reload), switch `current`, wait for nginx's old workers to drain, then stop
  the old instance. A failure before the switch stops the new instance: the
  old one never stopped serving.
- node/python, restart: switch `current`, restart APP.service, health-check;
  on failure switch back to the previous release and restart it.
- docker, blue_green (nginx enabled): run the new container on the idle host
  port beside the old one, health-check, switch the upstream, stop the old.
  Without nginx: restart (stop old, run new on app.port, check; on failure
  remove the new one and start the old one again).
- compose: `up -d` with the release's env file of tags; on failure re-up the
  previous release's files.

A failure raises ActivationFailed (a StepFailed) whose details are the
diagnostics: journal/docker logs since the deploy began, unit status, and the
health check's last response, all masked.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from ..config.app import Layout
from ..core.commands import Cmd, Raw, and_then, sh
from ..core.errors import StepFailed
from ..facts.releases import HostState, parse_state, state_script
from .health import HealthResult, HealthSpec, check_health, container_dead, unit_dead
from .releases import point_slot, switch_current

DRAIN_SECONDS = 10  # max wait for nginx's old workers to finish in-flight requests


class ActivationFailed(StepFailed):
    """The release did not become healthy. `old_serving` says whether the
    previous version kept (or got back) the traffic."""

    def __init__(self, message: str, details: str = "", *, health: HealthResult | None = None,
                 old_serving: bool = True, switched: bool = False):
        super().__init__(message, details)
        self.health = health
        self.old_serving = old_serving
        self.switched = switched


@dataclass
class Activation:
    rid: str
    port: int | None = None          # port now serving (blue/green) or app port
    previous_port: int | None = None
    health: HealthResult | None = None
    container: str = ""


# -- command builders (pure) ------------------------------------------------------

def upstream_text(lay: Layout, port: int) -> str:
    """The same bytes bootstrap writes (tasks/resources/nginx.py), with the live port."""
    from ..resources.nginx import render_upstream

    return render_upstream(lay.app, [port])


def upstream_switch_cmd(lay: Layout, text: str, drain: float = DRAIN_SECONDS) -> Cmd:
    """New upstream (argument $1); nginx -t; restore the old bytes on failure;
    reload; then wait (bounded) for the pre-reload workers to finish their
    in-flight requests, so stopping the old backend drops nothing."""
    f = lay.upstream_file
    lines = [
        "set -eu", "umask 022",
        sh('f={}; new="$f.fabship-new"; bak="$f.fabship-prev"', f).render(),
        'install -d -m 0755 -- "$(dirname -- "$f")"',
        'printf "%s" "$1" > "$new"',
        'sync -- "$new"',   # fsync before the rename, as for every file fabship installs
        'if [ -f "$f" ]; then cp -p -- "$f" "$bak"; fi',
        'mv -f -- "$new" "$f"',
        'if ! out=$(nginx -t 2>&1); then',
        '  if [ -f "$bak" ]; then mv -f -- "$bak" "$f"; else rm -f -- "$f"; fi',
        '  printf "%s\\n" "$out" >&2; echo "nginx -t failed: restored the previous upstream" >&2; exit 1',
        'fi',
        'rm -f -- "$bak"',
        'm=$(cat /run/nginx.pid 2>/dev/null || true); old=""',
        'if [ -n "$m" ] && [ -r "/proc/$m/task/$m/children" ]; then old=$(cat "/proc/$m/task/$m/children"); fi',
        'systemctl reload-or-restart nginx',
        f'n=0; while [ $n -lt {int(drain * 10)} ]; do',
        '  alive=""; for p in $old; do [ -d "/proc/$p" ] && alive=1; done',
        '  [ -z "$alive" ] && break; n=$((n+1)); sleep 0.1',
        'done',
        '[ -n "$m" ] || sleep 0.3',
    ]
    return Cmd("sh", "-c", "\n".join(lines), "sh", text)


def start_instance_cmd(lay: Layout, port: int, rid: str) -> Cmd:
    unit = lay.instance(port)
    return and_then(point_slot(lay, port, rid), sh("{{ systemctl reset-failed {} 2>/dev/null || true; }}", unit),
                    Cmd("systemctl", "restart", unit))


def stop_instance_cmd(lay: Layout, port: int) -> Cmd:
    # --no-reload: (dis)enabling only changes what starts at boot; a daemon
    # reload per deploy would cost ~0.2 s and nothing needs it
    unit = lay.instance(port)
    return sh("systemctl stop {} && {{ systemctl disable --no-reload --quiet {} 2>/dev/null || true; }}", unit, unit)


def enable_instance_cmd(lay: Layout, port: int) -> Cmd:
    # enabled so a reboot starts the port that nginx points at
    return sh("{{ systemctl enable --no-reload --quiet {} 2>/dev/null || true; }}", lay.instance(port))


def restart_unit_cmd(lay: Layout, rid: str) -> Cmd:
    return and_then(switch_current(lay, rid), sh("{{ systemctl reset-failed {} 2>/dev/null || true; }}", lay.unit),
                    Cmd("systemctl", "restart", lay.unit))


def docker_run_cmd(lay: Layout, name: str, rid: str, image: str, host_port: int, container_port: int,
                   *, bind: str = "127.0.0.1", restart: str = "unless-stopped", run_args: list | None = None) -> Cmd:
    """docker run with the app's env file (when present), labels that say
    which app/release/port this is, and the host port mapping."""
    pub = f"{bind}:{host_port}:{container_port}" if bind else f"{host_port}:{container_port}"
    run = Cmd("docker", "run", "-d", "--name", name, "--label", f"fabship.app={lay.app}",
              "--label", f"fabship.release={rid}", "--label", f"fabship.port={host_port}",
              "--restart", restart, Raw('"$@"'), "-p", pub, *(run_args or []), image)
    env = sh("set --; if [ -f {} ]; then set -- --env-file {}; fi", lay.env_path, lay.env_path)
    return Cmd("sh", "-c", env.render() + "\n" + run.render())


def docker_free_name_cmd(name: str) -> Cmd:
    """A container of this name already exists (restart_app of the current
    release): rename it aside so the new one can take the name."""
    return sh("if docker inspect {} >/dev/null 2>&1; then docker rm -f {}-prev >/dev/null 2>&1 || true; "
              "docker rename {} {}-prev; fi", name, name, name, name)


def docker_remove_cmd(name: str, timeout: int = 10) -> Cmd:
    return sh("docker stop -t {} {} >/dev/null 2>&1 || true; docker rm -f {} >/dev/null 2>&1 || true",
              str(timeout), name, name)


def compose_base(compose_cmd: str, lay: Layout, rid: str, project: str) -> list:
    d = lay.release_dir(rid)
    return compose_cmd.split() + ["-p", project, "-f", f"{d}/docker-compose.yml",
                                  "--env-file", f"{d}/compose.env"]


def compose_up_cmd(compose_cmd: str, lay: Layout, rid: str, project: str, *, recreate: bool = False) -> Cmd:
    d = lay.release_dir(rid)
    up = Cmd(*compose_base(compose_cmd, lay, rid, project), "up", "-d", "--remove-orphans",
             *(["--force-recreate"] if recreate else []))
    return and_then(sh("cd {}", d), up)


# -- diagnostics -----------------------------------------------------------------------

def diagnostics_cmd(lay: Layout, since: int | None, *, units: list[str] = (), containers: list[str] = (),
                    compose: list | None = None, lines: int = 60) -> Cmd:
    parts = ["exec 2>&1"]
    since_arg = f"--since @{int(since)}" if since else f"-n {lines}"
    for u in units:
        parts.append(sh("echo '--- journalctl -u {} (since the deploy began)'", u).render())
        parts.append(sh(f"journalctl -u {{}} {since_arg} --no-pager -o short-iso | tail -n {lines}", u).render())
        parts.append(sh("echo '--- systemctl status {}'", u).render())
        parts.append(sh("systemctl status {} --no-pager -l -n 0 || true", u).render())
    for c in containers:
        parts.append(sh("echo '--- docker logs {} (since the deploy began)'", c).render())
        parts.append(sh(f"docker logs {'--since ' + str(int(since)) if since else ''} --tail {lines} {{}} || true",
                        c).render())
        parts.append(sh("echo '--- docker inspect {}'", c).render())
        parts.append(sh("docker inspect -f 'status={{{{.State.Status}}}} exit={{{{.State.ExitCode}}}} "
                        "error={{{{.State.Error}}}} image={{{{.Config.Image}}}}' {} || true", c).render())
    if compose:
        parts.append("echo '--- compose ps / logs'")
        parts.append(Cmd(*compose, "ps").render() + " || true")
        parts.append(Cmd(*compose, "logs", "--no-color", "--tail", str(lines)).render() + " || true")
    parts.append("true")
    return Cmd("sh", "-c", "\n".join(parts))


def collect_diagnostics(ctx, lay: Layout, since: int | None, health: HealthResult | None = None,
                        **what) -> str:
    text = ""
    if not ctx.dry_run:
        try:
            r = ctx.run(diagnostics_cmd(lay, since, **what), check=False, timeout=60, what="diagnostics")
            text = r.stdout.rstrip()
        except Exception as e:  # diagnostics must never hide the real failure
            text = f"(could not collect diagnostics: {e})"
    if health is not None:
        text = (text + "\n" if text else "") + health.report()
    return ctx.mask(text)


# -- facts ----------------------------------------------------------------------------------

def gather_state(ctx, lay: Layout | None = None, **kw) -> HostState:
    lay = lay or Layout.from_inventory(ctx.inv)
    r = ctx.run(state_script(lay, **kw), check=False, timeout=60, what="gather facts")
    st = parse_state(r.stdout)
    ctx.data["state"] = st
    return st


def check_installed(ctx, lay: Layout, st: HostState) -> None:
    """The units/nginx upstream bootstrap installs must be there."""
    if lay.systemd:
        need = lay.template_unit if lay.blue_green else lay.unit
        if need not in st.units:
            raise StepFailed(f"{need} is not installed on {ctx.host.name}; run `fab bootstrap` first "
                             f"(deploy.strategy is {lay.strategy})")
    if lay.blue_green and st.upstream_text is None:
        raise StepFailed(f"{lay.upstream_file} is missing on {ctx.host.name}; run `fab bootstrap` first")
    if lay.docker and not st.docker:
        raise StepFailed(f"docker is not installed on {ctx.host.name}; run `fab bootstrap` first")


# -- activation ----------------------------------------------------------------------------

def activate(ctx, lay: Layout, st: HostState, rid: str, *, since: int | None = None, image: str = "",
             previous: str | None = None, spec: HealthSpec | None = None) -> Activation:
    """Make release `rid` serve traffic on ctx's host, health-checked, new
    before old where the strategy allows. Raises ActivationFailed."""
    spec = spec or HealthSpec.from_inventory(ctx.inv)
    if lay.kind in ("node", "python"):
        if lay.blue_green:
            return _systemd_blue_green(ctx, lay, st, rid, since, spec)
        return _systemd_restart(ctx, lay, st, rid, since, spec, previous)
    if lay.kind == "docker":
        if not image:
            raise StepFailed(f"release {rid} has no image recorded in {lay.release_log}")
        return _docker(ctx, lay, st, rid, image, since, spec, previous)
    if lay.kind == "compose":
        return _compose(ctx, lay, st, rid, since, spec, previous)
    return _static(ctx, lay, st, rid, spec)


# -- the verification gate (tasks/verify/gate.py run_gate; ARCHITECTURE.md "Gate") ----------------

def gated(ctx, h: HealthResult) -> HealthResult:
    """A passed health check followed by the gate's checks for this task
    (stage = the task: deploy, rollback, rotate-env). A failed gate counts as
    a failed health check, so the caller's switch-back/rollback runs."""
    if not h.ok:
        return h
    from ..verify.gate import gate_failure_message, run_gate

    failed = run_gate(ctx)
    if not failed:
        return h
    return HealthResult(False, None, h.body_snippet, gate_failure_message(failed), h.attempts, h.url)


def gate_or_switch_back(ctx, lay: Layout, live: int | None, h: HealthResult) -> None:
    """Blue/green: the gate runs once nginx sends traffic to the new instance
    and while the old one still runs; on failure traffic goes back to the old
    port (the caller then stops the new instance)."""
    hg = gated(ctx, h)
    if hg.ok:
        return
    if live is not None:
        try:
            ctx.change("switch traffic back", f"nginx upstream -> 127.0.0.1:{live}",
                       upstream_switch_cmd(lay, upstream_text(lay, live)), timeout=DRAIN_SECONDS + 60)
        except StepFailed as e:
            raise ActivationFailed(f"{hg.error}; switching traffic back to port {live} failed", e.details,
                                   health=hg, old_serving=False, switched=True) from None
    raise ActivationFailed(hg.error + ("; the old release keeps serving" if live is not None else ""), "",
                           health=hg, old_serving=live is not None)


def back_to_live(ctx, lay: Layout, live: int | None, err: BaseException, switching: bool) -> bool:
    """Blue/green cleanup before the new instance goes. Once the traffic switch
    was sent, an interruption (Ctrl-C/SIGTERM, a cut command) may land after
    nginx already points at the new instance: stopping it then leaves the host
    serving nothing, so point nginx back at the live port first. A failure
    fabship judged itself (ActivationFailed: health, nginx -t, the gate) already
    left the old port serving, unless the run was cancelled under it. Returns
    False when the new instance must stay: switching back failed, it serves."""
    if isinstance(err, ActivationFailed) and err.switched:
        return False
    ev = getattr(ctx.run_, "cancel", None)
    cancelled = ev is not None and ev.is_set()
    if switching and live is not None and (cancelled or not isinstance(err, ActivationFailed)):
        _quietly(ctx, "switch traffic back", upstream_switch_cmd(lay, upstream_text(lay, live)))
    return True


def pick_ports(lay: Layout, st: HostState, live: int | None) -> tuple[int | None, int]:
    ports = list(lay.ports)
    if len(ports) < 2:
        raise StepFailed("blue/green needs two ports (deploy.ports)")
    ref = live if live is not None else st.upstream_port
    idle = next(p for p in ports if p != ref)
    return live, idle


@dataclass(frozen=True)
class NewSlot:
    """The new side of a blue/green switch, as systemd or docker runs it. The
    sequence itself (start, health check, switch traffic, gate, retire the old
    side; on any failure or interruption traffic back to the live port and the
    new side removed) is blue_green()'s, written once for both."""

    kind: str                 # "instance" | "container": in the step names
    old: str                  # the old side as the failure messages call it: "release" | "container"
    remove_step: str          # the cleanup's step name: "stop new instance" | "remove new container"
    release: str              # "release R" / "release R (IMAGE)": in the failure messages
    start_message: str
    start: tuple              # Cmds that start it on the idle port
    dead_if: str              # health.check_health's "gave up early" probe
    diagnostics: dict         # collect_diagnostics(units=...) / (containers=...)
    remove: tuple             # Cmds that remove it (cleanup)
    before_switch: tuple      # Cmds in the switch's own round trip, before nginx moves (systemd: enable the
                              # new unit, so a reboot from then on boots the side nginx points at)
    retire_message: str
    retire: tuple             # Cmds that retire the old side once the new one serves
    old_keeps_serving: str    # what a failed health check says about the old side
    container: str = ""       # docker: the new container's name (Activation.container)


def blue_green(ctx, lay: Layout, st: HostState, rid: str, since, spec, live: int | None, idle: int,
               new: NewSlot) -> Activation:
    switching = False
    try:
        ctx.change(f"start new {new.kind}", new.start_message, *new.start)
        check_cancel(ctx)
        h = check_health(ctx, idle, dead_if=new.dead_if, spec=spec)
        check_cancel(ctx)
        if not h.ok:
            diag = collect_diagnostics(ctx, lay, since, h, **new.diagnostics)
            ctx.record("health check", "failed", h.describe())
            raise ActivationFailed(f"{new.release} failed its health check on port {idle}; {new.old_keeps_serving}",
                                   diag, health=h, old_serving=True)
        try:
            switching = True
            ctx.change("switch traffic", f"nginx upstream -> 127.0.0.1:{idle}; current -> {rid}",
                       and_then(*new.before_switch, upstream_switch_cmd(lay, upstream_text(lay, idle))),
                       timeout=DRAIN_SECONDS + 60)
        except StepFailed as e:
            raise ActivationFailed(f"nginx refused the new upstream; the old {new.old} keeps serving", e.details,
                                   health=h, old_serving=True) from None
        gate_or_switch_back(ctx, lay, live, h)
    except BaseException as e:
        # never switched (or switched back): the new side goes, the old one serves
        if back_to_live(ctx, lay, live, e, switching):
            _quietly(ctx, new.remove_step, *new.remove)
        raise
    # From here the new release serves: callers roll back by activating the old one.
    ctx.data["switched"] = True
    ctx.change(f"stop old {new.kind}", new.retire_message, and_then(switch_current(lay, rid), *new.retire))
    st.upstream_port = idle
    st.current = rid
    return Activation(rid, port=idle, previous_port=live, health=h, container=new.container)


def _systemd_blue_green(ctx, lay, st, rid, since, spec) -> Activation:
    live, idle = pick_ports(lay, st, st.live_port())
    unit = lay.instance(idle)
    retire = (stop_instance_cmd(lay, live),) if live not in (None, idle) else ()
    a = blue_green(ctx, lay, st, rid, since, spec, live, idle, NewSlot(
        kind="instance", old="release", remove_step="stop new instance", release=f"release {rid}",
        start_message=f"{unit} on release {rid}", start=(start_instance_cmd(lay, idle, rid),),
        dead_if=unit_dead(unit), diagnostics={"units": [unit]}, remove=(stop_instance_cmd(lay, idle),),
        before_switch=(enable_instance_cmd(lay, idle),),
        retire_message=f"{lay.instance(live)} stopped" if live else "current -> " + rid, retire=retire,
        old_keeps_serving="the old release keeps serving" if live else "nothing was serving before"))
    st.slots[idle] = ("active", rid)
    if live is not None:
        st.slots[live] = ("inactive", st.slots.get(live, (None, None))[1])
    return a


def _systemd_restart(ctx, lay, st, rid, since, spec, previous) -> Activation:
    previous = previous if previous is not None else st.current
    ctx.change("switch and restart", f"current -> {rid}; restart {lay.unit}", restart_unit_cmd(lay, rid))
    ctx.data["switched"] = True
    h = gated(ctx, check_health(ctx, spec.port or lay.port, dead_if=unit_dead(lay.unit), spec=spec))
    if h.ok:
        st.current = rid
        return Activation(rid, port=spec.port or lay.port, health=h)
    diag = collect_diagnostics(ctx, lay, since, h, units=[lay.unit])
    ctx.record("health check", "failed", h.describe())
    back = False
    if previous and previous != rid and previous in st.releases:
        try:
            ctx.change("switch back", f"current -> {previous}; restart {lay.unit}", restart_unit_cmd(lay, previous))
            hb = check_health(ctx, spec.port or lay.port, dead_if=unit_dead(lay.unit), spec=spec, quiet=True)
            back = hb.ok
            diag += f"\nafter switching back to {previous}: {hb.describe()}"
        except StepFailed as e:
            diag += f"\nswitching back to {previous} failed: {e}"
    ctx.data["switched"] = not back
    raise ActivationFailed(f"release {rid} failed its health check" +
                           (f"; switched back to {previous}" if back else "; nothing healthy is serving"),
                           diag, health=h, old_serving=back, switched=not back)


def _docker(ctx, lay, st, rid, image, since, spec, previous) -> Activation:
    dk = ctx.inv.get("docker") or {}
    cport = dk.get("container_port") or lay.port
    run_args = list(dk.get("run_args") or [])
    from ..resources.docker_files import mount_args

    run_args = mount_args(ctx.inv, run_args) + run_args   # secrets/certs dirs, read-only
    restart = dk.get("restart") or "unless-stopped"
    name = lay.container(rid)
    running = st.running_containers()
    if lay.blue_green:
        live_c = next((c for c in running if c["port"] == str(st.upstream_port)), running[0] if running else None)
        live = int(live_c["port"]) if live_c and live_c["port"].isdigit() else None
        _, idle = pick_ports(lay, st, live)
        olds = [c["name"] for c in st.containers if c["name"] != name]
        if live_c and live_c["name"] == name:  # restart_app: the live one is renamed aside
            olds.append(f"{name}-prev")
        olds = list(dict.fromkeys(olds))
        # a container a killed deploy left on the idle port (docker's restart policy brings it back
        # at boot too) holds the port: docker run would fail (exit 125) at every rerun
        squatters = [c["name"] for c in st.containers if c["port"] == str(idle) and c["name"] != name
                     and not (live_c and c["name"] == live_c["name"])]
        return blue_green(ctx, lay, st, rid, since, spec, live, idle, NewSlot(
            kind="container", old="container", remove_step="remove new container",
            release=f"release {rid} ({image})", start_message=f"{name} ({image}) on 127.0.0.1:{idle}" +
            (f" (removed {', '.join(squatters)}, left on that port)" if squatters else ""),
            start=(*(docker_remove_cmd(n) for n in squatters), docker_free_name_cmd(name),
                   docker_run_cmd(lay, name, rid, image, idle, cport, restart=restart, run_args=run_args)),
            dead_if=container_dead(name), diagnostics={"containers": [name]},
            remove=(docker_remove_cmd(name), _restore_name_cmd(name)), before_switch=(),
            retire_message=", ".join(olds) or "none running", retire=tuple(docker_remove_cmd(o) for o in olds),
            old_keeps_serving="the old container keeps serving", container=name))

    # restart: one port, stop the old container first (it holds the port)
    port = lay.port
    olds = [c["name"] for c in running]
    from ..resources.docker_files import mounts_present_cmd

    present = mounts_present_cmd(ctx.inv, dk.get("run_args"))
    try:
        ctx.change("replace container", f"stop {', '.join(olds) or 'nothing'}; run {name} ({image}) on :{port}",
                   *([present] if present else []),
                   *[sh("docker stop -t 10 {} >/dev/null", o) for o in olds], docker_free_name_cmd(name),
                   docker_run_cmd(lay, name, rid, image, port, cport, bind="", restart=restart, run_args=run_args),
                   switch_current(lay, rid))
    except StepFailed as e:
        # `docker run` refused (a mount source missing, a bad run_arg...) after the old
        # container stopped: start the old one again below instead of leaving nothing serving
        h, diag, why = None, e.details, f"could not start: {e}"
        if "bind source path does not exist" in (e.details or ""):
            why += " (a mounted directory is missing on the host: run fab bootstrap)"
    else:
        ctx.data["switched"] = True
        h = gated(ctx, check_health(ctx, spec.port or port, dead_if=container_dead(name), spec=spec))
        if h.ok:
            renamed = [f"{name}-prev" if o == name else o for o in olds]
            _quietly(ctx, "remove old containers", *[Cmd("docker", "rm", "-f", o) for o in renamed])
            st.current = rid
            return Activation(rid, port=port, health=h, container=name)
        diag = collect_diagnostics(ctx, lay, since, h, containers=[name])
        ctx.record("health check", "failed", h.describe())
        why = "failed its health check"
    back_cmds = [docker_remove_cmd(name), _restore_name_cmd(name)] + \
        [sh("docker start {} >/dev/null", o) for o in olds]
    if previous:
        back_cmds.append(switch_current(lay, previous))
    back = False
    if not olds and h is None:
        _quietly(ctx, "clean up", docker_remove_cmd(name), _restore_name_cmd(name))
    if olds:
        try:
            ctx.change("restart old container", ", ".join(olds), *back_cmds)
            hb = check_health(ctx, spec.port or port, spec=spec, quiet=True)
            back = hb.ok
            diag += f"\nafter starting the old container again: {hb.describe()}"
        except StepFailed as e:
            diag += f"\nstarting the old container again failed: {e}"
    ctx.data["switched"] = not back
    raise ActivationFailed(f"release {rid} ({image}) {why}" +
                           ("; the old container is serving again" if back else ""), diag, health=h,
                           old_serving=back, switched=not back)


def _restore_name_cmd(name: str) -> Cmd:
    return sh("if docker inspect {}-prev >/dev/null 2>&1 && ! docker inspect {} >/dev/null 2>&1; then "
              "docker rename {}-prev {}; fi", name, name, name, name)


def compose_project(ctx, lay: Layout) -> str:
    return lay.compose_project or lay.app


def _compose(ctx, lay, st, rid, since, spec, previous, recreate: bool = False) -> Activation:
    if not st.compose_cmd:
        raise StepFailed(f"neither `docker compose` nor `docker-compose` is installed on {ctx.host.name}")
    proj = compose_project(ctx, lay)
    ctx.change("compose up", f"project {proj} -> release {rid}",
               compose_up_cmd(st.compose_cmd, lay, rid, proj, recreate=recreate), switch_current(lay, rid))
    ctx.data["switched"] = True
    h = gated(ctx, check_health(ctx, spec.port or lay.port, spec=spec))
    if h.ok:
        st.current = rid
        return Activation(rid, port=spec.port or lay.port, health=h)
    diag = collect_diagnostics(ctx, lay, since, h, compose=compose_base(st.compose_cmd, lay, rid, proj))
    ctx.record("health check", "failed", h.describe())
    back = False
    if previous and previous != rid and previous in st.releases:
        try:
            ctx.change("compose up previous", f"project {proj} -> release {previous}",
                       compose_up_cmd(st.compose_cmd, lay, previous, proj), switch_current(lay, previous))
            hb = check_health(ctx, spec.port or lay.port, spec=spec, quiet=True)
            back = hb.ok
            diag += f"\nafter re-upping {previous}: {hb.describe()}"
        except StepFailed as e:
            diag += f"\nre-upping {previous} failed: {e}"
    ctx.data["switched"] = not back
    raise ActivationFailed(f"release {rid} failed its health check" +
                           (f"; back on {previous}" if back else ""), diag, health=h, old_serving=back,
                           switched=not back)


def _static(ctx, lay, st, rid, spec) -> Activation:
    ctx.change("switch current", f"current -> {rid}", switch_current(lay, rid))
    ctx.data["switched"] = True
    st.current = rid
    return Activation(rid)


def ensure_connection(ctx) -> None:
    """After an interruption closed the SSH transport under a command, the
    cleanup needs a fresh connection."""
    conn = ctx.conn
    if conn is None:
        return
    try:
        t = conn.client.get_transport()
        alive = t is not None and t.is_active()
    except Exception:
        alive = False
    if not alive:
        ctx.close()


def _quietly(ctx, step: str, *cmds: Cmd) -> None:
    """Cleanup after a failure: report, never raise over the real error."""
    if ctx.dry_run:
        return
    ensure_connection(ctx)
    for c in cmds:
        try:
            ctx.run(c, check=False, timeout=120, what=step)
        except Exception as e:
            ctx.say(f"warning: {step}: {e}")
    ctx.record(step, "changed", "")


def check_cancel(ctx) -> None:
    """Between steps: stop promptly after Ctrl-C/SIGTERM (the fleet loop
    sets the run's cancel event; each host then cleans up)."""
    ev = getattr(ctx.run_, "cancel", None)
    if ev is not None and ev.is_set():
        raise Cancelled("interrupted")


class Cancelled(StepFailed):
    """Ctrl-C/SIGTERM reached this host's steps."""


# -- restart_app: the current release again (rotate-env, manual restarts) ------------------

def restart_app(ctx, *, since: int | None = None, state: HostState | None = None) -> Activation:
    """Restart the app on ctx's host the way its kind/strategy requires and
    health-check it. blue_green (node/python/docker behind nginx): a new
    instance of the *current* release starts on the idle port (reading the
    env file afresh), is health-checked, takes the traffic, then the old
    one stops: zero downtime, and on failure the old instance (old env) keeps
    serving (ActivationFailed.old_serving is True). restart: restart the
    unit/recreate the container in place (old_serving False on failure).
    compose: `up -d --force-recreate` of the current release.
    Raises ActivationFailed with diagnostics; StepFailed when nothing is deployed."""
    lay = Layout.from_inventory(ctx.inv)
    st = state or gather_state(ctx, lay)
    since = since or st.now or int(time.time())
    if not st.current:
        raise StepFailed(f"nothing deployed on {ctx.host.name} yet ({lay.current} is missing): nothing to restart")
    check_installed(ctx, lay, st)
    spec = HealthSpec.from_inventory(ctx.inv)
    if lay.kind in ("node", "python"):
        if lay.blue_green:
            return _systemd_blue_green(ctx, lay, st, st.current, since, spec)
        ctx.change("restart", f"restart {lay.unit} (release {st.current})",
                   sh("systemctl reset-failed {} 2>/dev/null || true", lay.unit), Cmd("systemctl", "restart", lay.unit))
        h = gated(ctx, check_health(ctx, spec.port or lay.port, dead_if=unit_dead(lay.unit), spec=spec))
        if not h.ok:
            diag = collect_diagnostics(ctx, lay, since, h, units=[lay.unit])
            ctx.record("health check", "failed", h.describe())
            raise ActivationFailed(f"{lay.unit} failed its health check after the restart", diag, health=h,
                                   old_serving=False)
        return Activation(st.current, port=spec.port or lay.port, health=h)
    if lay.kind == "docker":
        e = st.entry(st.current)
        image = e.image if e else ""
        if not image:
            running = st.running_containers()
            image = running[0]["image"] if running else ""
        return _docker(ctx, lay, st, st.current, image, since, spec, previous=None)
    if lay.kind == "compose":
        return _compose(ctx, lay, st, st.current, since, spec, previous=None, recreate=True)
    return Activation(st.current)
