"""rotate-env with the real bootstrap/deploy/rollback on h6 (blue/green behind
nginx): each release records the env it runs with, so `fab rollback` restores
code and env together; a rotation that fails the health check leaves the old
instance serving and the old env file in place.

  bootstrap (env E1) -> deploy v1 -> deploy v2 -> rotate-env E2 (v2 now on E2)
  -> rotate-env BAD (fails health: old instance keeps serving, E2 restored)
  -> rollback: v1 serves, with E1 again (the env v1 ran with)
"""
import hashlib
import os
import shutil
import subprocess
import urllib.request

import pytest
import yaml

from test_rotate_env_support import REPO, fab

HOST = "h6"
APP = "rotroll"
E1 = "APP_SECRET=first-env-secret-0123456789\nLOG_LEVEL=info\n"
E2 = "APP_SECRET=second-env-secret-9876543210\nLOG_LEVEL=debug\n"
BAD = "APP_SECRET=third-env-secret-5555555555\nFAIL_HEALTH=1\n"


def make_repo(base):
    d = base / "src"
    shutil.copytree(REPO / "apps" / "node-app", d, ignore=shutil.ignore_patterns("dist", "node_modules"))
    env = dict(os.environ, GIT_AUTHOR_NAME="ci", GIT_AUTHOR_EMAIL="ci@fabship", GIT_COMMITTER_NAME="ci",
               GIT_COMMITTER_EMAIL="ci@fabship")
    run = lambda *a: subprocess.run(["git", *a], cwd=d, check=True, capture_output=True, env=env)  # noqa: E731
    run("init", "-q", "-b", "main")
    for tag in ("v1", "v2"):
        (d / "VERSION").write_text(tag + "\n")
        run("add", "-A")
        run("commit", "-qm", tag)
        run("tag", tag)
    return d


def served(fleet) -> tuple[int, str]:
    req = urllib.request.Request(f"http://{fleet.host(HOST).address}/version",
                                 headers={"Host": f"{APP}.{HOST}.sandbox.test"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode().strip()
    except urllib.error.HTTPError as e:
        return e.code, ""


def host(fleet, cmd):
    rc, out, err = fleet.run(HOST, cmd)
    assert rc == 0, f"{cmd!r}: {err or out}"
    return out.strip()


def live_secret_hash(fleet) -> str:
    """sha256 of APP_SECRET in the serving instance's environment (read by root on the host)."""
    port = host(fleet, f"sed -n 's/.*127.0.0.1:\\([0-9]*\\).*/\\1/p' /etc/nginx/fabship/{APP}-upstream.conf")
    pid = host(fleet, f"systemctl show -p MainPID --value {APP}@{port}.service")
    return host(fleet, f"tr '\\0' '\\n' < /proc/{pid}/environ | sed -n 's/^APP_SECRET=//p' | tr -d '\\n' | "
                       "sha256sum | cut -d' ' -f1")


def h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def secret_of(env_text: str) -> str:
    return env_text.split("\n")[0].split("=", 1)[1]


@pytest.fixture
def app_env(sandbox_fleet, tmp_path):
    if HOST not in [x.name for x in sandbox_fleet.hosts]:
        pytest.skip(f"the sandbox fleet has no {HOST}")
    sandbox_fleet.run(HOST, f"systemctl stop '{APP}@*' 2>/dev/null; rm -rf /opt/{APP} /etc/{APP}; true")
    e1 = tmp_path / "e1.env"
    e1.write_text(E1)
    inv = tmp_path / "rotroll.yaml"
    inv.write_text(yaml.safe_dump({
        "include": [str(REPO / "inventories" / "sandbox.yaml")],
        "packages": ["git"],
        "app": {"name": APP, "kind": "node", "port": 3300, "start": "npm run start", "node_version": "18"},
        "nginx": {"server_name": APP + ".{host}.sandbox.test"},
        "env": {"source": {"type": "file", "file": str(e1)},
                "contract": {"required": ["APP_SECRET"], "optional": ["LOG_LEVEL", "FAIL_HEALTH"],
                             "rules": {"APP_SECRET": {"min_length": 16}}}},
        "deploy": {"source": "git", "repo": str(make_repo(tmp_path)), "ref": "v1",
                   "build": ["npm ci --no-audit --no-fund --offline", "npm run build"], "keep_releases": 3},
        "health": {"path": "/health", "body_contains": '"status":"ok"', "retries": 8, "interval": 0.5,
                   "timeout": 3},
    }, sort_keys=False))
    return sandbox_fleet, inv


def test_rollback_restores_code_and_env(app_env, tmp_path):
    fleet, inv = app_env
    lim = ("-i", str(inv), "--limit", HOST)
    env_path = f"/etc/{APP}/{APP}.env"

    def ok(*args):
        r = fab(tmp_path, *args, *lim)
        assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
        return r

    ok("bootstrap")
    ok("deploy", "--ref", "v1")
    r1 = host(fleet, f"readlink /opt/{APP}/current").rsplit("/", 1)[-1]
    ok("deploy", "--ref", "v2")
    r2 = host(fleet, f"readlink /opt/{APP}/current").rsplit("/", 1)[-1]
    assert served(fleet) == (200, "v2") and r1 != r2
    e1_sha = host(fleet, f"sha256sum < {env_path} | cut -d' ' -f1")
    assert host(fleet, f"sha256sum < /opt/{APP}/.fabship/env/{r1}.env | cut -d' ' -f1") == e1_sha

    # rotate: v2 now runs on E2 (blue/green: a new instance with the new env took the traffic)
    e2 = tmp_path / "e2.env"
    e2.write_text(E2)
    ok("rotate-env", "--env-file", str(e2))
    assert served(fleet) == (200, "v2")
    assert live_secret_hash(fleet) == h(secret_of(E2))
    e2_sha = host(fleet, f"sha256sum < {env_path} | cut -d' ' -f1")
    assert host(fleet, f"sha256sum < /opt/{APP}/.fabship/env/{r2}.env | cut -d' ' -f1") == e2_sha
    assert host(fleet, f"stat -c %U:%G:%a {env_path}") == f"root:{APP}:600"

    # a rotation that fails its health check: the old instance keeps serving, E2 is back
    bad = tmp_path / "bad.env"
    bad.write_text(BAD)
    r = fab(tmp_path, "rotate-env", "--env-file", str(bad), *lim)
    assert r.returncode != 0 and "rotate-env failed" in r.stdout + r.stderr
    assert served(fleet) == (200, "v2")
    assert host(fleet, f"sha256sum < {env_path} | cut -d' ' -f1") == e2_sha
    assert live_secret_hash(fleet) == h(secret_of(E2))

    # rollback to v1: code and the env v1 ran with (E1), together
    ok("rollback")
    assert served(fleet) == (200, "v1")
    assert host(fleet, f"sha256sum < {env_path} | cut -d' ' -f1") == e1_sha
    assert live_secret_hash(fleet) == h(secret_of(E1))
    assert host(fleet, f"stat -c %U:%G:%a {env_path}") == f"root:{APP}:600"
    # nothing of the env history is readable by others
    assert host(fleet, f"find /etc/{APP} /opt/{APP}/.fabship -type f -perm /o=r -name '*env*' | wc -l") == "0"
