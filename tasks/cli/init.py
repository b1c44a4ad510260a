"""`fabship init`: scaffold an ops repository (the team's own, beside its apps),
as `kamal init` or `cap install` do. Never overwrites a file: a second run says
what exists and writes only what is missing."""
from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..config.schema import NAME
from ..core.errors import ConfigError
from ..core.templates import render

NAME_RE = re.compile(rf"{NAME}\Z")
ADDRESS_RE = re.compile(r"[A-Za-z0-9_.:\-\[\]]+\Z")
REGION_RE = re.compile(r"[a-z]{2}(-[a-z]+)+-\d\Z")
TAG_KEY_RE = re.compile(r"[A-Za-z0-9 _.:/=+\-@]{1,128}\Z")
GITIGNORE_LINES = (".fabship/", "inventories/*.local.yaml", "env/*.env")


@dataclass
class StaticHost:
    name: str
    address: str


@dataclass
class Ec2Selector:
    region: str
    key: str
    value: str


@dataclass
class Written:
    created: list[Path]
    existing: list[Path]
    appended: list[Path]


def parse_static(items: list[str]) -> list[StaticHost]:
    """`[name=]address` per host; a bare address names the host after itself."""
    out, seen = [], set()
    for i, item in enumerate(items, 1):
        name, sep, address = item.partition("=")
        if not sep:
            address, name = name, ""
        address = address.strip()
        if not ADDRESS_RE.match(address):
            raise ConfigError("--static", "", f"{item!r}: expected [NAME=]ADDRESS (a host name or IP address)")
        name = name.strip() or (address if NAME_RE.match(address) else f"host{i}")
        if not NAME_RE.match(name):
            raise ConfigError("--static", "", f"{item!r}: host name {name!r} must be letters, digits, '.', '_' or '-'")
        if name in seen:
            raise ConfigError("--static", "", f"host name {name!r} given twice")
        seen.add(name)
        out.append(StaticHost(name, address))
    return out


def parse_ec2(region: str, tag: str) -> Ec2Selector:
    if not REGION_RE.match(region or ""):
        raise ConfigError("--ec2", "", f"region {region!r}: expected an AWS region such as eu-west-1")
    key, sep, value = (tag or "").partition("=")
    if not sep:  # a bare value is the Name tag, as the guides name instances
        key, value = "Name", key
    if not TAG_KEY_RE.match(key) or not value or "\n" in value or '"' in value:
        raise ConfigError("--ec2", "", f"tag {tag!r}: expected KEY=VALUE (e.g. Project=shop) or a Name tag value")
    return Ec2Selector(region, key, value)


def default_app_name(root: Path) -> str:
    base = re.sub(r"[^A-Za-z0-9_.\-]+", "-", root.resolve().name).strip("-._")
    base = re.sub(r"-?ops$", "", base) or base
    return base if base and NAME_RE.match(base) else "app"


def scaffold(directory: str | os.PathLike = ".", *, name: str = "dev", app: str | None = None,
             static: list[str] | None = None, ec2: tuple[str, str] | None = None, user: str | None = None,
             key_file: str | None = None) -> Written:
    """Write the ops repository's files under `directory` (created when missing)."""
    if static and ec2:
        raise ConfigError("init", "", "give --static HOST... or --ec2 REGION TAG, not both")
    if not NAME_RE.match(name or ""):
        raise ConfigError("--name", "", f"{name!r}: an inventory name is letters, digits, '.', '_' or '-'")
    root = Path(directory)
    app = app or default_app_name(root)
    if not NAME_RE.match(app):
        raise ConfigError("--app", "", f"{app!r}: an app name is letters, digits, '.', '_' or '-'")
    if user is not None and not re.match(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z", user):
        raise ConfigError("--user", "", f"{user!r}: expected a user name")
    if key_file is not None and ("\n" in key_file or not key_file.strip()):
        raise ConfigError("--key-file", "", "expected a path")
    sel = parse_ec2(*ec2) if ec2 else None
    hosts = parse_static(static) if static else ([] if sel else [StaticHost("web1", "192.0.2.10")])
    ssh_user = user or ("ec2-user" if sel else "root")
    if root.exists() and not root.is_dir():
        raise ConfigError(root, "", "exists and is not a directory")

    files: list[tuple[Path, str, int]] = [
        (Path("inventories") / f"{name}.yaml",
         render("init/inventory.yaml.j2", env_name=name, app=app, ec2=sel, static=hosts, ssh_user=ssh_user), 0o644),
        (Path("inventories") / f"{name}.local.yaml",
         render("init/inventory.local.yaml.j2", env_name=name, app=app, key_file=key_file), 0o600),
        (Path("inventories") / "known_hosts" / name,
         f"# SSH host keys of the {name} hosts ([address]:port KEYTYPE KEY). Committed: see README.md here.\n",
         0o644),
        (Path("inventories") / "known_hosts" / "README.md", render("init/known_hosts-README.md.j2"), 0o644),
        (Path("env") / f"{name}.env.example", render("init/env.example.j2", env_name=name), 0o644),
        # the real env file: secrets, so 0600 from its first byte and git-ignored
        (Path("env") / f"{name}.env",
         f"APP_SECRET={secrets.token_hex(24)}\nLOG_LEVEL=info\n", 0o600),
        (Path("fabfile.py"), render("init/fabfile.py.j2"), 0o644),
    ]
    out = Written([], [], [])
    for rel, text, mode in files:
        path = root / rel
        if path.exists() or path.is_symlink():
            out.existing.append(rel)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        out.created.append(rel)
    gi = root / ".gitignore"
    text = gi.read_text() if gi.exists() else ""
    have = text.splitlines()
    missing = [line for line in GITIGNORE_LINES if line not in have]
    if missing:
        existed = gi.exists()
        with open(gi, "a") as f:
            if text and not text.endswith("\n"):
                f.write("\n")
            f.write(render("init/gitignore.j2") if not existed else "".join(f"{line}\n" for line in missing))
        (out.appended if existed else out.created).append(Path(".gitignore"))
    elif gi.exists():
        out.existing.append(Path(".gitignore"))
    return out


def check_generated(root: Path, name: str) -> None:
    """The inventory init wrote must load as it is (a scaffold that fails
    validation would be the first thing a new user meets)."""
    from ..config.inventory import load_inventory

    load_inventory(str(root / "inventories" / f"{name}.yaml"))


def report(root: Path, name: str, w: Written) -> str:
    lines = [f"fabship init in {root}:"]
    lines += [f"  created   {p}" for p in w.created]
    lines += [f"  appended  {p} (fabship's lines)" for p in w.appended]
    lines += [f"  exists    {p} (left as it is)" for p in w.existing]
    if not w.created and not w.appended:
        lines.append("  nothing to do: every file exists")
    lines += ["", "next:",
              f"  edit inventories/{name}.yaml (hosts, app, deploy) and env/{name}.env",
              f"  fabship hosts -i {name}",
              f"  fabship bootstrap -i {name} --accept-new-host-keys   # records new host keys, then commit them",
              f"  fabship deploy -i {name}"]
    return "\n".join(lines)


def run_init(directory=".", **kw) -> None:
    """Scaffold, report, and check that the inventory written loads (FabshipError on bad input)."""
    from pathlib import Path as _P

    name = kw.get("name") or "dev"
    if kw.get("ec2") and not all(kw["ec2"]):
        raise ConfigError("--ec2", "", "needs both REGION and TAG")
    written = scaffold(directory, **kw)
    print(report(_P(directory), name, written))
    check_generated(_P(directory), name)
