"""Host facts in one round trip: one read-only shell script per host prints
everything bootstrap needs to decide what to change, in `@@ section` blocks.

The script runs before the platform is known, so it carries the package
names for both families and picks the one the host has (dpkg-query or rpm).
Everything is batched: one sha256sum and one stat over all managed paths,
one `systemctl show` over all units, one openssl per certificate.

Also here: `put_files_cmd`, the one way fabship writes templated files
(non-secret) on a host: a tar on stdin, each file moved into place with a
same-directory rename after owner and mode are set and its bytes fsynced.
"""
from __future__ import annotations

import io
import re
import tarfile
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ..config.platforms import installed_query
from ..core.commands import Cmd, Raw, quote, script, sh

MARK = "@@"


@dataclass
class FactsRequest:
    apt_packages: list[str] = field(default_factory=list)
    dnf_packages: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)        # stat these
    hash_paths: list[str] = field(default_factory=list)   # and sha256 these (regular files)
    units: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    certs: list[tuple[str, str, int]] = field(default_factory=list)   # (name, pem path, seconds)
    renewal_confs: list[str] = field(default_factory=list)
    swap_path: str | None = None
    env_key_hashes: str | None = None   # env file path: per-key hashes (dry-run key diff)
    # (APP_ROOT/current, the env snapshots dir): sha256 of the env the serving release was started with
    env_applied: tuple[str, str] | None = None
    commands: list[str] = field(default_factory=list)     # `command -v` these
    contents: list[str] = field(default_factory=list)     # non-secret files to read (dry-run diffs)


# /proc/swaps belongs to the kernel, not to a container: on a shared kernel it
# lists other containers' swap files too (and ones whose host is gone). Keep the
# header and the entries that are this host's: the path exists here and is
# canonical (the kernel prints resolved paths, so a link's name is never ours).
OWN_SWAPS = ("{ IFS= read -r h; printf '%s\\n' \"$h\"; while read -r n rest; do "
             "[ -e \"$n\" ] && [ \"$(readlink -f -- \"$n\")\" = \"$n\" ] && printf '%s %s\\n' \"$n\" \"$rest\" || :; "
             "done; } < /proc/swaps")


def _uniq(xs):
    seen, out = set(), []
    for x in xs:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


def facts_cmd(req: FactsRequest) -> Cmd:
    """The read-only fact script. Missing things print nothing; the parser
    treats absence as absence. Never fails as a whole (no `set -e`)."""
    L: list = []

    def section(name):
        L.append(f"echo '{MARK} {name}'")

    # Forks are the cost on a busy host (~3-10 ms each): small files are read
    # with a builtin loop, and each tool runs once over all its arguments.
    L.append("catf() { while IFS= read -r l || [ -n \"$l\" ]; do printf '%s\\n' \"$l\"; done < \"$1\"; } 2>/dev/null")
    section("os")
    L.append("catf /etc/os-release")
    section("virt")
    L.append("[ -r /run/systemd/container ] && catf /run/systemd/container")
    section("ipv6")
    L.append("[ -s /proc/net/if_inet6 ] && echo yes")
    section("pkgs")
    apt_q, dnf_q = installed_query("apt", req.apt_packages), installed_query("dnf", req.dnf_packages)
    L.append("if command -v dpkg-query >/dev/null 2>&1; then "
             + (apt_q.render() if apt_q else ":") + "; elif command -v rpm >/dev/null 2>&1; then "
             + (dnf_q.render() if dnf_q else ":") + "; fi")
    if req.commands:
        section("commands")
        L.append("for c in " + " ".join(sh("{}", c).render() for c in req.commands)
                 + '; do command -v "$c"; done')
    paths = _uniq(req.paths + req.hash_paths)
    if paths:
        section("stat")
        # %N with literal quoting: "path -> target" for symlinks, "path" otherwise
        L.append(Cmd(Raw("QUOTING_STYLE=literal"), "stat", "-c", "%F\t%U\t%G\t%a\t%s\t%N", "--", *paths,
                     Raw("2>/dev/null")).render())
    if req.hash_paths:
        section("sha256")
        L.append(Cmd("sha256sum", "--", *_uniq(req.hash_paths), Raw("2>/dev/null")).render())
    if req.units:
        section("units")
        L.append(Cmd("systemctl", "show", "--no-pager", "-p", "Id,LoadState,UnitFileState,ActiveState",
                     "--", *req.units, Raw("2>/dev/null")).render())
        # the manager caches UnitFileState until a daemon-reload, and deploy switches which
        # blue/green instance is enabled with `systemctl enable/disable --no-reload`: the
        # symlinks in /etc/systemd/system/*.wants (or .requires) are the truth (no fork)
        section("unit_links")
        L.append("for u in " + " ".join(quote(u) for u in req.units) + "; do "
                 "for w in /etc/systemd/system/*.wants/\"$u\" /etc/systemd/system/*.requires/\"$u\"; do "
                 "if [ -L \"$w\" ]; then printf '%s\\n' \"$u\"; break; fi; done; done")
    names = _uniq(req.users + req.groups)
    if names:
        section("users")
        # the `grep -H` lines (FILE:ENTRY) from a builtin loop: a fork is ~4 ms of a busy host's CPU,
        # ~6% of what an idempotent bootstrap costs it (issue 17); a quoted case word is literal
        match = "|".join(f"{quote(n)}:*" for n in names)
        L.append("for f in /etc/passwd /etc/group; do while IFS= read -r l || [ -n \"$l\" ]; do "
                 f"case \"$l\" in {match}) printf '%s:%s\\n' \"$f\" \"$l\";; esac; "
                 "done < \"$f\"; done 2>/dev/null")
    if req.swap_path:
        section("swaps")
        L.append(OWN_SWAPS)
        section("meminfo")
        L.append("while read -r k v _; do case $k in MemTotal:|SwapTotal:) echo \"$k $v kB\";; esac; done "
                 "< /proc/meminfo")
        section("swapreal")
        # A swap path may be a link to where swap files can live (a plain fs
        # under an overlay root): the kernel and /proc/swaps know the target.
        L.append(sh("printf '%s\\n' {} && r=$(readlink -f -- {}) && echo \"$r\" && stat -L -c "
                    "'%F\t%U\t%G\t%a\t%s' -- \"$r\" 2>/dev/null", req.swap_path, req.swap_path).render())
        section("swapfs")
        L.append(sh("r=$(readlink -f -- {}); stat -f -c %T -- \"${{r%/*}}/\" 2>/dev/null",
                    req.swap_path).render())
        section("fstab")
        L.append(sh("n=0; while IFS= read -r l || [ -n \"$l\" ]; do n=$((n + 1)); case $l in *{}*) "
                    "printf '%s:%s\\n' \"$n\" \"$l\";; esac; done < /etc/fstab", req.swap_path).render())
    for name, pem, secs in req.certs:
        section(f"cert {name}")
        L.append(sh("[ -r {} ] && openssl x509 -in {} -noout -enddate -issuer -ext subjectAltName "
                    "-checkend {} 2>/dev/null; echo \"checkend=$?\"", pem, pem, str(secs)).render())
    for name in req.renewal_confs:
        section(f"renewal {name}")
        L.append(sh("f=/etc/letsencrypt/renewal/{}.conf; [ -r \"$f\" ] && while IFS= read -r l; do "
                    "case $l in server*=*|authenticator*=*) printf '%s\\n' \"$l\";; esac; done < \"$f\"",
                    name).render())
    if req.env_key_hashes:
        from ..core.dotenv import key_hashes_cmd

        section("envkeys")
        L.append(f"( {key_hashes_cmd(req.env_key_hashes).render()} ) 2>/dev/null")
    if req.env_applied:
        section("envapplied")
        L.append(applied_env_sha(*req.env_applied))
    for p in req.contents:
        section(f"content {p}")
        L.append(sh("[ -f {} ] && base64 -w0 < {}; echo", p, p).render())
    section("end")
    return script(L, strict=False)


def applied_env_sha(current: str, snapshots: str) -> str:
    """Shell lines printing the sha256 of the env the current release was
    started with: its snapshot, written whenever fabship started it healthy
    (deploy, rollback, rotate-env, bootstrap). An env file that differs was
    installed but not applied. Nothing when unknown."""
    return "\n".join([
        sh("rid=$(readlink -- {} 2>/dev/null || true); rid=${{rid%/}}; rid=${{rid##*/}}; d={}", current,
           snapshots).render(),
        'case "$rid" in ""|.*|*[!A-Za-z0-9._-]*) ;; *) [ -f "$d/$rid.env" ] && [ ! -L "$d/$rid.env" ] && '
        'sha256sum < "$d/$rid.env" | cut -d" " -f1;; esac',
    ])


def parse_sha(lines: list[str]) -> str | None:
    text = "".join(lines).strip()
    return text if len(text) == 64 and all(ch in "0123456789abcdef" for ch in text) else None


# -- parsing -----------------------------------------------------------------------

@dataclass
class Stat:
    kind: str      # regular file, directory, symbolic link, ...
    owner: str
    group: str
    mode: str      # octal without leading zero, as stat prints it (e.g. 600, 2750)
    size: int

    @property
    def is_file(self):
        return self.kind.startswith("regular")

    @property
    def is_dir(self):
        return self.kind == "directory"

    @property
    def is_link(self):
        return self.kind == "symbolic link"

    def matches(self, owner: str, group: str, mode: str) -> bool:
        return (self.owner, self.group, int(self.mode, 8)) == (owner, group, int(mode, 8))


@dataclass
class Cert:
    exists: bool = False
    valid_for_min: bool = False
    not_after: str = ""
    issuer: str = ""
    names: list[str] = field(default_factory=list)


@dataclass
class Facts:
    sections: dict[str, list[str]]
    os_release: str = ""
    virt: str = ""
    packages: dict[str, str] = field(default_factory=dict)      # installed name -> version
    commands: dict[str, str] = field(default_factory=dict)
    stats: dict[str, Stat] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)
    units: dict[str, dict] = field(default_factory=dict)
    unit_links: set[str] | None = None   # units with a .wants/.requires link in /etc (None: not asked)
    passwd: dict[str, list[str]] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)   # group -> members
    member_of: dict[str, list[str]] = field(default_factory=dict)
    swaps: list[dict] = field(default_factory=list)
    meminfo: dict[str, int] = field(default_factory=dict)
    swap_fs: str = ""
    swap_real: str = ""             # the swap path with links resolved
    fstab: list[tuple[int, str]] = field(default_factory=list)
    certs: dict[str, Cert] = field(default_factory=dict)
    renewal: dict[str, dict] = field(default_factory=dict)
    env_keys: dict[str, str] | None = None
    env_applied: str | None = None   # sha256 of the env the serving release runs (FactsRequest.env_applied)
    contents: dict[str, str] = field(default_factory=dict)   # path -> text (only files that exist)
    ipv6: bool = False
    complete: bool = False

    @property
    def in_container(self) -> bool:
        return bool(self.virt) and self.virt != "none"

    def unit_enabled(self, unit: str) -> bool:
        state = self.units.get(unit, {}).get("UnitFileState")
        if state in ("enabled", "disabled") and self.unit_links is not None:
            return unit in self.unit_links   # the state may be cached from before an `enable --no-reload`
        return state in ("enabled", "enabled-runtime", "static", "indirect", "alias")

    def unit_active(self, unit: str) -> bool:
        return self.units.get(unit, {}).get("ActiveState") == "active"

    def unit_loaded(self, unit: str) -> bool:
        return self.units.get(unit, {}).get("LoadState") == "loaded"


def parse_facts(text: str) -> Facts:
    sections: dict[str, list[str]] = {}
    cur = None
    for line in text.splitlines():
        if line.startswith(MARK + " "):
            cur = line[len(MARK) + 1:].strip()
            sections.setdefault(cur, [])
            continue
        if cur is not None:
            sections[cur].append(line)
    f = Facts(sections=sections, complete="end" in sections)
    f.os_release = "\n".join(sections.get("os", []))
    f.virt = "\n".join(sections.get("virt", [])).strip()
    f.ipv6 = "yes" in sections.get("ipv6", [])
    for ln in sections.get("pkgs", []):
        parts = ln.split("\t")
        if len(parts) == 3:        # dpkg-query: name, status, version ('ii ' = installed)
            if parts[1].startswith("ii") and parts[0]:
                f.packages[parts[0]] = parts[2]
        elif len(parts) == 2 and parts[0] and " " not in parts[0]:   # rpm: name, version
            f.packages[parts[0]] = parts[1]
    for ln in sections.get("commands", []):
        if ln.startswith("/"):
            f.commands[ln.rsplit("/", 1)[1]] = ln
    for ln in sections.get("stat", []):
        parts = ln.split("\t", 5)
        if len(parts) == 6:
            kind, owner, group, mode, size, name = parts
            path, sep, target = name.partition(" -> ")
            if kind == "symbolic link" and sep:
                f.links[path] = target
            f.stats[path] = Stat(kind, owner, group, mode, int(size) if size.isdigit() else 0)
    for ln in sections.get("sha256", []):
        m = re.match(r"^\\?([0-9a-f]{64})\s+\*?(.*)$", ln)
        if m:
            f.sha256[m.group(2)] = m.group(1)
    if "unit_links" in sections:
        f.unit_links = {ln.strip() for ln in sections["unit_links"] if ln.strip()}
    cur_unit: dict = {}
    for ln in sections.get("units", []) + [""]:
        if not ln.strip():
            if cur_unit.get("Id"):
                f.units[cur_unit["Id"]] = cur_unit
            cur_unit = {}
            continue
        k, _, v = ln.partition("=")
        cur_unit[k] = v
    gids: dict[str, str] = {}
    for ln in sections.get("users", []):
        src, _, rest = ln.partition(":")
        parts = rest.split(":")
        if src == "/etc/passwd" and len(parts) >= 4:
            f.passwd[parts[0]] = parts
        elif src == "/etc/group" and len(parts) >= 3:
            f.groups[parts[0]] = [m for m in (parts[3].split(",") if len(parts) > 3 else []) if m]
            gids[parts[0]] = parts[2]
    for user, pw in f.passwd.items():
        # the groups (among those asked about) the user is in: primary gid or member list
        f.member_of[user] = [g for g, members in f.groups.items() if user in members or gids.get(g) == pw[3]]
    for ln in sections.get("swaps", [])[1:]:
        parts = ln.split()
        if len(parts) >= 3 and parts[2].isdigit():
            f.swaps.append({"name": parts[0], "type": parts[1], "size": int(parts[2]) * 1024})
    for ln in sections.get("meminfo", []):
        m = re.match(r"(\w+):\s+(\d+)\s*kB", ln)
        if m:
            f.meminfo[m.group(1)] = int(m.group(2)) * 1024
    f.swap_fs = "\n".join(sections.get("swapfs", [])).strip()
    real = sections.get("swapreal", [])
    if len(real) >= 2 and real[1].startswith("/"):
        swap_path, f.swap_real = real[0], real[1]
        parts = real[2].split("\t") if len(real) > 2 else []
        st = f.stats.get(swap_path)
        if len(parts) == 5 and st is not None and st.is_link:
            # judge a linked swap file by its target, not by the link
            kind, owner, group, mode, size = parts
            f.stats[swap_path] = Stat(kind, owner, group, mode, int(size) if size.isdigit() else 0)
        elif st is not None and st.is_link:
            f.stats.pop(swap_path)  # a dangling link: the file is still to be made
    for ln in sections.get("fstab", []):
        n, _, rest = ln.partition(":")
        if n.isdigit():
            f.fstab.append((int(n), rest))
    for name, lines in sections.items():
        if name.startswith("cert "):
            f.certs[name[5:]] = parse_cert(lines)
        elif name.startswith("content "):
            raw = "".join(lines).strip()
            if raw:
                import base64

                f.contents[name[8:]] = base64.b64decode(raw).decode("utf-8", "replace")
        elif name.startswith("renewal "):
            conf = {}
            for ln in lines:
                k, _, v = ln.partition("=")
                conf[k.strip()] = v.strip()
            f.renewal[name[8:]] = conf
    if "envkeys" in sections:
        from ..core.dotenv import parse_key_hashes

        f.env_keys = parse_key_hashes("\n".join(sections["envkeys"]))
    f.env_applied = parse_sha(sections.get("envapplied", []))
    return f


@dataclass
class X509:
    """What `openssl x509 -noout -enddate -issuer [-subject] -ext subjectAltName` printed:
    the one parser of a certificate, read by bootstrap's TLS step and verify's check."""
    not_after: datetime | None     # None: no date openssl could print (or none printed)
    not_after_text: str            # as openssl printed it ("" when absent)
    issuer: str
    subject: str
    names: list                    # DNS names of the subjectAltName extension


def parse_x509(text: str | list[str]) -> X509:
    lines = [ln.strip() for ln in (text.splitlines() if isinstance(text, str) else text)]
    x = X509(None, "", "", "", [])
    for ln in lines:
        key, _, value = ln.partition("=")
        if key == "notAfter" and _:
            x.not_after_text = value
            try:
                x.not_after = datetime.strptime(" ".join(value.split()), "%b %d %H:%M:%S %Y %Z").replace(
                    tzinfo=timezone.utc)
            except ValueError:
                x.not_after = None
        elif key == "issuer" and _:
            x.issuer = value.strip()
        elif key == "subject" and _:
            x.subject = value.strip()
        elif ln.startswith("DNS:") or ", DNS:" in ln:   # the extension's value line
            x.names += [n.strip()[4:] for n in ln.split(",") if n.strip().startswith("DNS:")]
    return x


def parse_cert(lines: list[str]) -> Cert:
    """The certificate section of the fact script: parse_x509 plus `checkend=` (still
    valid for tls.min_days)."""
    x = parse_x509(lines)
    c = Cert(exists=bool(x.not_after_text), not_after=x.not_after_text, issuer=x.issuer, names=x.names)
    c.valid_for_min = c.exists and any(ln.strip() == "checkend=0" for ln in lines)
    return c


# -- writing templated files ------------------------------------------------------------

@dataclass
class FileSpec:
    """A file fabship manages. content None + link set = a symlink; absent=True = remove it."""

    path: str
    content: bytes | None = None
    owner: str = "root"
    group: str = "root"
    mode: str = "0644"
    link: str | None = None
    absent: bool = False

    @property
    def kind(self) -> str:
        return "absent" if self.absent else "link" if self.link is not None else "file"


def tar_payload(files: list[FileSpec]) -> bytes:
    """The files' bytes as an uncompressed tar named 0, 1, 2 ... (stdin of put_files_cmd)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, f in enumerate(files):
            if f.kind != "file":
                continue
            data = f.content or b""
            info = tarfile.TarInfo(str(i))
            info.size = len(data)
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def put_files_lines(files: list[FileSpec], stage: str = "$stage", backup: str | None = None,
                    offset: int = 0) -> list[str]:
    """Shell lines that put each file in place (expects the tar extracted in
    $stage). With `backup` (a shell variable name holding a directory), the
    previous state of every path is saved there first: backup/N is the old
    file (cp -a keeps bytes, owner, mode), backup/N.absent marks 'did not exist'."""
    L: list[str] = []
    for i, f in enumerate(files, start=offset):
        p = sh("{}", f.path).render()
        if backup:
            L.append(f'if [ -e {p} ] || [ -L {p} ]; then cp -a -- {p} "${backup}/{i}"; '
                     f'else : > "${backup}/{i}.absent"; fi')
        if f.kind == "absent":
            L.append(f"rm -f -- {p}")
        elif f.kind == "link":
            L.append(sh('ln -sfn -- {} {}.fabship-new && mv -Tf -- {}.fabship-new {}',
                        f.link, f.path, f.path, f.path).render())
        else:
            mode = f.mode if f.mode.startswith("0") else "0" + f.mode
            L.append(f'mkdir -p -- "$(dirname -- {p})"')
            L.append(f'tmp=$(mktemp "$(dirname -- {p})/.fabship.XXXXXX")')
            L.append(f'cat "{stage}/{i}" > "$tmp"')
            L.append(sh('chown -- {} "$tmp" && chmod -- {} "$tmp"', f"{f.owner}:{f.group}", mode).render())
            L.append('sync -- "$tmp"')   # the bytes are on disk before the name points at them
            L.append(f'mv -f -- "$tmp" {p}')
    return L


def restore_lines(files: list[FileSpec], backup: str = "backup", offset: int = 0) -> list[str]:
    """Undo put_files_lines from the backup directory: the previous bytes come back exactly."""
    L: list[str] = []
    for i, f in enumerate(files, start=offset):
        p = sh("{}", f.path).render()
        L.append(f'if [ -e "${backup}/{i}.absent" ]; then rm -f -- {p}; '
                 f'elif [ -e "${backup}/{i}" ] || [ -L "${backup}/{i}" ]; then '
                 f'rm -f -- {p}; mv -f -- "${backup}/{i}" {p}; fi')
    return L


def stage_lines() -> list[str]:
    """Extract the tar on stdin into a private temp dir ($stage), removed on exit."""
    return [
        "stage=$(mktemp -d)",
        "trap 'rm -rf \"$stage\"' EXIT",
        'tar -x -f - -C "$stage" --no-same-owner',
    ]


def put_files_cmd(files: list[FileSpec], after: list[str] | None = None) -> Cmd:
    """One script that writes `files` (tar on stdin; see tar_payload), then runs `after`."""
    return script(stage_lines() + put_files_lines(files) + list(after or []))
