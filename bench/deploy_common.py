"""Shared setup for the deploy benchmarks (bench/deploy_*.py, zero_downtime.py,
rollback_time.py): a git repo of apps/node-app with good and broken tags, an
inventory that includes the running sandbox, `fab` as a user runs it, and a
client that hits nginx on the sandbox hosts' addresses only.

Needs a running sandbox with the hosts named by --hosts (`fab sandbox.up`).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SANDBOX = REPO / "inventories" / "sandbox.yaml"


def sandbox_addresses(names: list[str]) -> dict[str, str]:
    if not SANDBOX.exists():
        sys.exit(f"{SANDBOX} is missing: bring the sandbox up first (fab sandbox.up)")
    static = yaml.safe_load(SANDBOX.read_text())["hosts"]["static"]
    missing = [n for n in names if n not in static]
    if missing:
        sys.exit(f"the sandbox has no host {', '.join(missing)}")
    return {n: (static[n]["address"] if isinstance(static[n], dict) else static[n]) for n in names}


def make_repo(base: Path) -> Path:
    """apps/node-app with tags v1, v2 (good) and broken (FAIL_HEALTH)."""
    d = base / "node-app-src"
    shutil.copytree(REPO / "apps" / "node-app", d, ignore=shutil.ignore_patterns("dist", "node_modules"))
    env = dict(os.environ, GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@fabship", GIT_COMMITTER_NAME="bench",
               GIT_COMMITTER_EMAIL="bench@fabship")

    def g(*a):
        subprocess.run(["git", *a], cwd=d, check=True, capture_output=True, env=env)

    g("init", "-q", "-b", "main")
    for tag in ("v1", "v2", "broken"):
        (d / "VERSION").write_text(tag + "\n")
        if tag == "broken":
            (d / "FAIL_HEALTH").write_text("on\n")
        g("add", "-A")
        g("commit", "-qm", tag)
        g("tag", tag)
    return d


def prebuilt_artifact(base: Path, version: str) -> Path:
    """apps/node-app built on the control machine (node scripts/build.js): a
    release that needs no build step on the hosts."""
    d = base / f"node-app-{version}"
    if not d.exists():
        shutil.copytree(REPO / "apps" / "node-app", d, ignore=shutil.ignore_patterns("dist", "node_modules"))
        subprocess.run(["node", "scripts/build.js"], cwd=d, check=True, capture_output=True)
        (d / "VERSION").write_text(version + "\n")
    return d


# The unit runs node directly: `npm run start` would add an npm process (about
# 0.4 s of CPU per start, and npm in front of the app as PID 1 of the unit).
START = "node dist/server.js"


def write_inventory(base: Path, repo: Path, app: str, port: int, strategy: str = "blue_green",
                    health: dict | None = None, source: str = "git", start: str = START) -> Path:
    env = base / f"{app}.env"
    env.write_text("APP_SECRET=bench-secret-0123456789abcdef\n")
    os.chmod(env, 0o600)
    h = {"path": "/health", "body_contains": '"status":"ok"', "retries": 10, "interval": 0.5, "timeout": 2}
    h.update(health or {})
    data = {
        "include": [str(SANDBOX)],
        "packages": ["git"],
        "app": {"name": app, "kind": "node", "port": port, "start": start, "node_version": "18"},
        # one site per app on a host: each app answers its own name
        "nginx": {"server_name": app + ".{host}.sandbox.test"},
        "env": {"source": {"type": "file", "file": str(env)}},
        "deploy": {"source": "git", "repo": str(repo), "ref": "v1", "strategy": strategy,
                   "build": ["npm ci --no-audit --no-fund --offline", "npm run build"], "keep_releases": 3},
        "health": h,
    }
    if source == "artifact":  # built on the control machine: nothing to build on the hosts
        data["deploy"] = {"source": "artifact", "artifact": str(prebuilt_artifact(base, "v1")),
                          "strategy": strategy, "keep_releases": 3}
    p = base / f"{app}.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def fab(*args, check=True, quiet=True) -> tuple[float, subprocess.CompletedProcess]:
    e = dict(os.environ)
    e.pop("FABSHIP_INVENTORY", None)
    e["FABSHIP_RUNS_DIR"] = e.get("FABSHIP_RUNS_DIR") or tempfile.mkdtemp(prefix="fabship-bench-runs-")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "fabric", *args], cwd=REPO, env=e, capture_output=True, text=True)
    dt = time.monotonic() - t0
    if check and r.returncode != 0:
        sys.exit(f"fab {' '.join(args)} failed ({r.returncode}):\n{(r.stdout + r.stderr)[-4000:]}")
    if not quiet:
        print((r.stdout + r.stderr)[-2000:])
    return dt, r


class Client:
    """Sends GET requests through nginx continuously, a new TCP connection per
    request (as independent clients do), and records every outcome."""

    def __init__(self, host: str, address: str, app: str, path: str = "/version", pause: float = 0.0):
        self.host, self.address, self.path, self.pause = host, address, path, pause
        self.vhost = f"{app}.{host}.sandbox.test"
        self.results: list[tuple[float, bool, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        url = f"http://{self.address}{self.path}"
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                req = urllib.request.Request(url, headers={"Host": self.vhost, "Connection": "close"})
                with urllib.request.urlopen(req, timeout=5) as r:
                    body = r.read().decode().strip()
                    self.results.append((t, r.status == 200, body if r.status == 200 else f"HTTP {r.status}"))
            except urllib.error.HTTPError as e:
                self.results.append((t, False, f"HTTP {e.code}"))
            except Exception as e:
                self.results.append((t, False, f"{type(e).__name__}: {e}"))
            if self.pause:
                time.sleep(self.pause)

    def start(self):
        self.thread.start()
        return self

    def finish(self):
        self.stop.set()
        self.thread.join(10)

    def failures(self) -> list[tuple[float, bool, str]]:
        return [r for r in self.results if not r[1]]

    def longest_gap(self) -> float:
        """Longest time between two consecutive successful responses."""
        ok = [t for t, good, _ in self.results if good]
        return max((b - a for a, b in zip(ok, ok[1:])), default=0.0)
