"""Helpers for the end-to-end tests of the guides' systems (no tests here).

Each system's flow runs on sandbox host h8 with the committed sandbox
inventory a user runs (inventories/sandbox-*.yaml, `--limit h8`), exactly as
docs/systems.md tells a new user, and checks the state on the host after each
step. The systems share h8 one after another: every flow starts by removing
what any of them left there (units, containers, nginx sites, certificates,
/opt/APP, /etc/APP, users), so each starts from a bare host apart from the
packages earlier flows installed.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fab_cli import run_fab

REPO = Path(__file__).resolve().parents[2]
INV = REPO / "inventories"
HOST = "h8"
DOMAIN = f"{HOST}.sandbox.test"
# app name -> compose project (for the compose system) ; used by the cleanup
APPS = ("node-app", "xavia-ota", "ledgerly-api", "shopfront", "model-server")


class Flow:
    """Runs fab the way a user does and checks the host; every failure message
    names the step and shows the tail of fab's output."""

    def __init__(self, fleet, tmp_path: Path, inventory: str):
        self.fleet = fleet
        self.tmp = tmp_path
        self.inventory = inventory
        self.runs = tmp_path / "runs"
        self.outputs: list[str] = []

    # -- fab ------------------------------------------------------------------------------
    def fab(self, task: str, *args: str, expect: int | None = 0, timeout: float = 1200,
            env: dict | None = None) -> subprocess.CompletedProcess:
        t0 = time.monotonic()
        r = run_fab(task, "-i", self.inventory, "--limit", HOST, *args, runs_dir=self.runs, env=env, timeout=timeout)
        took = time.monotonic() - t0
        shown = " ".join(shlex.quote(a) for a in ["fab", *r.args[3:]])
        self.outputs.append(f"$ {shown}  (exit {r.returncode}, {took:.1f}s)\n{r.stdout}{r.stderr}")
        print(f"[{took:6.1f}s] {shown} -> exit {r.returncode}")  # shown with -s, or on failure
        if expect is not None:
            assert r.returncode == expect, (
                f"`{shown}` exited {r.returncode}, expected {expect}\n--- stdout (tail)\n{tail(r.stdout)}"
                f"\n--- stderr (tail)\n{tail(r.stderr)}")
        assert "Traceback" not in r.stderr + r.stdout, f"`{shown}` printed a traceback:\n{tail(r.stderr, 60)}"
        return r

    def record(self, task: str) -> dict:
        """The newest run record of `task` (written by every fab run)."""
        recs = sorted(self.runs.glob(f"*-{task}-*.json"), key=lambda p: p.stat().st_mtime)
        assert recs, f"no run record for {task} in {self.runs}"
        return json.loads(recs[-1].read_text())

    def host_result(self, task: str) -> dict:
        return self.record(task)["hosts"][HOST]

    def changed_steps(self, task: str) -> list[str]:
        return [s["name"] for s in self.host_result(task)["steps"] if s["status"] == "changed"]

    # -- the host -----------------------------------------------------------------------------
    def sh(self, cmd: str, timeout: float = 300) -> tuple[int, str, str]:
        return self.fleet.run(HOST, cmd, timeout=timeout)

    def must(self, cmd: str, timeout: float = 300) -> str:
        code, out, err = self.sh(cmd, timeout)
        assert code == 0, f"on {HOST}: `{cmd}` failed ({code}): {(err or out).strip()[-2000:]}"
        return out

    def stat(self, path: str) -> str:
        """owner:group:mode (octal) of a path on the host."""
        return self.must(f"stat -c %U:%G:%a {shlex.quote(path)}").strip()

    def sha(self, path: str) -> str:
        return self.must(f"sha256sum < {shlex.quote(path)} | cut -d' ' -f1").strip()

    def http(self, url: str, *curl_args: str, stdin_body: str | None = None) -> tuple[int, dict, str]:
        """(status, response headers, body) of a request made ON the host.
        A request body goes through a here-doc (not the command line)."""
        args = " ".join(shlex.quote(a) for a in curl_args)
        body_part = ""
        if stdin_body is not None:
            body_part = f" --data-binary @- <<'FABSHIP_EOF'\n{stdin_body}\nFABSHIP_EOF"
        cmd = (f"h=$(mktemp); b=$(mktemp); code=$(curl -sS -k -o \"$b\" -D \"$h\" -w '%{{http_code}}' "
               f"--max-time 10 {args} {shlex.quote(url)}{body_part}); "
               f"echo \"$code\"; cat \"$h\"; echo '@@BODY@@'; cat \"$b\"; rm -f \"$h\" \"$b\"")
        code, out, err = self.sh(cmd)
        assert code == 0, f"curl {url} on {HOST} failed: {err.strip()}"
        head, _, body = out.partition("@@BODY@@\n")
        lines = head.splitlines()
        status = int(lines[0].strip() or 0)
        headers = {}
        for ln in lines[1:]:
            if ":" in ln:
                k, _, v = ln.partition(":")
                headers[k.strip().lower()] = v.strip()
        return status, headers, body

    def https(self, path: str, *curl_args: str, **kw):
        """Through nginx with TLS, as a client of the domain would (the name
        resolved to the host itself)."""
        return self.http(f"https://{DOMAIN}{path}", "--resolve", f"{DOMAIN}:443:127.0.0.1", *curl_args, **kw)

    def wait_for(self, what: str, fn, timeout: float = 30, interval: float = 0.5):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = fn()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"{what}: not true after {timeout}s (last: {last!r})")

    def unit_prop(self, unit: str, prop: str) -> str:
        return self.must(f"systemctl show -p {prop} --value {shlex.quote(unit)}").strip()

    def current_release(self, app: str) -> str:
        return self.must(f"readlink /opt/{app}/current").strip().rsplit("/", 1)[-1]

    def releases(self, app: str) -> list[str]:
        return self.must(f"ls -1 /opt/{app}/releases").split()

    def release_log(self, app: str) -> list[dict]:
        out = self.must(f"cat /opt/{app}/.fabship/releases.jsonl 2>/dev/null || true")
        return [json.loads(ln) for ln in out.splitlines() if ln.strip()]

    def audit(self, app: str) -> list[str]:
        return self.must(f"cat /opt/{app}/.fabship/audit.log 2>/dev/null || true").splitlines()


def tail(text: str, n: int = 40) -> str:
    return "\n".join((text or "").strip().splitlines()[-n:])


def reset_host(fleet, host: str = HOST, apps=None) -> None:
    """Remove every trace of the systems' apps from a host (h8 by default; not the packages)."""
    script = ["set +e"]
    for app in (apps or APPS):
        q = shlex.quote(app)
        script += [
            f"systemctl stop {q}.service '{app}@*.service' 2>/dev/null",
            f"find /etc/systemd/system -name {q}.service -o -name '{app}@*.service' | xargs -r rm -f",
            f"if command -v docker >/dev/null; then "
            f"docker ps -aq --filter label=fabship.app={q} | xargs -r docker rm -f >/dev/null; "
            f"docker ps -aq --filter label=com.docker.compose.project={q} | xargs -r docker rm -f >/dev/null; "
            f"docker network ls -q --filter label=com.docker.compose.project={q} | xargs -r docker network rm >/dev/null; "
            f"docker volume ls -q --filter label=com.docker.compose.project={q} | xargs -r docker volume rm >/dev/null; fi",
            f"rm -f /etc/nginx/sites-enabled/{q}.conf /etc/nginx/sites-available/{q}.conf "
            f"/etc/nginx/conf.d/{q}.conf /etc/nginx/fabship/{q}-upstream.conf",
            f"rm -rf /opt/{q} /etc/{q}",
            f"userdel {q} 2>/dev/null; groupdel {q} 2>/dev/null",
        ]
    script += [
        "systemctl daemon-reload; systemctl reset-failed 2>/dev/null",
        "if command -v certbot >/dev/null; then for c in /etc/letsencrypt/renewal/*.conf; do [ -e \"$c\" ] || continue; "
        "certbot delete --non-interactive --cert-name \"$(basename \"$c\" .conf)\" >/dev/null 2>&1; done; fi",
        "if systemctl is-active -q nginx; then nginx -t >/dev/null 2>&1 && systemctl reload nginx; fi",
        "true",
    ]
    code, out, err = fleet.run(host, "\n".join(script), timeout=300)
    assert code == 0, f"cleaning {host} failed: {err or out}"


@pytest.fixture
def h8(sandbox_fleet):
    """The fleet, with h8 cleaned of every system's app."""
    if HOST not in [h.name for h in sandbox_fleet.hosts]:
        pytest.skip(f"the sandbox fleet has no {HOST} (FABSHIP_SANDBOX_COUNT=8)")
    if not (INV / "sandbox.yaml").exists():
        pytest.fail("inventories/sandbox.yaml is missing although the fleet is up")
    reset_host(sandbox_fleet)
    return sandbox_fleet


def require_docker(fleet) -> None:
    if not fleet.docker:
        pytest.skip("the sandbox fleet was started without --docker")


def registry(fleet) -> str:
    data = yaml.safe_load((INV / "sandbox.yaml").read_text())
    reg = (data.get("sandbox") or {}).get("registry")
    if not reg:
        pytest.fail("inventories/sandbox.yaml names no docker registry (fab sandbox.up --docker)")
    return reg


def push_samples(fleet, tag: str, broken: bool = False) -> None:
    argv = [sys.executable, "-m", "tasks.sandbox.images", "push-samples", "--registry", registry(fleet), "--tag", tag]
    if broken:
        argv.append("--broken")
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"pushing the sample images {tag} failed: {r.stderr or r.stdout}"


def app_copy(tmp_path: Path, app: str, version: str, *, fail_health: bool = False, name: str = "") -> Path:
    """apps/APP copied with a VERSION file (the samples report it), without
    build outputs; optionally with the FAIL_HEALTH switch file."""
    dst = tmp_path / (name or f"{app}-{version}")
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(REPO / "apps" / app, dst, ignore=shutil.ignore_patterns(
        "node_modules", "dist", ".next", ".build", "__pycache__", "venv", ".venv", "FAIL_*"))
    (dst / "VERSION").write_text(version + "\n")
    if fail_health:
        (dst / "FAIL_HEALTH").write_text("1\n")
    return dst


def git_commit_version(repo: Path, src: Path, version: str, *, fail_health: bool = False) -> str:
    """Replace the repo's tree with src (+VERSION) and commit; returns the commit."""
    def git(*args):
        r = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                           env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                                "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})
        assert r.returncode == 0, f"git {' '.join(args)}: {r.stderr}"
        return r.stdout.strip()

    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        git("init", "-q", "-b", "main")
    for p in repo.iterdir():
        if p.name != ".git":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    for p in src.iterdir():
        (shutil.copytree if p.is_dir() else shutil.copy2)(p, repo / p.name)
    (repo / "VERSION").write_text(version + "\n")
    if fail_health:
        (repo / "FAIL_HEALTH").write_text("1\n")
    else:
        (repo / "FAIL_HEALTH").unlink(missing_ok=True)
    git("add", "-A")
    git("commit", "-q", "-m", f"version {version}")
    return git("rev-parse", "HEAD")


def env_file(tmp_path: Path, base: Path, name: str, **changes: str) -> Path:
    """A copy of a sample env file with some values changed (0600)."""
    lines, seen = [], set()
    for ln in base.read_text().splitlines():
        k = ln.split("=", 1)[0] if "=" in ln and not ln.startswith("#") else None
        if k in changes:
            lines.append(f"{k}={changes[k]}")
            seen.add(k)
        else:
            lines.append(ln)
    lines += [f"{k}={v}" for k, v in changes.items() if k not in seen]
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    p.chmod(0o600)
    return p
