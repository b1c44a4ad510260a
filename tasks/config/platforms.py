"""Platforms: what /etc/os-release says, and everything that differs per
platform (package manager commands, package names, nginx paths, the default
login user, how certbot is installed).

Supported: Debian 12, Ubuntu 22.04 / 24.04 (apt) and Amazon Linux 2023 (dnf).
The apt path runs on the sandbox hosts; no AL2023 image exists here, so the
dnf path is tested at the command level from recorded facts
(tests/unit/fixtures/facts-al2023.txt).
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass

from ..core.commands import Cmd, Raw, quote, script, sh

SUPPORTED = "Debian 12, Ubuntu 22.04/24.04, Amazon Linux 2023"


class UnsupportedPlatform(Exception):
    pass


@dataclass(frozen=True)
class Platform:
    id: str                  # os-release ID: debian, ubuntu, amzn
    version: str             # VERSION_ID: 12, 22.04, 24.04, 2023
    pretty: str
    family: str              # apt | dnf
    default_user: str        # the image's login user (EC2 AMIs)
    node_major: int          # Node.js major of the distro's own package
    nginx_site_dir: str      # where the site file lives
    nginx_enabled_dir: str | None   # sites-enabled (symlink) or None (conf.d is live)
    nginx_default_site: tuple = ()  # paths whose removal disables the distro's default site
    nginx_user: str = "www-data"
    compose: str = "v1"      # v1 (docker-compose), plugin (docker compose) or none
    certbot_via_pip: bool = False   # AL2023: certbot in a venv (not packaged)
    python_version: str = "3"       # the distro's python3

    @property
    def label(self) -> str:
        return f"{self.pretty} ({self.family})"


def parse_os_release(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, _, v = line.partition("=")
        try:
            parts = shlex.split(v)
            v = parts[0] if parts else ""
        except ValueError:
            v = v.strip("\"'")
        out[k.strip()] = v
    return out


_DEBIAN_NGINX = dict(nginx_site_dir="/etc/nginx/sites-available", nginx_enabled_dir="/etc/nginx/sites-enabled",
                     nginx_default_site=("/etc/nginx/sites-enabled/default",), nginx_user="www-data")


def detect(os_release: str) -> Platform:
    """The Platform for an /etc/os-release text; UnsupportedPlatform otherwise."""
    d = parse_os_release(os_release)
    pid, ver = d.get("ID", ""), d.get("VERSION_ID", "")
    pretty = d.get("PRETTY_NAME") or f"{pid} {ver}".strip() or "unknown"
    if pid == "debian" and ver == "12":
        return Platform("debian", ver, pretty, "apt", "admin", 18, compose="v1", python_version="3.11",
                        **_DEBIAN_NGINX)
    if pid == "ubuntu" and ver in ("22.04", "24.04"):
        return Platform("ubuntu", ver, pretty, "apt", "ubuntu", 12 if ver == "22.04" else 18,
                        compose="plugin", python_version="3.10" if ver == "22.04" else "3.12", **_DEBIAN_NGINX)
    if pid == "amzn" and ver == "2023":
        # AL2023's nginx.conf has its own default server for `_`; our site names
        # its server_name, so it is left alone (nothing to remove).
        return Platform("amzn", ver, pretty, "dnf", "ec2-user", 18, nginx_site_dir="/etc/nginx/conf.d",
                        nginx_enabled_dir=None, nginx_default_site=(), nginx_user="nginx", compose="none",
                        certbot_via_pip=True, python_version="3.9")
    raise UnsupportedPlatform(
        f"unsupported platform: {pretty} (ID={pid or '?'}, VERSION_ID={ver or '?'}); supported: {SUPPORTED}")


# -- package names -----------------------------------------------------------------

def node_packages(p: Platform, version: str | None, npm: bool = True) -> list[str]:
    """Node.js, and npm when the app's commands use it (on Debian npm is hundreds of
    packages: an app started with `node server.js` and built elsewhere needs none)."""
    if p.family == "apt":
        return ["nodejs", "npm"] if npm else ["nodejs"]
    v = int(version) if version else 20
    if v == 18:
        return ["nodejs", "nodejs-npm"] if npm else ["nodejs"]
    return [f"nodejs{v}", f"nodejs{v}-npm"] if npm else [f"nodejs{v}"]


def python_packages(p: Platform, version: str | None) -> list[str]:
    if p.family == "apt":
        return ["python3", "python3-venv"]
    if version and version not in ("3", "3.9"):
        return [f"python{version}"]
    return ["python3"]


def python_binary(p: Platform, version: str | None) -> str:
    if p.family == "dnf" and version and version not in ("3", "3.9"):
        return f"/usr/bin/python{version}"
    return "/usr/bin/python3"


def docker_packages(p: Platform, compose: bool) -> list[str]:
    if p.family == "dnf":
        return ["docker"]
    pk = ["docker.io"]
    if compose:
        pk.append("docker-compose" if p.compose == "v1" else "docker-compose-v2")
    return pk


def certbot_packages(p: Platform, method: str) -> list[str]:
    if p.certbot_via_pip:
        # certbot is not in the AL2023 repositories: a venv from PyPI (see certbot_pip_cmd)
        return ["python3", "augeas-libs"]
    return ["certbot"] + (["python3-certbot-nginx"] if method == "nginx" else [])


def base_packages(p: Platform) -> list[str]:
    """What fabship itself uses on every host: curl (health checks), openssl (cert facts)."""
    if p.family == "dnf":
        return ["curl-minimal", "openssl", "tar"]   # curl-minimal is AL2023's curl
    return ["curl", "openssl", "ca-certificates"]


def node_major(version_text: str | None) -> int | None:
    """'18.19.0+dfsg-6~deb12u2' or 'v20.11.1' or '1:20.11.1-1.amzn2023' -> major."""
    if not version_text:
        return None
    v = version_text.strip().lstrip("v")
    if ":" in v:
        v = v.split(":", 1)[1]
    head = v.split(".", 1)[0]
    return int(head) if head.isdigit() else None


# -- package manager commands ---------------------------------------------------------

APT_ENV = "DEBIAN_FRONTEND=noninteractive"
# A fresh Ubuntu/Debian VM often has cloud-init or unattended-upgrades holding
# the dpkg lock for minutes: wait for it (bounded) instead of failing at once.
# A mirror hiccup is retried rather than failing the run.
APT_LOCK_WAIT = ["-o", "DPkg::Lock::Timeout=300", "-o", "Acquire::Retries=3"]
APT_OPTS = ["-y", "-q", *APT_LOCK_WAIT, "--no-install-recommends", "-o", "Dpkg::Options::=--force-confdef",
            "-o", "Dpkg::Options::=--force-confold"]


def installed_query(family: str, names: list[str]) -> Cmd | None:
    """Print one line per package among names: apt `NAME<TAB>STATUS<TAB>VERSION`
    (installed when STATUS starts with 'ii'), dnf `NAME<TAB>VERSION` (missing
    ones print 'package X is not installed', which has no tab). The filtering
    happens in tasks/facts/script.py: one process on the host, not a pipeline."""
    if not names:
        return None
    if family == "apt":
        return Cmd("dpkg-query", "-W", "-f=${Package}\\t${db:Status-Abbrev}\\t${Version}\\n", *names,
                   Raw("2>/dev/null"))
    return Cmd("rpm", "-q", "--qf", "%{NAME}\\t%{VERSION}\\n", *names, Raw("2>/dev/null"))


def install_cmd(p: Platform, names: list[str]) -> Cmd:
    """One package-manager call for all missing packages. apt refreshes its
    lists first only when they are missing or older than a day, and once more
    if the install fails (a mirror moved on since the last update); a dpkg run
    an earlier bootstrap's kill interrupted is finished first."""
    if p.family == "apt":
        inst = Cmd(Raw(APT_ENV), "apt-get", "install", *APT_OPTS, *names)
        upd = Cmd(Raw(APT_ENV), "apt-get", "update", "-q", *APT_LOCK_WAIT)
        return script([
            # an earlier run killed inside dpkg ("dpkg was interrupted"): apt refuses to install
            # until it is finished, so finish it (its files in updates/ are what apt checks)
            "if [ -n \"$(ls -A /var/lib/dpkg/updates 2>/dev/null)\" ]; then " + Cmd(
                Raw(APT_ENV), "dpkg", "--force-confdef", "--force-confold", "--configure", "-a").render() + "; fi",
            "if [ -z \"$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 2>/dev/null"
            " | head -n 1)\" ]; then " + upd.render() + "; fi",
            f"{inst.render()} || {{ {upd.render()} && {inst.render()}; }}",
        ])
    return Cmd("dnf", "install", "-y", "-q", *names)


def certbot_pip_cmd(venv: str = "/opt/certbot", method: str = "nginx") -> Cmd:
    """AL2023: certbot from PyPI in its own venv, linked into /usr/local/bin."""
    pkgs = ["certbot"] + (["certbot-nginx"] if method == "nginx" else [])
    return script([
        sh("python3 -m venv {}", venv),
        sh("{}/bin/pip install -q --upgrade pip", venv),
        sh("{}/bin/pip install -q " + " ".join(quote(x) for x in pkgs), venv),
        sh("ln -sf {}/bin/certbot /usr/local/bin/certbot", venv),
    ])


def nginx_site_paths(p: Platform, app: str) -> tuple[str, str | None]:
    """(site file, sites-enabled link or None)."""
    site = f"{p.nginx_site_dir}/{app}.conf"
    link = f"{p.nginx_enabled_dir}/{app}.conf" if p.nginx_enabled_dir else None
    return site, link
