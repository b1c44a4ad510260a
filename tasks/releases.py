"""The release model on a host, as pure data and command builders.

/opt/APP/releases/<id>/      one dir per release (id = UTC stamp + version)
/opt/APP/current             -> releases/<id>, switched with ln -s tmp + mv -T
/opt/APP/.fabship/releases.jsonl   one JSON object per finished deploy/rollback
/opt/APP/.fabship/slots/<port>     blue/green: which release each port's unit runs
                                   (an absolute link: /opt/APP/releases/<id>)

Everything here is pure (no connection): the host's state comes from one
facts script (`state_script`) whose output `parse_state` turns into a
`HostState`. Commands are `Cmd` values, so unit tests compare them exactly.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .commands import Cmd, Raw, as_user, sh

ID_RE = re.compile(r"^\d{8}T\d{6}Z-[A-Za-z0-9._-]+$")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
MARK = "@@fabship:"


# -- where things live ---------------------------------------------------------

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
        return f"{self.app}_backend"  # the name the site's proxy_pass uses (tasks/nginx.py)

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


# -- release ids and the release log --------------------------------------------

def safe_part(text: str, limit: int = 40) -> str:
    s = _SAFE.sub("-", str(text)).strip("-.") or "x"
    return s[:limit].rstrip("-.") or "x"


def release_id(version: str, now: datetime | None = None) -> str:
    """UTC stamp + version: sorts by time, says what it is."""
    now = now or datetime.now(timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{safe_part(version)}"


def is_release_id(text: str) -> bool:
    return bool(ID_RE.match(text or ""))


@dataclass
class Entry:
    """One line of releases.jsonl."""

    id: str
    action: str = "deploy"
    version: str = ""
    time: str = ""
    user: str = ""
    result: str = ""
    previous: str = ""
    source: str = ""
    commit: str = ""
    image: str = ""
    previous_image: str = ""
    extra: dict = field(default_factory=dict)

    KNOWN = ("id", "action", "version", "time", "user", "result", "previous", "source", "commit", "image",
             "previous_image")

    @classmethod
    def from_dict(cls, d: dict) -> "Entry":
        known = {k: str(d.get(k) or "") for k in cls.KNOWN}
        return cls(**known, extra={k: v for k, v in d.items() if k not in cls.KNOWN})

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.KNOWN if getattr(self, k)}
        d.update(self.extra)
        return d

    def line(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=False, separators=(",", ":"))


def parse_log(text: str) -> list[Entry]:
    """Lines that are not valid JSON objects (a torn write) are skipped."""
    out = []
    for ln in (text or "").splitlines():
        ln = ln.strip()
        if not ln:
            continue
        try:
            d = json.loads(ln)
        except ValueError:
            continue
        if isinstance(d, dict) and d.get("id"):
            out.append(Entry.from_dict(d))
    return out


def deployed_ok(entries: list[Entry]) -> dict[str, Entry]:
    """Release id -> its successful deploy entry (the releases one can roll back to)."""
    return {e.id: e for e in entries if e.action == "deploy" and e.result == "ok"}


def rollback_target(entries: list[Entry], existing: list[str], current: str | None) -> str | None:
    """The newest successfully deployed release older than the current one
    that still exists on the host (capistrano's rule: a second rollback goes
    one further back)."""
    good = deployed_ok(entries)
    cands = sorted(r for r in existing if r in good and r != current and (not current or r < current))
    return cands[-1] if cands else None


def releases_to_delete(existing: list[str], entries: list[Entry], current: str | None, keep: int,
                       protect: tuple = ()) -> list[str]:
    """Keep the newest `keep` good releases, the current one, the last good
    one before it, and `protect` (e.g. a release being deployed); delete the
    rest, failed and unfinished release dirs included."""
    good = deployed_ok(entries)
    ok_sorted = sorted(r for r in existing if r in good)
    keep_set = set(ok_sorted[-keep:]) if keep > 0 else set()
    if current:
        keep_set.add(current)
        last_good = rollback_target(entries, existing, current)
        if last_good:
            keep_set.add(last_good)
    keep_set.update(p for p in protect if p)
    return sorted(r for r in existing if r not in keep_set and is_release_id(r))


# -- command builders ---------------------------------------------------------------

def switch_symlink(link: str, target: str) -> Cmd:
    """Atomic re-point: a new symlink beside the old one, then rename(2) over it."""
    tmp = f"{link}.fabship-tmp"
    return sh("ln -sfn -- {} {} && mv -T -- {} {}", target, tmp, tmp, link)


def switch_current(lay: Layout, rid: str) -> Cmd:
    return switch_symlink(lay.current, f"releases/{rid}")


def point_slot(lay: Layout, port: int, rid: str) -> Cmd:
    """Blue/green: the port's unit runs whatever its slot link points at. The
    app user must be able to traverse .fabship to reach its WorkingDirectory,
    hence root:APPGROUP 0750 for both (as bootstrap makes them)."""
    return sh("install -d -m 0750 -o root -g {} -- {} {}", lay.group, lay.state,
              lay.slots) & switch_symlink(lay.slot(port), lay.release_dir(rid))


def delete_releases(lay: Layout, rids: list[str]) -> Cmd | None:
    if not rids:
        return None
    for r in rids:
        if not is_release_id(r):  # never let a bad id become `rm -rf releases/..`
            raise ValueError(f"not a release id: {r!r}")
    return Cmd("rm", "-rf", "--", *[lay.release_dir(r) for r in rids])


def append_lines_script(files: list[str], lines: list[str], ensure_dir: str | None = None) -> Cmd:
    """Append lines[i] to files[i] (release log, audit log...) in one round
    trip. The lines are positional arguments ("$1"...), quoted, never parsed
    by the shell; they hold no secrets (callers mask them)."""
    if len(files) != len(lines):
        raise ValueError("one line per file")
    body = ["umask 027"]
    if ensure_dir:
        body.append(sh("install -d -m 0750 -- {}", ensure_dir).render())
    for i, f in enumerate(files, 1):
        body.append(sh(f'printf "%s\\n" "${i}" >> {{}}', f).render())
    return Cmd("sh", "-c", "set -eu\n" + "\n".join(body), "sh", *[ln.replace("\n", " ") for ln in lines])


# -- paths the app user can write ------------------------------------------------------
# releases/<id>, shared/ and .cache belong to the app user, whose code (and its
# build's dependencies) is less trusted than root. Root never follows a symlink
# there: work inside them runs as the app user (commands.as_user), and a link
# where fabship expects a dir or file fails the step with a line naming it.

REFUSED = 41   # exit status of a step that met a planted symlink (or a non-file)
NOLINK = ("nolink() { for p in \"$@\"; do if [ -L \"$p\" ]; then printf 'fabship: %s is a symlink; refusing to "
          "follow it (the app user can write where it is)\\n' \"$p\" >&2; exit " + str(REFUSED) + "; fi; done; }")


def refusal(text: str) -> str | None:
    """The `fabship: ...` line a NOLINK check printed, if any."""
    return next((ln.strip() for ln in (text or "").splitlines() if ln.startswith("fabship: ")), None)


def refused_step(e):
    """A StepFailed whose output holds a NOLINK refusal, re-said as that one line."""
    from .errors import StepFailed

    line = refusal(getattr(e, "details", "") or "")
    return StepFailed(f"{e.message.split(' failed', 1)[0]}: {line[len('fabship: '):]}", e.details) if line else e


def path_chain(base: str, rel: str) -> list[str]:
    """base/a, base/a/b, base/a/b/c for rel = a/b/c: every component to check."""
    parts = rel.split("/")
    return [f"{base}/{'/'.join(parts[:i + 1])}" for i in range(len(parts))]


def shared_rel(p: str) -> str:
    """A shared dir/file entry as a normalised relative path (the schema refuses
    the rest; this guards command builders called directly)."""
    from .schema_types import rel_path_problem

    q = str(p).strip("/")
    problem = rel_path_problem(q)
    if problem:
        raise ValueError(f"shared path {p!r}: {problem}")
    return q


def link_shared(lay: Layout, rid: str, shared_dirs: list[str], shared_files: list[str]) -> Cmd | None:
    """Shared dirs/files live in /opt/APP/shared and are symlinked into the
    release. All of it runs as the app user (both trees are its own), so a link
    it planted can steer nothing but itself; planted links are refused by name."""
    if not shared_dirs and not shared_files:
        return None
    rel, base = lay.release_dir(rid), lay.shared
    dirs, files = [shared_rel(d) for d in shared_dirs], [shared_rel(f) for f in shared_files]
    L = ["set -eu", "umask 022", NOLINK, sh("nolink {} {}", base, rel).render()]

    def link(src: str, dst: str) -> str:
        return sh("rm -rf -- {} && mkdir -p -- \"$(dirname -- {})\" && ln -sfn -- {} {}", dst, dst, src, dst).render()

    for d in dirs:
        s = f"{base}/{d}"
        # every component of the shared path, and the release path's parents (the last one is replaced)
        L.append(Cmd("nolink", *path_chain(base, d), *path_chain(rel, d)[:-1]).render())
        # 0755 U:G like bootstrap makes it (and verify expects)
        L.append(sh("mkdir -p -- {} && chgrp -- {} {} && chmod -- 0755 {}", s, lay.group, s, s).render())
        L.append(link(s, f"{rel}/{d}"))
    for f in files:
        s = f"{base}/{f}"
        L.append(Cmd("nolink", *path_chain(base, f), *path_chain(rel, f)[:-1]).render())
        if "/" in f:  # parents below shared/ only: a top-level file never re-modes shared/ itself
            parent = s.rsplit("/", 1)[0]
            L.append(sh("[ -d {} ] || mkdir -p -m 0750 -- {}", parent, parent).render())
        L.append(sh("[ -e {} ] || install -m 0640 -g {} /dev/null {}", s, lay.group, s).render())  # never truncated
        L.append(sh("[ -f {} ] || {{ printf 'fabship: %s is not a regular file\\n' {} >&2; exit {}; }}",
                    s, s, str(REFUSED)).render())
        L.append(link(s, f"{rel}/{f}"))
    return as_user(lay.user, Cmd(Raw("\n".join(L))))


# -- the facts script: one round trip --------------------------------------------------

def state_script(lay: Layout, *, git: bool = False, docker: bool = False) -> Cmd:
    """Everything deploy/rollback/releases need to know about a host."""
    L = lay
    parts = [
        "exec 2>/dev/null",
        f"echo {MARK}root; " + sh("[ -d {} ] && echo yes || echo no", L.root).render(),
        f"echo {MARK}current; " + sh("readlink -- {} || true", L.current).render(),
        f"echo {MARK}releases; " + sh("ls -1 -- {} || true", L.releases).render(),
        f"echo {MARK}log; " + sh("tail -n 500 -- {} || true", L.release_log).render(),
        f"echo {MARK}lock; " + sh("cat -- {} || {{ [ -d {} ] && echo '{{}}'; }} || true",
                                  f"{L.lock_dir}/holder.json", L.lock_dir).render(),
        f"echo {MARK}upstream; " + sh("cat -- {} || true", L.upstream_file).render(),
        f"echo {MARK}now; date +%s",
    ]
    if L.systemd:
        parts.append(f"echo {MARK}units; " + sh(
            "for u in {} {}; do [ -f /etc/systemd/system/$u ] || [ -f /lib/systemd/system/$u ] "
            "|| [ -f /usr/lib/systemd/system/$u ] && echo $u; done; true", L.unit, L.template_unit).render())
        parts.append(f"echo {MARK}active; " + sh("echo {} $(systemctl is-active {})", L.unit, L.unit).render())
        for p in L.ports:
            parts.append(sh("echo {} $(systemctl is-active {}) $(readlink -- {} || echo -)", p, L.instance(p),
                            L.slot(p)).render())
    if docker or L.docker:
        parts.append(f"echo {MARK}docker; command -v docker >/dev/null && docker ps -a --filter "
                     + sh("label=fabship.app={}", L.app).render()
                     + " --format '{{.Names}}|{{.Label \"fabship.release\"}}|{{.Label \"fabship.port\"}}|"
                       "{{.Image}}|{{.State}}' || echo '!nodocker'")
        parts.append(f"echo {MARK}compose; if docker compose version >/dev/null; then echo 'docker compose'; "
                     "elif command -v docker-compose >/dev/null; then echo docker-compose; fi; true")
    if git:
        parts.append(f"echo {MARK}git; " + sh("git --git-dir={} for-each-ref --format='%(objectname)' || true",
                                              L.repo).render())
    parts.append(f"echo {MARK}end")
    return Cmd("sh", "-c", "\n".join(parts))


@dataclass
class HostState:
    root_exists: bool = False
    current: str | None = None          # release id `current` points at
    releases: list = field(default_factory=list)
    log: list = field(default_factory=list)
    lock: dict | None = None
    upstream_port: int | None = None
    upstream_text: str | None = None
    now: int = 0
    units: list = field(default_factory=list)
    unit_active: str = ""
    slots: dict = field(default_factory=dict)      # port -> (active state, release id or None)
    containers: list = field(default_factory=list)  # dicts: name, release, port, image, state
    docker: bool = True
    compose_cmd: str = ""
    git_heads: list = field(default_factory=list)

    def entry(self, rid: str | None) -> Entry | None:
        found = None
        for e in self.log:
            if e.id == rid and e.action == "deploy":
                found = e
        return found

    def live_port(self) -> int | None:
        """The blue/green port serving traffic: the upstream's, if its unit runs."""
        p = self.upstream_port
        if p is not None and p in self.slots and self.slots[p][0] == "active":
            return p
        return None

    def running_containers(self) -> list[dict]:
        return [c for c in self.containers if c["state"] == "running"]


def parse_state(text: str) -> HostState:
    sections: dict[str, list[str]] = {}
    cur = None
    for ln in text.splitlines():
        if ln.startswith(MARK):
            cur = ln[len(MARK):].strip()
            sections[cur] = []
        elif cur is not None:
            sections[cur].append(ln)
    st = HostState()
    st.root_exists = (sections.get("root") or ["no"])[0].strip() == "yes"
    cur_link = "\n".join(sections.get("current") or []).strip()
    if cur_link:
        st.current = cur_link.rstrip("/").rsplit("/", 1)[-1]
    st.releases = sorted(r.strip() for r in sections.get("releases", []) if is_release_id(r.strip()))
    st.log = parse_log("\n".join(sections.get("log", [])))
    lock_text = "\n".join(sections.get("lock", [])).strip()
    if lock_text:
        try:
            st.lock = json.loads(lock_text)
            if not isinstance(st.lock, dict):
                st.lock = {}
        except ValueError:
            st.lock = {}
    up = "\n".join(sections.get("upstream", []))
    st.upstream_text = up if "upstream" in up else None
    m = re.search(r"server\s+127\.0\.0\.1:(\d+)", up)
    st.upstream_port = int(m.group(1)) if m else None
    try:
        st.now = int((sections.get("now") or ["0"])[0].strip())
    except ValueError:
        st.now = 0
    st.units = [u.strip() for u in sections.get("units", []) if u.strip()]
    for ln in sections.get("active", []):
        parts = ln.split()
        if len(parts) >= 2 and not parts[0].isdigit():
            st.unit_active = parts[1]
        elif len(parts) >= 2 and parts[0].isdigit():
            link = parts[2] if len(parts) > 2 else "-"
            rid = link.rstrip("/").rsplit("/", 1)[-1] if link != "-" else None
            st.slots[int(parts[0])] = (parts[1], rid)
    for ln in sections.get("docker", []):
        if ln.strip() == "!nodocker":
            st.docker = False
            continue
        bits = ln.split("|")
        if len(bits) == 5:
            st.containers.append({"name": bits[0], "release": bits[1], "port": bits[2], "image": bits[3],
                                  "state": bits[4]})
    st.compose_cmd = "\n".join(sections.get("compose", [])).strip()
    st.git_heads = [h.strip() for h in sections.get("git", []) if re.fullmatch(r"[0-9a-f]{40}", h.strip())]
    return st
