"""The package set bootstrap installs for the app on a platform (the one list
verify checks too)."""
from __future__ import annotations

from ..config import platforms as plat
from ..config.app import AppSpec


def candidate_platforms():
    return [plat.detect(t) for t in (
        'ID=debian\nVERSION_ID="12"', 'ID=ubuntu\nVERSION_ID="22.04"', 'ID=ubuntu\nVERSION_ID="24.04"',
        'ID=amzn\nVERSION_ID="2023"')]


def wanted_packages(spec: AppSpec, p: plat.Platform, tls) -> list[str]:
    out = plat.base_packages(p)
    if spec.nginx:
        out.append("nginx")
    if spec.kind == "node":
        out += plat.node_packages(p, spec.node_version, npm=spec.needs_npm)
    elif spec.kind == "python":
        out += plat.python_packages(p, spec.python_version)
    elif spec.kind in ("docker", "compose"):
        out += plat.docker_packages(p, spec.kind == "compose")
    if tls:
        out += plat.certbot_packages(p, tls.method)
    out += spec.packages
    seen, res = set(), []
    for x in out:
        if x not in seen:
            seen.add(x)
            res.append(x)
    return res
