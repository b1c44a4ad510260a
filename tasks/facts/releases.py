"""Release facts read from a host: the release log (releases.jsonl) and the
host's release state (one read-only script, one parser). Pure: no command runs here."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ..config.app import Layout
from ..core.commands import Cmd, sh

ID_RE = re.compile(r"^\d{8}T\d{6}Z-[A-Za-z0-9._-]+$")


MARK = "@@fabship:"


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
