"""Helpers and fixtures for the deploy integration tests (no tests here).

Hosts h3, h4, h5 (issue 5's hosts). The app is apps/node-app as `shipdemo`
(blue/green on 3201/3202 behind nginx), deployed from a local git repo made
in a temp dir with tags:
  v1, v2        good releases (VERSION file says v1/v2)
  v3-broken     FAIL_HEALTH file: /health answers 503
  v4-nobuild    FAIL_BUILD file: `npm run build` exits 1
  v5            good
Every check reads the real hosts: nginx's answer from the control machine,
files and units over SSH.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from fab_cli import run_fab, start_fab

REPO = Path(__file__).resolve().parents[2]
HOSTS = ["h3", "h4", "h5"]
LIMIT = ",".join(HOSTS)
APP = "shipdemo"
ROOT = f"/opt/{APP}"
SECRET = "deploy-test-secret-0123456789"


def git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def make_repo(base: Path) -> Path:
    d = base / "shipdemo-src"
    shutil.copytree(REPO / "apps" / "node-app", d, ignore=shutil.ignore_patterns("dist", "node_modules"))
    env = dict(os.environ, GIT_AUTHOR_NAME="ci", GIT_AUTHOR_EMAIL="ci@fabship", GIT_COMMITTER_NAME="ci",
               GIT_COMMITTER_EMAIL="ci@fabship")

    def g(*a):
        subprocess.run(["git", *a], cwd=d, check=True, capture_output=True, env=env)

    g("init", "-q", "-b", "main")
    for tag, extra in (("v1", None), ("v2", None), ("v3-broken", "FAIL_HEALTH"), ("v4-nobuild", "FAIL_BUILD"),
                       ("v5", None)):
        for f in ("FAIL_HEALTH", "FAIL_BUILD"):
            if (d / f).exists():
                (d / f).unlink()
        if extra:
            (d / extra).write_text("on\n")
        (d / "VERSION").write_text(tag + "\n")
        g("add", "-A")
        g("commit", "-qm", tag)
        g("tag", tag)
    return d


def write_inventory(base: Path, repo: Path, *, name="inv.yaml", app=APP, port=3200, extra: dict | None = None) -> Path:
    env = base / f"{app}.env"
    env.write_text(f"APP_SECRET={SECRET}\nLOG_LEVEL=info\n")
    os.chmod(env, 0o600)
    data = {
        "include": [str(REPO / "inventories" / "sandbox.yaml")],
        "packages": ["git"],
        "app": {"name": app, "kind": "node", "port": port, "start": "npm run start", "node_version": "18"},
        "nginx": {"server_name": app + ".{host}.sandbox.test"},  # one site per app on a host
        "env": {"source": {"type": "file", "file": str(env)}},
        "deploy": {"source": "git", "repo": str(repo), "ref": "v1",
                   "build": ["npm ci --no-audit --no-fund --offline", "npm run build"], "keep_releases": 3},
        "health": {"path": "/health", "body_contains": '"status":"ok"', "retries": 10, "interval": 0.5,
                   "timeout": 3},
    }
    for k, v in (extra or {}).items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k].update(v)
        else:
            data[k] = v
    p = base / name
    p.write_text(yaml.safe_dump(data))
    return p


def fab(*args, timeout=600, env=None) -> subprocess.CompletedProcess:
    return run_fab(*args, env=env, timeout=timeout)


def fab_popen(*args, env=None) -> subprocess.Popen:
    return start_fab(*args, env=env, stderr=subprocess.STDOUT, start_new_session=True)


def out(r) -> str:
    return (r.stdout or "") + (r.stderr or "")


def address(fleet, name: str) -> str:
    return fleet.host(name).address


def http_get(addr: str, path: str = "/version", host: str | None = None, timeout: float = 5) -> tuple[int, str]:
    req = urllib.request.Request(f"http://{addr}{path}", headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def served_version(fleet, name: str, app: str = APP) -> str:
    """What nginx on the host serves right now (from the control machine)."""
    status, body = http_get(address(fleet, name), "/version", f"{app}.{name}.sandbox.test")
    assert status == 200, f"{name}: nginx answered {status}: {body[:200]}"
    return body.strip()


def host_sh(fleet, name: str, cmd: str) -> tuple[int, str, str]:
    return fleet.run(name, cmd)


def must(fleet, name: str, cmd: str) -> str:
    rc, o, e = fleet.run(name, cmd)
    assert rc == 0, f"{name}: {cmd!r} failed ({rc}): {e or o}"
    return o


def release_log(fleet, name: str, app: str = APP) -> list[dict]:
    rc, o, _ = fleet.run(name, f"cat /opt/{app}/.fabship/releases.jsonl 2>/dev/null || true")
    return [json.loads(ln) for ln in o.splitlines() if ln.strip()]


def current(fleet, name: str, app: str = APP) -> str:
    rc, o, _ = fleet.run(name, f"readlink /opt/{app}/current || true")
    return o.strip().rsplit("/", 1)[-1]


def lock_exists(fleet, name: str, app: str = APP) -> bool:
    rc, _, _ = fleet.run(name, f"test -d /opt/{app}/.fabship/lock")
    return rc == 0


def active_instances(fleet, name: str, app: str = APP) -> list[str]:
    rc, o, _ = fleet.run(name, f"systemctl list-units --no-legend --state=active '{app}@*.service' | awk '{{print $1}}'")
    return sorted(x for x in o.split() if x.startswith(app))


def wait_for(pred, timeout=30, interval=0.2):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return True
        time.sleep(interval)
    return False


@pytest.fixture(scope="module")
def deploy_env(sandbox_fleet, tmp_path_factory):
    """Bootstrapped h3-h5 with shipdemo's units/nginx and a clean release state."""
    names = {h.name for h in sandbox_fleet.hosts}
    missing = [h for h in HOSTS if h not in names]
    if missing:
        pytest.skip(f"the fleet has no {', '.join(missing)} (FABSHIP_SANDBOX_COUNT=8)")
    base = tmp_path_factory.mktemp("deploy")
    repo = make_repo(base)
    inv = write_inventory(base, repo)
    for h in HOSTS:  # a clean slate for this app: earlier runs' releases, locks and units
        sandbox_fleet.run(h, f"systemctl stop '{APP}@*' 2>/dev/null; rm -rf {ROOT}/releases {ROOT}/current "
                             f"{ROOT}/.fabship {ROOT}/repo; true")
    r = fab("bootstrap", "-i", str(inv), "--limit", LIMIT, "--no-gate", timeout=1200)
    assert r.returncode == 0, out(r)[-4000:]
    return {"fleet": sandbox_fleet, "inv": inv, "repo": repo, "base": base}
