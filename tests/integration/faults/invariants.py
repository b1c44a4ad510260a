"""The invariants of issue 18, one function each, asserted ON THE HOST over
the sandbox's own SSH (never through fabship's code paths), after every
fault and again after the plain rerun. Each raises AssertionError naming what
is wrong; `Checker` collects them so one fault point reports every broken
invariant at once (the faults x invariants table counts them)."""
from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from fab_cli import run_fab

# invariant names: the README's table columns
SERVES, NGINX, ENV_FILE, ENV_RUNNING, LOCK, LOGS, RECORD, RERUN, SECOND = (
    "serves old/new", "nginx -t", "env file old/new 0600", "running env = records", "lock free/stale+unlock",
    "release+audit line", "run record", "rerun exit 0", "second rerun no change")
ALL = (SERVES, NGINX, ENV_FILE, ENV_RUNNING, LOCK, LOGS, RECORD, RERUN, SECOND)


@dataclass
class Case:
    """One app on one host, and what the faulted run was allowed to leave."""
    fleet: object
    host: str
    app: str
    inv: Path
    runs: Path
    versions: set = field(default_factory=set)   # the old and the new release's VERSION
    envs: list = field(default_factory=list)      # the old and the new env file, bytes

    @property
    def root(self) -> str:
        return f"/opt/{self.app}"

    @property
    def env_path(self) -> str:
        return f"/etc/{self.app}/{self.app}.env"

    def sh(self, cmd: str, timeout: float = 120) -> tuple[int, str, str]:
        return self.fleet.run(self.host, cmd, timeout=timeout)

    def must(self, cmd: str, timeout: float = 120) -> str:
        rc, out, err = self.sh(cmd, timeout)
        assert rc == 0, f"{self.host}: {cmd!r} -> {rc}: {(err or out)[-1500:]}"
        return out

    def fab(self, task: str, *args: str, timeout: float = 600):
        r = run_fab(task, "-i", str(self.inv), "--limit", self.host, *args, runs_dir=self.runs, timeout=timeout)
        return r.returncode, r.stdout + r.stderr


# -- host facts (one round trip each) ---------------------------------------------------------

def host_facts(c: Case) -> dict:
    """What serves, from nginx's side: the upstream port, the release that
    port's instance runs (restart strategy: `current`'s), that release's
    metadata, nginx -t, the env file."""
    app = shlex.quote(c.app)
    script = f"""
up=$(sed -n 's/.*server 127.0.0.1:\\([0-9]*\\);.*/\\1/p' /etc/nginx/fabship/{app}-upstream.conf 2>/dev/null | head -1)
echo "port=$up"
# blue/green: the port's slot link and APP@PORT; restart strategy: `current` and APP.service
unit={app}@$up.service; [ -e /etc/systemd/system/{app}@.service ] || unit={app}.service
if [ "$unit" = {app}.service ]; then slot=$(readlink {c.root}/current 2>/dev/null)
  case "$slot" in ""|/*) ;; *) slot={c.root}/$slot;; esac   # current is a relative link
else slot=$(readlink {c.root}/.fabship/slots/$up 2>/dev/null); fi
echo "slot=$slot"
echo "current=$(readlink {c.root}/current 2>/dev/null)"
echo "active=$(systemctl is-active $unit 2>/dev/null)"
pid=$(systemctl show -p MainPID --value $unit 2>/dev/null)
echo "pid=$pid"
if [ -n "$slot" ] && [ -f "$slot/.fabship-release.json" ]; then echo "meta=$(base64 -w0 "$slot/.fabship-release.json")"; fi
if nginx -t >/dev/null 2>&1; then echo nginx=ok; else echo "nginx=$(nginx -t 2>&1 | base64 -w0)"; fi
echo "served=$(curl -s -m 5 -H 'Host: {c.app}.{c.host}.sandbox.test' http://127.0.0.1/version | head -c 200 | base64 -w0)"
echo "env_sha=$(sha256sum {c.env_path} 2>/dev/null | cut -c1-64)"
echo "env_stat=$(stat -c '%a %U %G' {c.env_path} 2>/dev/null)"
echo "env_dir=$(ls -A /etc/{app} | tr '\\n' ' ')"
if [ -n "$pid" ] && [ "$pid" != 0 ]; then echo "running=$(tr '\\0' '\\n' < /proc/$pid/environ | grep -E '^(ROTATION|APP_SECRET)=' | sort | base64 -w0)"; fi
echo "file_vals=$(grep -E '^(ROTATION|APP_SECRET)=' {c.env_path} 2>/dev/null | sort | base64 -w0)"
rid=$(basename "$slot" 2>/dev/null)
if [ -n "$rid" ] && [ -f {c.root}/.fabship/env/$rid.env ]; then echo "snap=$(grep -E '^(ROTATION|APP_SECRET)=' {c.root}/.fabship/env/$rid.env | sort | base64 -w0)"; fi
echo "lock=$(test -e {c.root}/.fabship/lock && echo held)"
"""
    import base64

    out = c.must(script)
    f = dict(ln.split("=", 1) for ln in out.splitlines() if "=" in ln)
    for k in ("meta", "served", "running", "snap", "file_vals"):
        if f.get(k):
            f[k] = base64.b64decode(f[k]).decode(errors="replace")
    if f.get("nginx", "ok") != "ok":
        f["nginx"] = base64.b64decode(f["nginx"]).decode(errors="replace")
    return f


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# -- the invariants ---------------------------------------------------------------------------

def serves_old_or_new(c: Case, f: dict) -> None:
    """An instance serves the old or the new release, through nginx, and it is
    a finished one: its release metadata is there and says that version."""
    served = f.get("served", "").strip()
    assert served in c.versions, f"nginx serves {served!r}, not one of {sorted(c.versions)}"
    assert f.get("active") == "active", f"the instance on the upstream port {f.get('port')} is {f.get('active')!r}"
    assert f.get("meta"), f"the served release {f.get('slot')!r} has no .fabship-release.json (half-built)"
    meta = json.loads(f["meta"])
    assert version_of(meta.get("version", "")) == served, \
        f"the served release's metadata says {meta.get('version')!r}, nginx serves {served!r}"


def version_of(release_version: str) -> str:
    """A git release's version is REF-COMMIT (v2-f7d888b); the app's VERSION file says the ref."""
    return re.sub(r"-[0-9a-f]{7,40}$", "", release_version or "")


def nginx_ok(c: Case, f: dict) -> None:
    assert f.get("nginx") == "ok", f"nginx -t fails: {f.get('nginx')}"


TEMP_LEFTOVER = re.compile(r"\.(tmp|new)|^tmp\.", re.I)


def env_file_old_or_new(c: Case, f: dict) -> None:
    """Byte for byte the old or the new file, 0600 root:APP, no temp file beside it."""
    allowed = {_sha(b): i for i, b in enumerate(c.envs)}
    assert f.get("env_sha") in allowed, f"{c.env_path} is neither the old nor the new env file " \
                                         f"(sha256 {f.get('env_sha', '')[:12]})"
    assert f.get("env_stat") == f"600 root {c.app}", f"{c.env_path} is {f.get('env_stat')!r}, want '600 root {c.app}'"
    stray = [n for n in f.get("env_dir", "").split() if TEMP_LEFTOVER.search(n)]
    assert not stray, f"leftover temp file(s) in /etc/{c.app}: {stray}"


def running_env_matches_records(c: Case, f: dict) -> None:
    """The serving instance runs the env fabship recorded for its release (the
    snapshot; a file that differs is then installed-but-not-applied, which the
    next rotate-env applies), or the env file itself (a run cut after its
    restart, before it re-snapshotted: the next rotate-env restarts with the
    same file). Anything else is an env nobody knows the app runs."""
    running = f.get("running")
    assert running, f"no env read from the serving instance (pid {f.get('pid')!r})"
    if f.get("snap") and running == f["snap"]:
        return
    assert running == f.get("file_vals"), "the serving instance runs neither its release's env snapshot nor " \
                                          f"the env file (release {f.get('slot', '').rsplit('/', 1)[-1]})"


def lock_free_or_stale(c: Case, f: dict) -> bool:
    """No lock, or `fab releases` calls it STALE naming its holder and `fab
    unlock` breaks it (returns whether it had to)."""
    if f.get("lock") != "held":
        return False
    holder = c.sh(f"cat {c.root}/.fabship/lock/holder.json")[1]
    rc, out = c.fab("releases")
    assert rc == 0, f"fab releases exited {rc}: {out[-1500:]}"
    assert "STALE" in out and "fab unlock" in out, f"a lock is held and fab releases does not call it stale: " \
                                                   f"{holder.strip()[:300]}\n{out[-1500:]}"
    try:
        pid = str(json.loads(holder)["pid"])
    except (ValueError, KeyError):
        pid = ""
    assert pid and f"pid {pid}" in out, f"fab releases does not name the holder (pid {pid}): {out[-1500:]}"
    rc, out = c.fab("unlock")
    assert rc == 0, f"fab unlock exited {rc}: {out[-1500:]}"
    assert c.sh(f"test -e {c.root}/.fabship/lock")[0] != 0, "fab unlock left the lock"
    return True


def logged(c: Case, action: str, since: float, release: str | None = None) -> None:
    """The release log (deploy/rollback) and the audit log hold a line, newer
    than the faulted run's start, for what it did (interrupted included)."""
    audit = c.sh(f"cat {c.root}/.fabship/audit.log 2>/dev/null")[1].splitlines()
    stamp = _iso(since)
    recent = [ln for ln in audit if ln[:20] >= stamp]
    assert any(f"action={action}" in ln for ln in recent), \
        f"no audit line for {action} since {stamp}: {recent[-3:] or audit[-2:]}"
    if action in ("deploy", "rollback"):
        log = release_log(c.sh(f"cat {c.root}/.fabship/releases.jsonl 2>/dev/null")[1])
        mine = [e for e in log if e.get("action") == action and e.get("time", "") >= stamp
                and (release is None or e.get("id") == release)]
        assert mine, f"no releases.jsonl entry for {action} {release or ''} since {stamp}: {log[-2:]}"


def logged_unless(c: Case, action: str, since: float, untouched) -> None:
    """`logged`, or else nothing the run could change is changed (`untouched()`):
    a run stopped before its first change has nothing to say (bootstrap's
    idempotent path writes no audit line either)."""
    try:
        logged(c, action, since)
    except AssertionError as e:
        assert untouched(), f"{e}; and the host was changed"


def release_log(text: str) -> list[dict]:
    """releases.jsonl's entries; a line cut short on a full disk (ENOSPC) is
    skipped, as fabship's own parser does (the next line must stay whole)."""
    out = []
    for ln in text.splitlines():
        try:
            out.append(json.loads(ln))
        except ValueError:
            continue
    return out


def run_record(c: Case, task: str, pid: int) -> dict:
    from inject import record_of

    rec = record_of(c.runs, task, pid)
    assert rec is not None, f"no run record for fab {task} (pid {pid}) in {c.runs}"
    return rec


def changed_nothing(c: Case, task: str, *args: str) -> None:
    """`fab TASK` exits 0 and its run record counts no change."""
    before = set(c.runs.glob(f"*-{task}-*.json"))
    rc, out = c.fab(task, *args)
    assert rc == 0, f"fab {task} exited {rc}: {out[-2000:]}"
    new = sorted(set(c.runs.glob(f"*-{task}-*.json")) - before)
    assert new, f"fab {task} wrote no run record"
    rec = json.loads(new[-1].read_text())["hosts"][c.host]
    changed = [s["name"] for s in rec["steps"] if s["status"] == "changed"]
    assert not changed, f"fab {task} changed {changed}: {out[-1500:]}"


def _iso(epoch: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(int(epoch) - 1, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Checker:
    """Runs invariants, keeps every failure: {invariant: message}."""

    def __init__(self, label: str):
        self.label = label
        self.failed: dict[str, str] = {}
        self.passed: set[str] = set()

    def check(self, name: str, fn, *args):
        try:
            r = fn(*args)
        except AssertionError as e:
            self.failed.setdefault(name, str(e).splitlines()[0][:400] if str(e) else "assertion failed")
            return None
        self.passed.add(name)
        return r

    def state(self, c: Case, stage: str) -> dict:
        """SERVES, NGINX, ENV_FILE, ENV_RUNNING on the host as it is now."""
        f = host_facts(c)
        for name, fn in ((SERVES, serves_old_or_new), (NGINX, nginx_ok), (ENV_FILE, env_file_old_or_new),
                         (ENV_RUNNING, running_env_matches_records)):
            try:
                fn(c, f)
            except AssertionError as e:
                self.failed.setdefault(name, f"{stage}: {str(e).splitlines()[0][:400]}")
            else:
                self.passed.add(name)
        return f

    def report(self) -> str:
        return "\n".join(f"  {self.label}: {k}: {v}" for k, v in self.failed.items())


def fail(message: str):
    raise AssertionError(message)
