"""What the inventory promises for one host, as verify checks it: `Spec` (paths,
owners, modes, units, ports, domains, HTTP checks) built by `build_spec(inv,
host)` from the same app model bootstrap and deploy use, plus the validation of
check headers and `${KEY}` references (ConfigError before any connection)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..config.schema_types import parse_size

STAGES = ("bootstrap", "deploy", "rotate-env", "rollback")


COMPLETED = ("ok",)  # releases.jsonl result of a finished deploy (tasks/release/releases.py)


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
    bootstrap: object = field(default=None, repr=False)   # tasks.config.app.AppConfig
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
        from ..config.app import app_spec, layout_dirs

        a = app_spec(inv)  # the one app model, as bootstrap reads it: verify checks what it promises
        s.bootstrap = a
        s.app, s.kind = a.name, a.kind
        s.user, s.group = a.user, a.group   # the one rule bootstrap, deploy and rotate-env use
        s.root, s.config_dir = a.root, a.config_dir
        s.root_mode, s.config_dir_mode = a.root_mode, a.config_dir_mode
        s.strategy, s.systemd, s.docker = a.strategy, a.has_unit, a.docker
        s.nginx = a.nginx_site is not None
        s.blue_green = a.strategy == "blue_green" and (a.has_unit or (a.kind == "docker" and s.nginx))
        s.port, s.ports = a.port, tuple(a.ports)
        s.upstream_file = a.upstream_file
        s.compose_project = a.compose_project or a.name
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
