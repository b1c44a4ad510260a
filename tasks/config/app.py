"""The app as the inventory describes it: one AppConfig, built once per
Inventory from its validated data, owns every derived name, path, port and
unit of the app (what bootstrap converges, what deploy, rollback, rotate-env
and verify use). The rules live here only: app.user defaults to app.name,
app.group to app.user (app_identity); app.root to /opt/APP; the env file to
/etc/APP/APP.env; blue/green ports to app.port+1 and +2.

`Layout` and `AppSpec` are the names the release code and bootstrap read it by
(one class: `Layout.from_inventory(inv) is app_spec(inv)` for a valid app);
app_spec() adds bootstrap's requirements (a port for a served kind, a start
command for python), raised as ConfigErrors naming the file and key."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ..core.errors import ConfigError

NODE_PYTHON = ("node", "python")

# nginx's settings when the inventory has no nginx section (enabled, as bootstrap serves it)
NGINX_DEFAULTS = {"enabled": True, "client_max_body_size": "10M", "websocket": True, "proxy_read_timeout": 60,
                  "remove_default_site": True}


@dataclass(frozen=True)
class AppConfig:
    """One app on its hosts. Built by AppConfig.of(inv) (alias Layout.from_inventory);
    tests build it directly with the fields they need."""

    app: str                          # app.name
    kind: str
    user: str
    group: str
    root: str
    config_dir: str
    env_path: str
    strategy: str
    port: int | None
    ports: tuple                      # blue/green ports (deploy.ports, default app.port+1, +2)
    nginx: bool                       # nginx fronts the app (nginx.enabled, default on)
    keep: int = 5                     # releases kept (deploy.keep_releases)
    # what bootstrap converges
    start: str | None = None
    root_mode: str = "0755"
    config_dir_mode: str = "0750"
    shared_dirs: tuple = ()
    shared_files: tuple = ()
    node_version: str | None = None
    python_version: str | None = None
    unit_settings: dict = field(default_factory=dict)   # app.unit with its defaults
    env_owner: str = "root"
    env_group: str = ""               # "" -> group
    env_mode: str = "0600"
    env_keep: int = 5                 # env.keep_previous (bootstrap keeps that many .prev files; may be 0)
    packages: tuple = ()
    swap: dict | None = None
    nginx_site: dict | None = None    # the nginx section with its defaults; None when nginx is off
    docker_settings: dict = field(default_factory=dict)   # the docker section
    insecure_registries: tuple = ()
    compose_project: str = ""      # "" -> the app's name
    uses_npm: bool = True             # node: a command the app runs needs npm (see _uses_npm)

    @classmethod
    def of(cls, inv) -> "AppConfig":
        """The inventory's AppConfig, built once per Inventory (its data is final once
        loaded and validated) and shared by every step and host of the run."""
        cached = getattr(inv, "_app_config", None)
        if cached is not None and cached[0] is inv.data:
            return cached[1]
        cfg = cls._build(inv)
        try:
            object.__setattr__(inv, "_app_config", (inv.data, cfg))
        except (AttributeError, TypeError):   # a test's stand-in inventory: build each time
            pass
        return cfg

    @classmethod
    def from_inventory(cls, inv) -> "AppConfig":
        return cls.of(inv)

    @classmethod
    def _build(cls, inv) -> "AppConfig":
        name = inv.get("app.name")
        kind = inv.get("app.kind")
        port = inv.get("app.port")
        ports = inv.get("deploy.ports")
        if not ports and port:
            ports = [port + 1, port + 2]
        config_dir = inv.get("app.config_dir") or f"/etc/{name}"
        user, group = app_identity(inv)
        nginx_on = inv.get("nginx.enabled", True) is not False  # no nginx section: enabled (as bootstrap does)
        site = inv.get("nginx")
        site = NGINX_DEFAULTS if site is None else site
        docker = inv.get("docker") or {}
        insecure = list(docker.get("insecure_registries") or [])
        reg = docker.get("registry") or ""
        if reg.startswith("http://"):
            insecure.append(reg[len("http://"):].rstrip("/"))
        elif reg and reg == (inv.get("sandbox.registry") or ""):
            insecure.append(reg)   # the sandbox registry speaks plain HTTP
        unit = inv.get("app.unit") or {}
        keep_env = inv.get("env.keep_previous")
        return cls(
            app=name, kind=kind, user=user, group=group, root=(inv.get("app.root") or f"/opt/{name}").rstrip("/") or "/",
            config_dir=config_dir, env_path=inv.get("env.path") or f"{config_dir}/{name}.env",
            strategy=inv.get("deploy.strategy") or "blue_green", port=port, ports=tuple(ports or ()),
            nginx=nginx_on, keep=inv.get("deploy.keep_releases") or 5,
            start=inv.get("app.start") or ("npm start" if kind == "node" else None),
            root_mode=inv.get("app.root_mode") or "0755", config_dir_mode=inv.get("app.config_dir_mode") or "0750",
            shared_dirs=tuple(inv.get("app.shared_dirs") or ()),
            shared_files=tuple(inv.get("app.shared_files") or ()),
            node_version=inv.get("app.node_version"), python_version=inv.get("app.python_version"),
            unit_settings={"restart_sec": unit.get("restart_sec", 5), "hardening": unit.get("hardening", True),
                           "environment": dict(unit.get("environment") or {}),
                           "after": list(unit.get("after") or ["network-online.target"]),
                           "extra": dict(unit.get("extra") or {})},
            env_owner=inv.get("env.owner") or "root", env_group=inv.get("env.group") or group,
            env_mode=inv.get("env.mode") or "0600", env_keep=int(keep_env if keep_env is not None else 5),
            packages=tuple(inv.get("packages") or ()), swap=inv.get("swap"),
            nginx_site=site if nginx_on and site.get("enabled", True) else None,
            docker_settings=docker, insecure_registries=tuple(sorted(set(insecure))),
            compose_project=docker.get("compose_project") or name or "",
            uses_npm=_uses_npm(inv, kind),
        )

    # bootstrap's names for some of it
    @property
    def name(self) -> str:
        return self.app

    @property
    def has_unit(self) -> bool:
        return self.kind in NODE_PYTHON

    @property
    def unit_port(self) -> int:
        """The port bootstrap points nginx and the enabled unit at."""
        return self.ports[0] if self.strategy == "blue_green" and self.has_unit else int(self.port or 0)

    @property
    def needs_npm(self) -> bool:
        return self.kind == "node" and self.uses_npm

    @property
    def venv(self) -> str:
        return f"{self.root}/venv"

    # directories and files
    @property
    def releases(self) -> str:
        return f"{self.root}/releases"

    @property
    def shared(self) -> str:
        return f"{self.root}/shared"

    @property
    def current(self) -> str:
        return f"{self.root}/current"

    @property
    def repo(self) -> str:
        return f"{self.root}/repo"

    @property
    def cache(self) -> str:
        """Build caches (npm's) and HOME for build commands, owned by the app user."""
        return f"{self.root}/.cache"

    @property
    def state(self) -> str:
        return f"{self.root}/.fabship"

    @property
    def lock_dir(self) -> str:
        return f"{self.state}/lock"

    @property
    def release_log(self) -> str:
        return f"{self.state}/releases.jsonl"

    @property
    def audit_log(self) -> str:
        return f"{self.state}/audit.log"

    @property
    def slots(self) -> str:
        return f"{self.state}/slots"

    @property
    def env_snapshots(self) -> str:
        """Each release's env as it was started with (tasks/release/envsnap.py)."""
        return f"{self.state}/env"

    def release_dir(self, rid: str) -> str:
        return f"{self.releases}/{rid}"

    def slot(self, port: int) -> str:
        return f"{self.slots}/{port}"

    # units, containers, nginx
    @property
    def unit(self) -> str:
        return f"{self.app}.service"

    @property
    def template_unit(self) -> str:
        return f"{self.app}@.service"

    def instance(self, port: int) -> str:
        return f"{self.app}@{port}.service"

    @property
    def upstream_file(self) -> str:
        return f"/etc/nginx/fabship/{self.app}-upstream.conf"

    @property
    def upstream_name(self) -> str:
        return f"{self.app}_backend"  # the name the site's proxy_pass uses (tasks/resources/nginx.py)

    @property
    def systemd(self) -> bool:
        return self.kind in ("node", "python")

    @property
    def docker(self) -> bool:
        return self.kind in ("docker", "compose")

    @property
    def blue_green(self) -> bool:
        """Blue/green needs a proxy to switch: without nginx, docker falls
        back to restart (node/python refuse that config at validation)."""
        return self.strategy == "blue_green" and self.nginx and self.kind in ("node", "python", "docker")

    def container(self, rid: str) -> str:
        return f"{self.app}-{rid}"


# The names the release code (Layout) and bootstrap (AppSpec) read the one model by.
Layout = AppSpec = AppConfig


_NPM_WORDS = re.compile(r"(^|[\s;&|(`/\"'])(npm|npx|yarn|pnpm|corepack)([\s\"']|$)")


def _uses_npm(inv, kind) -> bool:
    """Whether a command the node app runs (its start command, deploy.build, a release
    hook) calls npm or one of its kin: only then does bootstrap install npm."""
    if kind != "node":
        return False
    start = inv.get("app.start") or "npm start"
    texts = [start, *(inv.get("deploy.build") or []), json.dumps(inv.get("hooks") or {})]
    return any(_NPM_WORDS.search(t) for t in texts)


def app_spec(inv) -> AppConfig:
    """The app for bootstrap (and for verify, which checks what bootstrap promises):
    the AppConfig, after bootstrap's own requirements (ConfigError names file and key)."""
    if not inv.get("app"):
        raise ConfigError(inv.path, "app", "required for bootstrap: set app.name and app.kind")
    a = AppConfig.of(inv)
    if a.kind in NODE_PYTHON + ("docker", "compose") and not a.port:
        raise inv.error("app.port", f"required for kind {a.kind}: the port the app listens on "
                                    "(nginx proxies to it)")
    if a.kind == "python" and not a.start:
        raise inv.error("app.start", "required for kind python: the command that starts the app, "
                                     "e.g. 'gunicorn -b 127.0.0.1:$PORT app:app'")
    if a.kind in NODE_PYTHON and a.strategy == "blue_green" and len(set(a.ports)) < 2:
        raise inv.error("deploy.ports", "blue_green needs two different ports")
    if a.nginx_site is None and (inv.get("tls") or {}).get("enabled"):
        raise inv.error("tls.enabled", "TLS is served by nginx, but nginx.enabled is false")
    return a


def layout_dirs(spec: AppConfig) -> list[tuple[str, str, str, str]]:
    """(path, owner, group, mode) of every directory bootstrap owns, parents first."""
    u, g = spec.user, spec.group
    d = [(spec.root, "root", g, spec.root_mode),
         (f"{spec.root}/releases", u, g, "0755"),
         (f"{spec.root}/shared", u, g, "0755")]
    d += [(f"{spec.root}/shared/{s.strip('/')}", u, g, "0755") for s in spec.shared_dirs]
    # root:APPGROUP so the app user can reach slots/ (its WorkingDirectory), others cannot
    d.append((f"{spec.root}/.fabship", "root", g, "0750"))
    if spec.has_unit and spec.strategy == "blue_green":
        d.append((f"{spec.root}/.fabship/slots", "root", g, "0750"))
    if spec.kind == "python":
        d.append((spec.venv, u, g, "0755"))
    d.append((spec.config_dir, "root", g, spec.config_dir_mode))
    if spec.nginx_site:
        d += [(UPSTREAM_DIR, "root", "root", "0755"), (ACME_ROOT, "root", "root", "0755")]
    return d


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def app_identity(inv) -> tuple[str, str]:
    """(user, group) the app runs as: app.user defaults to app.name, app.group
    to app.user. The one rule every app model reads (bootstrap.AppSpec,
    Layout, rotate_env.EnvTarget, checks.Spec), so bootstrap never makes a
    group that deploy and rotate-env do not use."""
    name = inv.get("app.name")
    user = inv.get("app.user") or name
    return user, inv.get("app.group") or user


def safe_part(text: str, limit: int = 40) -> str:
    s = _SAFE.sub("-", str(text)).strip("-.") or "x"
    return s[:limit].rstrip("-.") or "x"


UPSTREAM_DIR = "/etc/nginx/fabship"


ACME_ROOT = "/var/www/fabship-acme"
