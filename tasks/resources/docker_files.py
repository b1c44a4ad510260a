"""Credential and certificate files for Docker apps (issue 8's Spring-style
service): what bootstrap installs, what deploy mounts, what verify checks.

Inventory (`docker` section, tasks/config/schema.py):
    secrets_dir: /opt/APP/secrets          # 0700, owner secrets_owner:secrets_group (root:root)
    secret_files: {db-password: path}      # host file name -> local file; each 0400
    certs_dir: /opt/APP/certs              # 0755 root:root
    cert_files: {db-ca.pem: path}          # each 0444 root:root (public material)
    secrets_mount: /run/secrets            # where the container sees them (read-only)
    certs_mount: /certs

Ownership: the container reads the files through a read-only bind mount with
its own uid. Images run with `docker run`'s defaults run as root (the sample
image does, and so do most Spring Boot images built without a USER line),
so root:root 0700/0400 is the tightest setting that works: no host user but
root can read a credential. An image that runs as a non-root user needs the
files owned by a host user with the same uid: set `secrets_owner` (and
`secrets_group`) to that user; the modes stay 0700/0400.

Secrets never leave the control machine except as stdin of one remote
script (envfile.install_cmd per file, each reading exactly its own bytes:
temp file under umask 077 in the target dir, sha256 checked, fsync, chown,
chmod, rename). Contents are never printed: changes are reported by sha256
prefix, dry-run names files only. Previous versions are NOT kept beside the
file (the whole directory is mounted into the container).
"""
from __future__ import annotations

import os
import stat as st
from dataclasses import dataclass, field
from pathlib import Path

from ..core.commands import Cmd, Secret, script, sh
from ..core.errors import ConfigError
from ..core.step import Change

SECRETS, CERTS = "secrets", "certs"
MODES = {SECRETS: ("0700", "0400"), CERTS: ("0755", "0444")}   # (dir, file)
MAX_BYTES = 1024 * 1024   # credentials and certificates are small; a bigger file is a wrong path
STEP = "docker files"


@dataclass(frozen=True)
class ManagedFile:
    kind: str            # secrets | certs
    name: str            # file name on the host
    path: str            # absolute path on the host
    key: str             # the inventory key that names it, e.g. docker.secret_files.db-password
    source: str          # the inventory file that set the key
    local: Path          # the local file (resolved; read by load_contents)
    owner: str
    group: str
    mode: str


@dataclass
class FileSet:
    """One managed directory and the files fabship keeps in it."""

    kind: str
    dir: str
    owner: str
    group: str
    mode: str
    mount: str           # where the container sees the directory
    files: list[ManagedFile] = field(default_factory=list)


@dataclass
class DockerFiles:
    sets: list[FileSet] = field(default_factory=list)
    contents: dict[str, bytes] = field(default_factory=dict)   # host path -> bytes (load_contents)
    warnings: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.sets)

    @property
    def files(self) -> list[ManagedFile]:
        return [f for s in self.sets for f in s.files]

    def paths(self) -> list[str]:
        return [s.dir for s in self.sets] + [f.path for f in self.files]

    def file_paths(self) -> list[str]:
        return [f.path for f in self.files]


# -- what the inventory asks for (pure; before connecting) -------------------------------------

def _origin(inv, *parts: str) -> str:
    """The inventory file that set a key; by tuple, because file names such as
    db-ca.pem contain dots (inv.file_of splits on them)."""
    from ..config.inventory import _origin_of

    return _origin_of(tuple(parts), inv.origin, str(inv.path))


def local_file(inv, section: str, name: str, value: str) -> Path:
    """A local path from the inventory: ~ expanded; relative paths are relative
    to the inventory file that set the key (the working directory for --set)."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    src = _origin(inv, "docker", section, name)
    base = Path(src).parent if src != "command line" else Path.cwd()
    return (base / p).resolve() if base.is_absolute() else (Path.cwd() / base / p).resolve()


def _check_dir(inv, key: str, path: str) -> None:
    parts = path.split("/")[1:]
    if "" in parts or "." in parts or ".." in parts:
        raise inv.error(key, f"{path!r}: write a normalised path (no '//', '.' or '..')")


def plan_layout(inv, check_layout: bool = True) -> DockerFiles:
    """The managed directories and files the inventory describes (no file is
    read). ConfigError, naming the file and key, for inconsistent settings."""
    d = inv.get("docker") or {}
    out = DockerFiles()
    spec = {SECRETS: ("secrets_dir", "secret_files", "secrets_mount"),
            CERTS: ("certs_dir", "cert_files", "certs_mount")}
    for kind, (dir_key, files_key, mount_key) in spec.items():
        directory, files = d.get(dir_key), d.get(files_key) or {}
        if not directory:
            if files:
                raise ConfigError(_origin(inv, "docker", files_key), f"docker.{files_key}",
                                  f"set docker.{dir_key} too: the host directory these files go into")
            continue
        _check_dir(inv, f"docker.{dir_key}", directory)
        dmode, fmode = MODES[kind]
        owner, group = ((d.get("secrets_owner") or "root", d.get("secrets_group") or "root") if kind == SECRETS
                        else ("root", "root"))
        fs = FileSet(kind, directory, owner, group, dmode, d.get(mount_key) or ("/run/secrets" if kind == SECRETS
                                                                                 else "/certs"))
        for name, value in files.items():
            fs.files.append(ManagedFile(kind, name, f"{directory}/{name}", f"docker.{files_key}.{name}",
                                        _origin(inv, "docker", files_key, name),
                                        local_file(inv, files_key, name, value), owner, group, fmode))
        out.sets.append(fs)
    if len(out.sets) == 2:
        a, b = out.sets
        if a.dir == b.dir or b.dir.startswith(a.dir + "/") or a.dir.startswith(b.dir + "/"):
            raise inv.error("docker.certs_dir", f"{b.dir} and docker.secrets_dir {a.dir} must be separate "
                                                "directories (different modes, mounted separately)")
        if a.mount == b.mount:
            raise inv.error("docker.certs_mount", f"{b.mount} is also docker.secrets_mount")
    if out.sets and check_layout and inv.get("app.name"):
        _not_a_layout_dir(inv, out)
    return out


def _not_a_layout_dir(inv, df: DockerFiles) -> None:
    """The managed dirs are their own: re-moding app.root or the config dir
    to 0700 root would fight bootstrap's layout step on every run."""
    from ..config.app import app_spec, layout_dirs

    a = app_spec(inv)
    taken = {p: "app layout" for p, *_ in layout_dirs(a)}
    taken[a.env_path] = "env.path"
    for s in df.sets:
        key = "docker.secrets_dir" if s.kind == SECRETS else "docker.certs_dir"
        if s.dir in taken:
            raise inv.error(key, f"{s.dir} is a directory fabship already manages ({taken[s.dir]}); "
                                 f"use a directory of its own, e.g. {a.root}/{s.kind}")
        if (a.env_path + "/").startswith(s.dir + "/"):
            raise inv.error(key, f"env.path {a.env_path} is inside {s.dir}: the env file would be "
                                 "mounted into the container; keep them apart")


def load_contents(df: DockerFiles) -> DockerFiles:
    """Read every local file (before connecting). One-line ConfigError naming
    the inventory file, the key and the local path; nothing is printed."""
    for f in df.files:
        p = f.local
        try:
            info = os.stat(p)
            if st.S_ISDIR(info.st_mode):
                raise ConfigError(f.source, f.key, f"{p} is a directory, expected a file")
            if info.st_size > MAX_BYTES:
                raise ConfigError(f.source, f.key, f"{p} is {info.st_size} bytes: larger than "
                                                   f"{MAX_BYTES // 1024} KiB (is this the right file?)")
            with open(p, "rb") as fh:
                data = fh.read(MAX_BYTES + 1)
        except FileNotFoundError:
            raise ConfigError(f.source, f.key, f"{p}: no such file") from None
        except PermissionError:
            raise ConfigError(f.source, f.key, f"cannot read {p}: permission denied") from None
        except OSError as e:
            raise ConfigError(f.source, f.key, f"cannot read {p}: {e.strerror or e}") from None
        if f.kind == SECRETS and st.S_IMODE(info.st_mode) & 0o077:
            df.warnings.append(f"{p} ({f.key}) is readable by other local users "
                               f"(mode {st.S_IMODE(info.st_mode):04o}); chmod 600 it")
        df.contents[f.path] = data
    return df


def plan(inv) -> DockerFiles:
    return load_contents(plan_layout(inv))


def secret_values(df: DockerFiles) -> list[Secret]:
    """Values to mask in all output (journal/docker log tails): each text
    credential as a whole and its longer lines (a PEM key's body). Binary
    files cannot show up in text output as such."""
    from ..core.dotenv import MASK_MIN

    out: list[Secret] = []
    for f in df.files:
        if f.kind != SECRETS:
            continue
        try:
            text = df.contents[f.path].decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            continue
        whole = text.strip()
        if len(whole) >= MASK_MIN:
            out.append(Secret(whole))
        lines = [ln.strip() for ln in whole.splitlines()]
        out += [Secret(ln) for ln in lines if len(ln) >= 16 and not ln.startswith("-----") and ln != whole]
    return out


# -- on the host: check (from bootstrap's facts), then act --------------------------------------

def sha256_hex(data: bytes) -> str:
    from ..core.dotenv import sha256_hex as h

    return h(data)


def plan_problems(df: DockerFiles, facts, known_users=(), known_groups=()) -> list[str]:
    """What rules the host out before anything changes (bootstrap's phase 1)."""
    out = []
    for s in df.sets:
        got = facts.stats.get(s.dir)
        if got is not None and not got.is_dir:
            out.append(f"{s.dir} (docker.{s.kind}_dir) exists and is a {got.kind}, not a directory")
        for f in s.files:
            got = facts.stats.get(f.path)
            if got is not None and not got.is_file:
                out.append(f"{f.path} ({f.key}) exists and is a {got.kind}, not a regular file")
        if s.kind == SECRETS:
            if s.owner not in known_users and s.owner not in facts.passwd:
                out.append(f"docker.secrets_owner {s.owner}: no such user on the host")
            if s.group not in known_groups and s.group not in facts.groups:
                out.append(f"docker.secrets_group {s.group}: no such group on the host")
    return out


@dataclass
class Changes:
    lines: list = field(default_factory=list)          # shell lines (directories first)
    installs: list[ManagedFile] = field(default_factory=list)
    names: list[str] = field(default_factory=list)     # what changes, by name only (dry-run)
    report: list[str] = field(default_factory=list)    # ... with sha256 prefixes (the real run)

    def __bool__(self) -> bool:
        return bool(self.lines or self.installs)


def _short(path: str, s: FileSet) -> str:
    return f"{s.dir.rsplit('/', 1)[-1]}/{path.rsplit('/', 1)[-1]}"


def plan_changes(df: DockerFiles, facts) -> Changes:
    """Compare the facts (stat + sha256 of every managed path) with what the
    inventory wants; only what differs is in the result."""
    c = Changes()
    for s in df.sets:
        got = facts.stats.get(s.dir)
        if got is None or not got.matches(s.owner, s.group, s.mode):
            c.lines.append(sh("install -d -o {} -g {} -m {} -- {}", s.owner, s.group, s.mode, s.dir).render())
            what = (f"create {s.dir} ({s.owner}:{s.group} {s.mode})" if got is None else
                    f"{s.dir}: {got.owner}:{got.group} {int(got.mode, 8):04o} -> {s.owner}:{s.group} {s.mode}")
            c.names.append(what)
            c.report.append(what)
        for f in s.files:
            want = sha256_hex(df.contents[f.path])
            have = facts.sha256.get(f.path)
            fst = facts.stats.get(f.path)
            if have == want and fst is not None and fst.matches(f.owner, f.group, f.mode):
                continue
            c.installs.append(f)
            short = _short(f.path, s)
            if fst is None:
                c.names.append(f"write {short} (new)")
                c.report.append(f"{short}: sha256 (new file) -> {want[:12]} ({f.owner}:{f.group} {f.mode})")
            elif have != want:
                c.names.append(f"write {short} (content differs)")
                c.report.append(f"{short}: sha256 {(have or '-')[:12]} -> {want[:12]}")
            else:
                c.names.append(f"{short}: {fst.owner}:{fst.group} {int(fst.mode, 8):04o} -> "
                               f"{f.owner}:{f.group} {f.mode}")
                c.report.append(c.names[-1])
    return c


def apply_cmd(df: DockerFiles, changes: Changes) -> tuple[Cmd, bytes]:
    """(one remote script, its stdin): directories, then each file through
    envfile.install_cmd reading exactly its own bytes from the shared stdin."""
    from .envfile import install_cmd

    L = list(changes.lines)
    payload = b""
    for f in changes.installs:
        data = df.contents[f.path]
        # the hash travels on stdin too: on a command line `ps` shows it to every host user
        # its stdout (old=/new= full hashes) is not needed: the report comes from the facts
        L.append(install_cmd(f.path, f.owner, f.group, f.mode, None, keep_previous=0, size=len(data)).render()
                 + " >/dev/null")
        payload += sha256_hex(data).encode() + b"\n" + data
    return script(L), payload


def apply(ctx, df: DockerFiles, facts) -> bool:
    """The bootstrap step: check from the facts, then one remote script (or nothing)."""
    if not df:
        return False
    changes = plan_changes(df, facts)
    if not changes:
        n = len(df.files)
        ctx.ok(STEP, ", ".join(f"{s.dir} ({len(s.files)} file{'s' if len(s.files) != 1 else ''})"
                               for s in df.sets) + (" up to date" if n else " in place"))
        return False
    cmd, payload = apply_cmd(df, changes)
    # a dry run names the files only; the real run reports sha256 prefixes
    ctx.apply(STEP, Change("; ".join(changes.report), (cmd,), stdin=payload, dry_message="; ".join(changes.names)))
    return True


# -- deploy: the read-only mounts -----------------------------------------------------------------

def _mounted(run_args: list[str]) -> set[str]:
    """Sources and targets that `docker.run_args` already mounts (-v/--volume/--mount)."""
    out: set[str] = set()
    args = list(run_args or [])
    for i, a in enumerate(args):
        val = None
        if a in ("-v", "--volume", "--mount") and i + 1 < len(args):
            val, flag = args[i + 1], a
        elif a.startswith(("--volume=", "--mount=")):
            flag, val = a.split("=", 1)
        elif a.startswith("-v") and len(a) > 2:
            flag, val = "-v", a[2:]
        if val is None:
            continue
        if flag == "--mount":
            for kv in val.split(","):
                k, _, v = kv.partition("=")
                if k in ("source", "src", "target", "destination", "dst"):
                    out.add(v.rstrip("/") or "/")
        else:
            parts = val.split(":")
            out.update(p.rstrip("/") or "/" for p in parts[:2] if p.startswith("/"))
    return out


def mounts_present_cmd(inv, run_args: list[str] | None = None) -> Cmd | None:
    """A check that the directories mount_args names exist on the host, run
    before the restart strategy stops the old container (whose own mounts
    need them too): a missing one fails the deploy with nothing stopped."""
    dirs = [s.dir for s in plan_layout(inv, check_layout=False).sets if s.dir not in _mounted(run_args or [])
            and s.mount not in _mounted(run_args or [])]
    if not dirs:
        return None
    return sh("for d in " + " ".join(["{}"] * len(dirs)) + "; do [ -d \"$d\" ] || {{ echo \"$d does not exist "
              "(docker.secrets_dir/certs_dir): run fab bootstrap\" >&2; exit 3; }}; done", *dirs)


def mount_args(inv, run_args: list[str] | None = None) -> list[str]:
    """`docker run` arguments that mount the managed dirs read-only. --mount
    (not -v): a missing source fails the run instead of docker creating an
    empty root-owned directory. Left out when run_args mounts the same
    source or target already (inventories written before fabship did it)."""
    df = plan_layout(inv, check_layout=False)
    taken = _mounted(run_args or [])
    out: list[str] = []
    for s in df.sets:
        if s.dir in taken or s.mount in taken:
            continue
        out += ["--mount", f"type=bind,source={s.dir},target={s.mount},readonly"]
    return out
