"""`fab bootstrap`: turn a bare host into a ready app host, idempotently.

Phases:
  0. validate the inventory, the env source and per-host TLS settings
     (before connecting: bad input changes nothing anywhere);
  1. on every host, in parallel: ONE read-only fact script (tasks/facts/script.py),
     then plan: platform supported? runtime version available? Any problem
     here stops the run before any host is changed;
  2. on every host, in parallel, the named steps, each "check (facts), then
     act (one remote script), report changed only when something changed":
       packages -> swap -> layout -> runtime -> env file -> docker files
       (secrets/certs dirs, tasks/resources/docker_files.py) -> systemd units
       -> nginx -> tls (certbot, then the HTTPS site) -> renewal timer.
On an already bootstrapped host phase 2 runs nothing: one remote command per
host in total.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

from ..config import platforms as plat
from ..config.app import AppSpec, app_spec, layout_dirs
from ..core.commands import Cmd, script, sh
from ..core.errors import FabshipError, StepFailed
from ..core.step import DEFAULT_FAILED, OK, Change, Record
from ..facts.script import (
    FactsRequest,
    FileSpec,
    facts_cmd,
    parse_facts,
    put_files_lines,
    stage_lines,
    tar_payload,
)
from ..resources.packages import candidate_platforms, wanted_packages

# -- what the inventory asks for ---------------------------------------------------------


@dataclass
class EnvInput:
    values: dict | None      # None: no source given -> only make sure the file exists
    label: str
    content: bytes


def env_input(inv, env_file: str | None) -> EnvInput:
    """The env values to install (before connecting). No source at all is fine for
    bootstrap: an empty env file is created if none exists, so units can start."""
    from ..core.dotenv import render_dotenv
    from ..resources.envfile import docker_literal

    if env_file or inv.get("env.source"):
        from ..config.env_sources import load_env_source

        src = load_env_source(inv, env_file)
        from ..config.env_contract import enforce

        enforce(inv, src.values, src.label)
        return EnvInput(src.values, src.label, render_dotenv(src.values, docker_literal(inv), src.label))
    return EnvInput(None, "", render_dotenv({}))


# -- facts ---------------------------------------------------------------------------------


def facts_request(spec: AppSpec, host, tls, dry_run: bool, files=None, env_source: bool = False) -> FactsRequest:
    """`files`: tasks/resources/docker_files.DockerFiles (secrets and certificates): stat +
    sha256 of each, never their contents (not even in dry-run)."""
    from ..resources import tls as tlsmod
    from ..resources.nginx import upstream_path

    cands = candidate_platforms()
    req = FactsRequest()
    for p in cands:
        names = wanted_packages(spec, p, tls)
        (req.apt_packages if p.family == "apt" else req.dnf_packages).extend(
            n for n in names if n not in (req.apt_packages if p.family == "apt" else req.dnf_packages))
    req.paths = [d[0] for d in layout_dirs(spec)]
    hashed = [spec.env_path, "/etc/docker/daemon.json"]
    if spec.has_unit:
        hashed.append(f"/etc/systemd/system/{spec.name}@.service" if spec.strategy == "blue_green"
                      else f"/etc/systemd/system/{spec.name}.service")
    if spec.nginx:
        for p in cands:
            site, link = plat.nginx_site_paths(p, spec.name)
            hashed.append(site)
            if link:
                req.paths.append(link)
            req.paths += list(p.nginx_default_site)
        hashed.append(upstream_path(spec.name))
    if spec.swap:
        req.paths.append(spec.swap.get("path") or "/swapfile")
        req.swap_path = spec.swap.get("path") or "/swapfile"
    if spec.kind == "python":
        req.paths.append(f"{spec.venv}/bin/python")
    if tls:
        hashed += [tlsmod.CA_PATH, tlsmod.CERTBOT_DROPIN] + [f"/etc/systemd/system/{u}" for u in tlsmod.RENEW_UNITS]
        req.certs.append((tls.cert_name, tls.paths["cert"], tls.min_days * 86400))
        req.renewal_confs.append(tls.cert_name)
    secret_paths = set(files.file_paths()) if files else set()
    if files:
        req.paths += [s.dir for s in files.sets]
        hashed += files.file_paths()
    req.hash_paths = list(dict.fromkeys(hashed))
    if env_source and not dry_run:
        # the env the serving release runs: an env file it does not is applied (apply_env)
        req.env_applied = (spec.current, spec.env_snapshots)
    req.paths = list(dict.fromkeys(req.paths))
    units = ["nginx.service"] if spec.nginx else []
    if spec.has_unit:
        units += blue_green_instances(spec) if spec.strategy == "blue_green" else [f"{spec.name}.service"]
    if spec.kind in ("docker", "compose"):
        units.append("docker.service")
    if tls:
        units += ["certbot.timer", tlsmod.RENEW_UNITS[1]]
    req.units = units
    req.users = [spec.user] + ([host.user] if spec.kind in ("docker", "compose") and host.user != "root" else [])
    req.groups = [spec.group] + (["docker"] if spec.kind in ("docker", "compose") else [])
    for fs in (files.sets if files else []):
        req.users += [fs.owner] if fs.owner not in req.users else []
        req.groups += [fs.group] if fs.group not in req.groups else []
    req.commands = ["certbot", "docker-compose", "node", "python3"]
    if dry_run:  # not a step: what the fact script reads (old bytes for the dry run's diffs)
        # templated files only: the env file and docker secret/cert files are never read back
        req.contents = [h for h in req.hash_paths if h != spec.env_path and h not in secret_paths]
        req.env_key_hashes = spec.env_path
    return req


def gather(ctx, what: str = "facts") -> object:
    req = ctx.data["request"]
    res = ctx.run(facts_cmd(req), check=False, what=what)
    f = parse_facts(res.stdout)
    if not f.complete:
        ctx.fail(what, f"the fact script did not finish (exit {res.exited})", res.tail())
    ctx.facts = f.__dict__
    ctx.data["facts"] = f
    return f


# -- planning (phase 1) -------------------------------------------------------------------------

class PlanError(FabshipError):
    """The host cannot be bootstrapped with this inventory (found from its facts)."""


def plan_host(ctx, spec: AppSpec, facts, files=None) -> plat.Platform:
    """Validate what only the host's facts can tell, before anything changes anywhere."""
    try:
        p = plat.detect(facts.os_release)
    except plat.UnsupportedPlatform as e:
        raise PlanError(str(e)) from None
    if spec.kind == "node":
        installed = plat.node_major(facts.packages.get("nodejs"))
        if spec.node_version and p.family == "apt":
            want = int(spec.node_version)
            have = installed if installed is not None else p.node_major
            if have != want:
                where = (f"the host has Node.js {installed} installed" if installed is not None
                         else f"{p.pretty} packages Node.js {p.node_major}")
                raise PlanError(f"{ctx.inv.file_of('app.node_version')}: app.node_version is {want} but {where}; "
                                f"set app.node_version: {have} (or remove it to use the distro's), or install "
                                f"Node.js {want} on the image first")
    if spec.kind == "python" and spec.python_version and p.family == "apt":
        if not (p.python_version + ".").startswith(spec.python_version + "."):
            raise PlanError(f"{ctx.inv.file_of('app.python_version')}: app.python_version is "
                            f"{spec.python_version} but {p.pretty} ships Python {p.python_version}")
    if spec.kind == "compose" and p.compose == "none" and "docker-compose" not in facts.commands \
            and not facts.packages.get("docker-compose-plugin"):
        raise PlanError(f"{p.pretty} has no packaged docker compose plugin: install it on the image "
                        "(/usr/local/lib/docker/cli-plugins/docker-compose), then re-run")
    if spec.swap:
        st = facts.stats.get(spec.swap.get("path") or "/swapfile")
        if st is not None and not st.is_file:
            raise PlanError(f"swap.path {spec.swap.get('path') or '/swapfile'} exists and is a {st.kind}, "
                            "not a swap file")
    if files:
        from ..resources.docker_files import plan_problems

        problems = plan_problems(files, facts, known_users=("root", spec.user), known_groups=("root", spec.group))
        if problems:
            raise PlanError("; ".join(problems))
    return p


# -- steps (phase 2) -----------------------------------------------------------------------------

def step_packages(ctx, spec, p, facts, tls) -> bool:
    wanted = wanted_packages(spec, p, tls)
    missing = [n for n in wanted if n not in facts.packages]
    if not missing:
        ctx.ok("packages", f"{len(wanted)} present")
        return False
    ctx.change("packages", f"install {' '.join(missing)}", plat.install_cmd(p, missing), timeout=1800)
    return True


def step_certbot_pip(ctx, p, facts, tls) -> None:
    if not (tls and p.certbot_via_pip):
        return
    if "certbot" in facts.commands:
        ctx.ok("certbot", f"certbot at {facts.commands['certbot']}")
        return
    ctx.change("certbot", "install certbot in /opt/certbot (pip; not packaged on this platform)",
               plat.certbot_pip_cmd(method=tls.method), timeout=900)


def layout_cmd(spec: AppSpec, facts, memberships: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """(shell lines, what they do) for the app group/user, group memberships
    and the directories that differ from the facts."""
    L, what = [], []
    u, g = spec.user, spec.group
    if g not in facts.groups:
        L.append(sh("getent group {} >/dev/null || groupadd --system {}", g, g).render())
        what.append(f"group {g}")
    if u not in facts.passwd:
        L.append(sh("id -u {} >/dev/null 2>&1 || useradd --system --gid {} --create-home --home-dir {} "
                    "--shell /usr/sbin/nologin {}", u, g, f"/home/{u}", u).render())
        what.append(f"user {u}")
    for user, groups in memberships.items():
        have = facts.member_of.get(user) or []
        for grp in groups:
            if grp in have or (user == u and grp == g and u not in facts.passwd):
                continue   # `id -nG` lists the primary group too; a new user gets g as primary
            L.append(sh("id -nG {} | tr ' ' '\\n' | grep -qx {} || usermod -aG {} {}", user, grp, grp, user).render())
            what.append(f"{user} in group {grp}")
    dirs = layout_dirs(spec)
    guarded = False
    for path, owner, group, mode in dirs:
        st = facts.stats.get(path)
        if st is None or not st.is_dir or not st.matches(owner, group, mode):
            base = app_writable_parent(spec, dirs, path)
            if base is None:
                L.append(sh("mkdir -p -- {} && chown -- {} {} && chmod -- {} {}", path, f"{owner}:{group}", path,
                            mode, path).render())
            else:
                # The app user can write `base`: it may have put a link at `path` (shared/uploads -> /etc).
                # Refuse links by name; mkdir and chmod as the app user; root only chowns with -h (no follow).
                from ..release.releases import NOLINK, path_chain

                if not guarded:
                    L.append(NOLINK)
                    guarded = True
                L.append(Cmd("nolink", *path_chain(base, path[len(base) + 1:])).render())
                L.append(sh("runuser -u {} -- mkdir -p -- {}", u, path).render())
                L.append(sh("chown -h -- {} {}", f"{owner}:{group}", path).render())
                L.append(sh("runuser -u {} -- chmod -- {} {}", u, mode, path).render() if owner == u else
                         sh("chmod -- {} {}", mode, path).render())
            what.append(f"{path} {owner}:{group} {mode}" if st is None else f"fix {path} -> {owner}:{group} {mode}")
    return L, what


def app_writable_parent(spec: AppSpec, dirs: list, path: str) -> str | None:
    """The nearest layout dir above `path` when the app user can write it (its
    owner, or group/world-writable), else None (root-only parents: plain lines)."""
    above = [d for d in dirs if path.startswith(d[0].rstrip("/") + "/")]
    if not above:
        return None
    p, owner, group, mode = max(above, key=lambda d: len(d[0]))
    m = int(mode, 8)
    if owner == spec.user or (group == spec.group and m & 0o020) or m & 0o002:
        return p.rstrip("/")
    return None


def memberships(spec: AppSpec, host) -> dict[str, list[str]]:
    """Who must be in which group: the app user in its group; for docker kinds
    the app user and the deploy (SSH) user in `docker`."""
    m = {spec.user: [spec.group]}
    if spec.kind in ("docker", "compose"):
        m[spec.user].append("docker")
        if host.user != "root":
            m.setdefault(host.user, []).append("docker")
    return m


def step_layout(ctx, spec, facts) -> None:
    lines, what = layout_cmd(spec, facts, memberships(spec, ctx.host))
    if not lines:
        ctx.ok("layout", f"user {spec.user}, {spec.root}, {spec.config_dir} in place")
        return
    from ..release.releases import refused_step

    try:
        ctx.change("layout", "; ".join(what) or "user and groups", script(lines))
    except StepFailed as e:
        raise refused_step(e) from None   # a planted link: the one line naming it


def step_runtime(ctx, spec, p, facts) -> None:
    if spec.kind == "node":
        v = facts.packages.get("nodejs") or next((facts.packages[k] for k in facts.packages
                                                   if k.startswith("nodejs") and not k.endswith("npm")), None)
        npm = " with npm" if spec.needs_npm else " (no npm: no command of the app uses it)"
        if v:
            ctx.ok("runtime", f"Node.js {v}{npm}")
        else:  # the packages step installs it (a dry run's says it would): nothing of its own to run
            ctx.apply("runtime", Change(f"Node.js (installed){npm}", dry_status=OK,
                                        dry_message="Node.js comes with the packages step",
                                        outcome=lambda _: [Record(OK, f"Node.js (installed){npm}")]))
    elif spec.kind == "python":
        step_python(ctx, spec, p, facts)
    elif spec.kind in ("docker", "compose"):
        step_docker(ctx, spec, facts, compose=spec.kind == "compose")


def step_python(ctx, spec, p, facts) -> None:
    py = f"{spec.venv}/bin/python"
    if py in facts.stats:
        ctx.ok("runtime", f"venv {spec.venv}")
        return
    binary = plat.python_binary(p, spec.python_version)
    cmd = Cmd("runuser", "-u", spec.user, "--", binary, "-m", "venv", spec.venv)
    ctx.change("runtime", f"create venv {spec.venv} ({binary}, owned by {spec.user})", cmd)


def docker_files(spec) -> list[FileSpec]:
    from ..core.templates import render

    return [FileSpec("/etc/docker/daemon.json", render(
        "docker/daemon.json.j2", insecure_registries=spec.insecure_registries,
        log_max_size="10m", log_max_file=3).encode(), "root", "root", "0644")]


def step_docker(ctx, spec, facts, compose: bool) -> None:
    from ..resources.nginx import diff_for, file_differs

    files = docker_files(spec)
    stale = [f for f in files if file_differs(facts, f)]
    running = facts.unit_enabled("docker.service") and facts.unit_active("docker.service")
    if not stale and running:
        ctx.ok("runtime", "docker enabled and running" + (", compose available" if compose else ""))
        return
    L = stage_lines() + put_files_lines(files) if stale else []
    L.append("systemctl enable -q docker")
    if stale:
        # a changed daemon.json needs a restart; live-restore keeps containers running
        L.append("if systemctl is-active -q docker; then systemctl restart docker; else systemctl start docker; fi")
    else:
        L.append("systemctl start docker")
    msg = "; ".join((["write /etc/docker/daemon.json"] if stale else []) +
                    (["enable and start docker"] if not running else ["restart docker"] if stale else []))
    ctx.apply("runtime", Change(msg, (script(L),), stdin=tar_payload(files) if stale else None,
                                diff=lambda: diff_for(facts, stale), failed=DEFAULT_FAILED))


def step_env(ctx, spec, facts, env: EnvInput) -> None:
    from ..core.dotenv import describe_diff, key_diff, sha256_hex, value_hashes
    from ..resources.envfile import docker_literal, install_env_file

    want = sha256_hex(env.content)
    st = facts.stats.get(spec.env_path)
    have = facts.sha256.get(spec.env_path)
    owner_ok = st is not None and st.matches(spec.env_owner, spec.env_group, spec.env_mode)
    if env.values is None:
        if st is not None:
            if owner_ok:
                ctx.ok("env file", f"{spec.env_path} exists (no env source given: content left alone)")
                return
            fix = sh("chown -- {} {} && chmod -- {} {}", f"{spec.env_owner}:{spec.env_group}", spec.env_path,
                     spec.env_mode, spec.env_path)
            ctx.change("env file", f"{spec.env_path} -> {spec.env_owner}:{spec.env_group} {spec.env_mode}", fix)
            return
    elif have == want and owner_ok:
        ctx.ok("env file", f"{spec.env_path} up to date (sha256 {want[:12]}, from {env.label})")
        return

    def preview() -> str:
        """The dry run's message: key names that change (the dry-run facts hold their hashes)."""
        keys = ""
        if env.values is not None:
            old = facts.env_keys or {}
            new = value_hashes(env.values, docker_literal(ctx.inv))
            keys = describe_diff(*key_diff(old, new)) if st is not None else \
                "keys " + ", ".join(env.values) if env.values else "no keys"
        what = (f"{spec.env_path}: {keys}" if env.values is not None else
                f"create empty {spec.env_path} (no env source given)")
        return (f"{what} (sha256 {(have or '-')[:12]} -> {want[:12]}; "
                f"{spec.env_owner}:{spec.env_group} {spec.env_mode})")

    inst = install_env_file(ctx, env.content, spec.env_path, spec.env_owner, spec.env_group, spec.env_mode,
                            keep_previous=spec.env_keep if env.values is not None else 0, step="env file",
                            preview=preview)
    return env.values is not None and have != want and inst.changed


def env_unapplied(facts, env: EnvInput) -> bool:
    """The serving release was started with an env other than the one the
    file now holds (a run killed between its install and its restart)."""
    from ..core.dotenv import sha256_hex

    return env.values is not None and bool(facts.env_applied) and facts.env_applied != sha256_hex(env.content)


def apply_env(ctx, env: EnvInput) -> None:
    """The env file this run changed, applied to a release already serving:
    rotate-env's restart (health-checked, the previous file back on failure,
    the env recorded for the release). Left unapplied, the next crash-restart
    or reboot would start the app with a file no record says it runs."""
    from ..core.dotenv import sha256_hex, value_hashes
    from ..resources.envfile import docker_literal
    from .rotate_env import EnvTarget, Plan, rotate_locked

    p = Plan(target=EnvTarget.from_inventory(ctx.inv), values=env.values, content=env.content,
             sha=sha256_hex(env.content), hashes=value_hashes(env.values, docker_literal(ctx.inv)),
             source=env.label, warnings=[])
    rotate_locked(ctx, p, only_pending=True)


def app_unit(spec: AppSpec):
    from ..resources.units import render_app_unit

    environment = {}
    if spec.kind == "node":
        environment["NODE_ENV"] = "production"
    if spec.kind == "python":
        environment["PATH"] = f"{spec.venv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        environment["PYTHONUNBUFFERED"] = "1"
    environment.update(spec.unit_settings["environment"])
    return render_app_unit(
        name=spec.name, user=spec.user, group=spec.group, root=spec.root, env_file=spec.env_path,
        start=spec.start, strategy=spec.strategy, port=spec.unit_port,
        restart_sec=spec.unit_settings["restart_sec"], hardening=spec.unit_settings["hardening"],
        environment=environment, after=spec.unit_settings["after"], extra=spec.unit_settings["extra"])


def blue_green_instances(spec: AppSpec) -> list[str]:
    """APP@PORT.service of every deploy port, the first (the one bootstrap enables) first."""
    return [f"{spec.name}@{p}.service" for p in dict.fromkeys([spec.unit_port, *spec.ports])]


def step_units(ctx, spec, facts) -> None:
    from ..resources.units import apply_units, enable_name

    if not spec.has_unit:
        return
    unit = app_unit(spec)
    enable = [enable_name(unit, spec.unit_port)]
    if spec.strategy == "blue_green" and facts is not None and any(
            facts.unit_enabled(u) for u in blue_green_instances(spec)[1:]):
        # a deploy made another port's instance the one that starts at boot (the
        # one nginx points at): enabling the first port again would be a change
        # at every bootstrap, and boot an instance nothing sends traffic to
        enable = []
    apply_units(ctx, [unit], enable, facts=facts)


def nginx_files(spec: AppSpec, p, host, facts, tls, tls_ready: bool, health_path: str = "/health") -> list[FileSpec]:
    from ..resources.nginx import render_site, render_upstream, upstream_path

    n = spec.nginx_site
    names = host.expand(n.get("server_name") or "").split() or (list(tls.domains) if tls else [])
    proxy = spec.kind != "static"
    site, link = plat.nginx_site_paths(p, spec.name)
    text = render_site(app=spec.name, server_names=names, client_max_body_size=n.get("client_max_body_size") or "10M",
                       websocket=n.get("websocket", True), proxy_read_timeout=n.get("proxy_read_timeout") or 60,
                       tls=tls.paths if tls and tls_ready else None, proxy=proxy,
                       static_root=f"{spec.root}/current", ipv6=facts.ipv6, health_path=health_path,
                       maintenance=n.get("maintenance"))
    files = []
    if proxy and upstream_path(spec.name) not in facts.stats:
        # written once; afterwards deploy owns it (blue/green switches)
        files.append(FileSpec(upstream_path(spec.name), render_upstream(spec.name, [spec.unit_port]).encode()))
    files.append(FileSpec(site, text.encode()))
    if link:
        files.append(FileSpec(link, link=site))
    if n.get("remove_default_site", True):
        files += [FileSpec(d, absent=True) for d in p.nginx_default_site]
    return files


def step_nginx(ctx, spec, p, host, facts, tls, tls_ready: bool, use_facts: bool = True) -> None:
    from ..resources.nginx import nginx_apply

    if not spec.nginx:
        return
    files = nginx_files(spec, p, host, facts, tls, tls_ready, health_path=ctx.inv.get("health.path") or "/health")
    nginx_apply(ctx, files, facts=facts if use_facts else None, step="nginx" if not tls_ready or use_facts
                else "nginx (https)")


def step_tls(ctx, spec, p, host, facts, tls) -> None:
    from ..config.app import ACME_ROOT
    from ..resources import tls as tlsmod

    if not tls:
        return
    tlsmod.apply_support(ctx, facts, tls, p)
    good, _ = tlsmod.cert_state(facts, tls)
    if good:
        ctx.skipped("tls", tlsmod.cert_state(facts, tls)[1])
        return
    if tlsmod.obtain(ctx, facts, tls, ACME_ROOT):
        # obtained (a dry run obtains none): now the HTTPS server block and the HTTP->HTTPS redirect
        step_nginx(ctx, spec, p, host, facts, tls, tls_ready=True, use_facts=False)


def step_gate(ctx) -> None:
    """The verification gate (tasks/verify/gate.py): the host now keeps bootstrap's
    promises (packages, swap, layout, env file, nginx, certificate...)."""
    from ..verify.gate import gate_failure_message, run_gate

    if ctx.changed_count == 0 and not ctx.dry_run:  # not a change: a dry run's gate says what it would check
        # Nothing changed: this run's fact script just confirmed every promise,
        # and the idempotent run stays at one remote command per host.
        ctx.skipped("verify gate", "nothing changed (the fact script confirmed the state)")
        return
    failed = run_gate(ctx, "bootstrap")
    if failed:
        raise StepFailed(gate_failure_message(failed))


@contextlib.contextmanager
def bootstrap_lock(ctx):
    """The app's deploy lock (tasks/release/lock.py), taken just before the
    first change (an idempotent run takes none: it stays one remote command):
    a bootstrap must not rewrite the env file, units or nginx site under a
    deploy, rotate-env or another controller's bootstrap. A run that changed
    something leaves an audit line: ok, failed or interrupted."""
    from ..release.activation import ensure_connection
    from ..release.audit import audit
    from ..release.lock import acquire, release

    taken: list[dict] = []
    ctx.data["before_change"] = lambda: taken.append(acquire(ctx, "bootstrap"))   # deploy.lock_wait applies
    try:
        yield
    except BaseException as e:
        if taken:
            ev = getattr(ctx.run_, "cancel", None)
            interrupted = isinstance(e, KeyboardInterrupt) or type(e).__name__ == "Terminated" or \
                bool(ev is not None and ev.is_set())
            if interrupted:
                ensure_connection(ctx)   # the interruption may have cut the transport under a command
            why = "Ctrl-C/SIGTERM; the rerun converges" if interrupted else \
                (e.message if isinstance(e, FabshipError) else str(e))
            audit(ctx, "bootstrap", None, "interrupted" if interrupted else "failed", why[:200])
        raise
    else:
        if taken:
            try:
                audit(ctx, "bootstrap", None, "ok", f"{ctx.changed_count} changed")
            except BaseException:   # Ctrl-C/SIGTERM while it was being written: the work is done
                audit(ctx, "bootstrap", None, "interrupted", "after its last step; the rerun converges")
                raise
    finally:
        ctx.data["before_change"] = None
        if taken:
            release(ctx, taken[0])


# -- the task ------------------------------------------------------------------------------------

def bootstrap(opts, env_file=None) -> None:
    """`fab bootstrap`: `opts` is the task's RunOptions (tasks/cli/base.py)."""
    from ..resources import tls as tlsmod
    from .base import finish, open_run

    run = open_run("bootstrap", opts, options={"limit": opts.limit, "env_file": env_file, "gate": opts.gate})
    spec = app_spec(run.inv)
    from ..config.schema import check_env_mode

    check_env_mode(run.inv)   # verify reads app_spec too: only the tasks that install the file refuse
    env = env_input(run.inv, env_file)
    if env.values:
        from ..core.dotenv import mask_worthy

        run.add_secrets(mask_worthy(env.values, run.inv.get("env.contract.rules")))
    tls_by_host = {h.name: tlsmod.tls_spec(run.inv, h) for h in run.hosts}
    from ..resources import docker_files

    files = docker_files.plan(run.inv)   # reads the local secret/cert files: errors before connecting
    run.add_secrets(docker_files.secret_values(files))
    for w in files.warnings:
        run.out.line("", f"warning: {w}")

    def phase1(ctx):
        ctx.data["request"] = facts_request(spec, ctx.host, tls_by_host[ctx.host.name], opts.dry_run, files,
                                            env_source=env.values is not None)
        facts = gather(ctx)
        try:
            ctx.data["platform"] = plan_host(ctx, spec, facts, files)
        except PlanError as e:
            ctx.record("plan", "failed", str(e))
            raise StepFailed(str(e)) from None

    run.each(phase1)
    bad = run.failed_hosts()
    if bad:
        for name, c in run.contexts.items():
            if name not in bad:
                c.note = "not changed: another host failed its checks"
        finish(run)   # raises Exit: nothing was changed on any host
        return

    def phase2(ctx):
        with bootstrap_lock(ctx):
            converge(ctx)

    def converge(ctx):
        spec_h, tls = spec, tls_by_host[ctx.host.name]
        p, facts = ctx.data["platform"], ctx.data["facts"]
        if step_packages(ctx, spec_h, p, facts, tls) and not ctx.dry_run:
            facts = gather(ctx, "facts (after packages)")   # new units, groups, commands
        step_certbot_pip(ctx, p, facts, tls)
        if spec_h.swap:
            from ..resources.swap import apply_swap

            apply_swap(ctx, facts, spec_h.swap["size"], spec_h.swap.get("path") or "/swapfile")
        step_layout(ctx, spec_h, facts)
        step_runtime(ctx, spec_h, p, facts)
        env_changed = step_env(ctx, spec_h, facts, env)
        docker_files.apply(ctx, files, facts)
        step_units(ctx, spec_h, facts)
        tls_ready = bool(tls) and tlsmod.cert_state(facts, tls)[0]
        step_nginx(ctx, spec_h, p, ctx.host, facts, tls, tls_ready)
        step_tls(ctx, spec_h, p, ctx.host, facts, tls)
        if (env_changed or env_unapplied(facts, env)) and not ctx.dry_run:
            apply_env(ctx, env)
        step_gate(ctx)

    try:
        run.each(phase2)
    finally:
        for c in run.contexts.values():
            n = len(c.commands)
            c.note = (c.note + "; " if c.note else "") + f"{n} remote command{'s' if n != 1 else ''}"
        run.extra["remote_commands"] = {n: len(c.commands) for n, c in run.contexts.items()}
    finish(run)
