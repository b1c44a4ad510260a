"""The app as the inventory describes it: AppSpec (what bootstrap converges)
and Layout (every path, port and unit name deploy, rollback, rotate-env and
verify use), both derived from the validated inventory by one set of rules
(app_identity: app.user defaults to app.name, app.group to app.user)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..core.errors import ConfigError

NODE_PYTHON = ("node", "python")


@dataclass
class AppSpec:
    name: str
    kind: str
    user: str
    group: str
    root: str
    config_dir: str
    root_mode: str
    config_dir_mode: str
    port: int | None
    start: str | None
    strategy: str
    ports: list[int]
    shared_dirs: list[str]
    node_version: str | None
    python_version: str | None
    unit: dict
    env_path: str
    env_owner: str
    env_group: str
    env_mode: str
    env_keep: int
    packages: list[str]
    swap: dict | None
    nginx: dict | None
    docker: dict
    insecure_registries: list[str] = field(default_factory=list)

    @property
    def has_unit(self) -> bool:
        return self.kind in NODE_PYTHON

    @property
    def unit_port(self) -> int:
        """The port bootstrap points nginx and the enabled unit at."""
        return self.ports[0] if self.strategy == "blue_green" and self.has_unit else int(self.port or 0)

    @property
    def venv(self) -> str:
        return f"{self.root}/venv"


def app_spec(inv) -> AppSpec:
    """Everything bootstrap needs from the inventory, validated (ConfigError names file and key)."""
    app = inv.get("app")
    if not app:
        raise ConfigError(inv.path, "app", "required for bootstrap: set app.name and app.kind")
    from .app import app_identity

    name, kind = app["name"], app["kind"]
    user, group = app_identity(inv)
    root = app.get("root") or f"/opt/{name}"
    port = app.get("port")
    start = app.get("start")
    if kind in NODE_PYTHON + ("docker", "compose") and not port:
        raise inv.error("app.port", f"required for kind {kind}: the port the app listens on "
                                    "(nginx proxies to it)")
    if kind == "node" and not start:
        start = "npm start"
    if kind == "python" and not start:
        raise inv.error("app.start", "required for kind python: the command that starts the app, "
                                     "e.g. 'gunicorn -b 127.0.0.1:$PORT app:app'")
    deploy = inv.get("deploy") or {}
    strategy = deploy.get("strategy") or "blue_green"
    ports = list(deploy.get("ports") or ([port + 1, port + 2] if port else []))
    if kind in NODE_PYTHON and strategy == "blue_green" and len(set(ports)) < 2:
        raise inv.error("deploy.ports", "blue_green needs two different ports")
    env = inv.get("env") or {}
    nginx = inv.get("nginx")
    if nginx is None:
        nginx = {"enabled": True, "client_max_body_size": "10M", "websocket": True, "proxy_read_timeout": 60,
                 "remove_default_site": True}
    if not nginx.get("enabled", True):
        nginx = None
    if nginx is None and (inv.get("tls") or {}).get("enabled"):
        raise inv.error("tls.enabled", "TLS is served by nginx, but nginx.enabled is false")
    docker = inv.get("docker") or {}
    insecure = list(docker.get("insecure_registries") or [])
    reg = docker.get("registry") or ""
    if reg.startswith("http://"):
        insecure.append(reg[len("http://"):].rstrip("/"))
    elif reg and reg == (inv.get("sandbox.registry") or ""):
        insecure.append(reg)   # the sandbox registry speaks plain HTTP
    unit = inv.get("app.unit") or {}
    return AppSpec(
        name=name, kind=kind, user=user, group=group, root=root,
        config_dir=app.get("config_dir") or f"/etc/{name}",
        root_mode=app.get("root_mode") or "0755", config_dir_mode=app.get("config_dir_mode") or "0750",
        port=port, start=start, strategy=strategy, ports=ports,
        shared_dirs=list(app.get("shared_dirs") or []),
        node_version=app.get("node_version"), python_version=app.get("python_version"),
        unit={"restart_sec": unit.get("restart_sec", 5), "hardening": unit.get("hardening", True),
              "environment": dict(unit.get("environment") or {}),
              "after": list(unit.get("after") or ["network-online.target"]), "extra": dict(unit.get("extra") or {})},
        env_path=env.get("path") or f"{app.get('config_dir') or f'/etc/{name}'}/{name}.env",
        env_owner=env.get("owner") or "root", env_group=env.get("group") or group,
        env_mode=env.get("mode") or "0600", env_keep=int(env.get("keep_previous") if env.get("keep_previous")
                                                         is not None else 5),
        packages=list(inv.get("packages") or []), swap=inv.get("swap"), nginx=nginx, docker=docker,
        insecure_registries=sorted(set(insecure)),
    )


def layout_dirs(spec: AppSpec) -> list[tuple[str, str, str, str]]:
    """(path, owner, group, mode) of every directory bootstrap owns, parents first."""
    from .app import ACME_ROOT, UPSTREAM_DIR

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
    if spec.nginx:
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


@dataclass(frozen=True)
class Layout:
    """Paths, names and ports of one app, from the inventory (ARCHITECTURE.md)."""

    app: str
    kind: str
    user: str
    group: str
    root: str
    config_dir: str
    env_path: str
    strategy: str
    port: int | None
    ports: tuple
    nginx: bool
    keep: int = 5

    @classmethod
    def from_inventory(cls, inv) -> "Layout":
        app = inv.get("app.name")
        port = inv.get("app.port")
        ports = inv.get("deploy.ports")
        if not ports and port:
            ports = [port + 1, port + 2]
        nginx = inv.get("nginx.enabled", True) is not False  # no nginx section: enabled (as bootstrap does)
        root = inv.get("app.root") or f"/opt/{app}"
        config_dir = inv.get("app.config_dir") or f"/etc/{app}"
        user, group = app_identity(inv)
        return cls(
            app=app, kind=inv.get("app.kind"), user=user, group=group, root=root.rstrip("/") or "/",
            config_dir=config_dir, env_path=inv.get("env.path") or f"{config_dir}/{app}.env",
            strategy=inv.get("deploy.strategy") or "blue_green", port=port, ports=tuple(ports or ()),
            nginx=nginx, keep=inv.get("deploy.keep_releases") or 5,
        )

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


def safe_part(text: str, limit: int = 40) -> str:
    s = _SAFE.sub("-", str(text)).strip("-.") or "x"
    return s[:limit].rstrip("-.") or "x"


UPSTREAM_DIR = "/etc/nginx/fabship"


ACME_ROOT = "/var/www/fabship-acme"
