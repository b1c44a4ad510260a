"""The fault suite's app and its case runner (no tests here).

`faultapp` on h7: apps/node-app from a local git repo (tags v1, v2; VERSION
says which), blue/green on 3561/3562 behind nginx, env file from a local
source with a ROTATION key that rotate-env flips between `one` and `two`.

`FaultApp.case(...)` is one cell of the matrix: put the host in a known good
state, start the faulted fab run, inject the fault at the point, then check
every invariant (invariants.py) after the fault, after `fab unlock` when a
stale lock is left, after the plain rerun and after a second one.
"""
from __future__ import annotations

import base64
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from test_deploy_support import make_repo

import invariants as inv
from inject import Fab, at_point, steps_of

REPO = Path(__file__).resolve().parents[3]
HOST = "h7"
APP = "faultapp"
PORT = 3560
SECRET = "fault-suite-secret-0123456789"
ENVS = {name: f"APP_SECRET={SECRET}\nLOG_LEVEL=info\nROTATION={name}\n".encode() for name in ("one", "two", "three")}


def rotation_of(env: bytes) -> str:
    """Which of ENVS an env file is ("one", "two", ...): its ROTATION value."""
    return env.decode().rsplit("ROTATION=", 1)[-1].strip()
SLOW = f"/tmp/{APP}-slow-build"   # present on the host: the build sleeps (a long step to fault inside)
SLEEP_MARK = "sleep 4[2]"         # pgrep pattern that matches the build's sleep only
BUILD = ["npm ci --no-audit --no-fund --offline", f"if [ -e {SLOW} ]; then sleep 42; fi", "npm run build"]
# present on the host: a new instance sleeps before it listens (a long health-check wait to fault inside;
# the health loop waits up to retries 20 x interval 0.5 = 10 s)
SLOW_START = f"/var/lib/{APP}-slow-start"
START_MARK = "sleep 6[.]5"
START = f"sh -c 'if [ -e {SLOW_START} ]; then sleep 6.5; fi; exec npm run start'"
UPLOAD_MARK = "sftp-server"      # the host's side of an SFTP upload (the git bundle)
# not among faultapp's packages: a faulted bootstrap fetches it (and libjq1, libonig5) through the mirror
BOOTSTRAP_PACKAGE = "jq"
RESULTS = REPO / ".fabship" / "faults"   # last-full.json (the whole matrix), last-run.json (any other run)


def write_inventory(base: Path, repo: Path, app: str = APP, port: int = PORT, strategy: str = "blue_green") -> Path:
    env = base / f"{app}.env"
    env.write_bytes(ENVS["one"])
    os.chmod(env, 0o600)
    data = {
        "include": [str(REPO / "inventories" / "sandbox.yaml")],
        "packages": ["git"],
        "app": {"name": app, "kind": "node", "port": port, "start": START, "node_version": "18"},
        "nginx": {"server_name": app + ".{host}.sandbox.test"},
        "env": {"source": {"type": "file", "file": str(env)}},
        "deploy": {"source": "git", "repo": str(repo), "ref": "v1", "build": BUILD, "keep_releases": 3,
                   "strategy": strategy},
        "health": {"path": "/health", "body_contains": '"status":"ok"', "retries": 20, "interval": 0.5,
                   "timeout": 3},
        # a cut link fails the host in keepalive x (dead_after + 1) = 8 s
        "ssh": {"keepalive": 2, "dead_after": 3},
    }
    p = base / f"{app}.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@dataclass
class Plan:
    args: list
    old: str                 # VERSION served before the faulted run
    new: str                 # VERSION it is after (rotate-env: the same)
    envs: list               # env file bytes before, [and after]
    concerns: str | None = None   # the release it acts on, when known up front


@dataclass
class Outcome:
    task: str
    fault: str
    point: str
    failed: dict
    seconds: float
    reached: bool = True
    checked: list = field(default_factory=list)   # the invariants this point checks (the rest: n/a)


@dataclass
class Results:
    full: bool
    cases: list = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)
    load0: float = field(default_factory=lambda: os.getloadavg()[0])

    def add(self, o: Outcome) -> None:
        self.cases.append(o)

    def write(self) -> None:
        if not self.cases:
            return
        RESULTS.mkdir(parents=True, exist_ok=True)
        data = {"full": self.full, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "cases": len(self.cases), "seconds": round(time.monotonic() - self.t0),
                "load": [round(self.load0, 2), *[round(x, 2) for x in os.getloadavg()]],
                "violations": sum(len(o.failed) for o in self.cases),
                "results": [o.__dict__ for o in self.cases]}
        # FABSHIP_FAULTS_OUT: a part of the full matrix run in its own session (table.py merges the parts)
        out = os.environ.get("FABSHIP_FAULTS_OUT") or RESULTS / ("last-full.json" if self.full else "last-run.json")
        Path(out).write_text(json.dumps(data, indent=1))


class FaultApp:
    def __init__(self, fleet, base: Path, inv_path: Path, app: str = APP, strategy: str = "blue_green"):
        self.fleet, self.base, self.inv = fleet, base, inv_path
        self.strategy = strategy
        self.runs = base / "runs"
        self.c = inv.Case(fleet, HOST, app, inv_path, self.runs)

    @classmethod
    def up(cls, fleet, base: Path, app: str = APP, port: int = PORT, strategy: str = "blue_green") -> "FaultApp":
        """`faultapp` (blue/green), or another app on HOST with its own port and strategy
        (`faultrst`: restart)."""
        if HOST not in {h.name for h in fleet.hosts}:
            pytest.skip(f"the fleet has no {HOST}")
        repo = make_repo(base)
        fa = cls(fleet, base, write_inventory(base, repo, app, port, strategy), app, strategy)
        fa.repo = repo
        # a clean slate for this app: earlier sessions' releases, locks, units, fault mounts
        fleet.run(HOST, f"for m in /opt/{app} /etc/{app}; do mountpoint -q $m && umount -l $m; done; "
                        f"systemctl stop '{app}@*' {app}.service 2>/dev/null; rm -rf /opt/{app}/releases "
                        f"/opt/{app}/current /opt/{app}/.fabship /opt/{app}/repo {SLOW} {SLOW_START}; true")
        app = fa
        rc, out = app.c.fab("bootstrap", "--no-gate", timeout=1200)
        assert rc == 0, out[-4000:]
        for ref in ("v1", "v2"):
            rc, out = app.c.fab("deploy", "--no-gate", "--ref", ref)
            assert rc == 0, out[-4000:]
        return app

    # -- a known good state before each case ------------------------------------------------
    def baseline(self) -> dict:
        """Lock gone, disks free, link up, nginx serving a good release with a
        good one before it; returns the host facts."""
        c = self.c
        c.sh(f"rm -rf {c.root}/.fabship/lock {SLOW}; true")
        f = inv.host_facts(c)
        if f.get("served", "").strip() not in ("v1", "v2") or f.get("lock") == "held":
            rc, out = c.fab("deploy", "--no-gate", "--ref", "v1")
            assert rc == 0, f"baseline deploy: {out[-3000:]}"
            f = inv.host_facts(c)
        return f

    def big_ref(self, mib: int = 24) -> str:
        """A new tag on v2 that adds `mib` MiB of random bytes, so the host
        lacks it and the deploy uploads a git bundle that size (a long upload
        to fault inside). VERSION says the tag, as the invariants expect."""
        import subprocess

        self._big = getattr(self, "_big", 0) + 1
        tag = f"up{self._big}-{int(time.time())}"
        env = dict(os.environ, GIT_AUTHOR_NAME="ci", GIT_AUTHOR_EMAIL="ci@fabship", GIT_COMMITTER_NAME="ci",
                   GIT_COMMITTER_EMAIL="ci@fabship")

        def g(*a):
            subprocess.run(["git", *a], cwd=self.repo, check=True, capture_output=True, env=env)

        g("checkout", "-q", "--detach", "v2")
        (self.repo / "pad.bin").write_bytes(os.urandom(mib << 20))
        (self.repo / "VERSION").write_text(tag + "\n")
        g("add", "-A")
        g("commit", "-qm", tag)
        g("tag", tag)
        g("checkout", "-q", "main")
        return tag

    def fingerprint(self) -> str:
        """What a bootstrap changes here: the env file, nginx site, unit file and the extra package."""
        a = self.c.app
        unit = f"{a}@.service" if self.strategy == "blue_green" else f"{a}.service"
        return self.c.sh(f"sha256sum /etc/{a}/{a}.env /etc/nginx/sites-available/{a}.conf "
                         f"/etc/systemd/system/{unit}; dpkg-query -W -f='${{db:Status-Abbrev}}' "
                         f"{BOOTSTRAP_PACKAGE} 2>/dev/null; true")[1]

    def env_now(self) -> bytes:
        return base64.b64decode(self.c.must(f"base64 -w0 {self.c.env_path}"))

    def good_releases(self) -> list[dict]:
        log = inv.release_log(self.c.sh(f"cat {self.c.root}/.fabship/releases.jsonl")[1])
        dirs = set(self.c.sh(f"ls {self.c.root}/releases")[1].split())
        return [e for e in log if e.get("action") == "deploy" and e.get("result") == "ok" and e["id"] in dirs]

    def env_file(self, name: str) -> Path:
        p = self.base / f"env-{name}.env"
        p.write_bytes(ENVS[name])
        os.chmod(p, 0o600)
        return p

    def clean_steps(self, task: str) -> list[str]:
        """The steps of a clean run of `task` from the state the baseline
        leaves, from its run record: the boundaries to fault at."""
        p = self.plan(task)
        before = set(self.runs.glob(f"*-{task}-*.json"))
        rc, out = self.c.fab(task, "--no-gate", *p.args)
        assert rc == 0, f"clean {task}: {out[-3000:]}"
        rec = json.loads(sorted(set(self.runs.glob(f"*-{task}-*.json")) - before)[-1].read_text())
        return steps_of(rec, HOST)

    # -- one cell ---------------------------------------------------------------------------
    def plan(self, task: str) -> "Plan":
        """The faulted run's arguments and what it may leave, from the state
        the baseline left."""
        f = self.baseline()
        old = f["served"].strip()
        env = self.env_now()
        if task == "deploy":
            new = "v2" if old == "v1" else "v1"
            return Plan(["--ref", new], old, new, [env])
        if task == "rollback":
            current = f["slot"].rsplit("/", 1)[-1]
            older = [e for e in self.good_releases() if e["id"] < current and e.get("version") != old]
            if not older:
                rc, out = self.c.fab("deploy", "--no-gate", "--ref", "v2" if old == "v1" else "v1")
                assert rc == 0, out[-3000:]
                return self.plan(task)
            target = older[-1]
            # rollback restores the env the target release was started with (its snapshot):
            # earlier cases may have rotated the file since
            rc, snap, _ = self.c.sh(f"base64 -w0 {self.c.root}/.fabship/env/{target['id']}.env")
            snap_env = base64.b64decode(snap) if rc == 0 else env
            envs = [env] + ([snap_env] if snap_env != env else [])
            return Plan(["--to", target["id"]], old, inv.version_of(target["version"]), envs, target["id"])
        if task == "rotate-env":
            cur = rotation_of(env)
            new = "two" if cur == "one" else "one"
            # the file on the host is fabship's rendering of the source: only ROTATION differs
            return Plan(["--env-file", str(self.env_file(new))], old, old,
                        [env, env.replace(f"ROTATION={cur}".encode(), f"ROTATION={new}".encode())])
        if task == "bootstrap":
            return self.bootstrap_plan(old, env)
        raise ValueError(task)

    def bootstrap_plan(self, served: str, env: bytes, package: str | None = BOOTSTRAP_PACKAGE) -> "Plan":
        """A bootstrap with work in every changing step: `package` purged on the
        host (the packages step fetches it again), the other nginx body size
        and unit variable (the nginx and units steps), the other env file (the
        env file step; not applied: bootstrap restarts nothing). The app keeps
        serving the release it served."""
        site = f"/etc/nginx/sites-available/{self.c.app}.conf"
        big = "12M" in self.c.sh(f"grep -o 'client_max_body_size [^;]*' {site}")[1]
        cur = rotation_of(env)
        new = "two" if cur == "one" else "one"
        args = ["--env-file", str(self.env_file(new)),
                "--set", f"nginx.client_max_body_size={'10M' if big else '12M'}",
                "--set", f"app.unit.environment={{FAULT_VARIANT: {'a' if big else 'b'}}}"]
        if package:
            purge_package(self.c, package)
            args += ["--set", f"packages=[git, {package}]"]
        return Plan(args, served, served, [env, env.replace(f"ROTATION={cur}".encode(),
                                                           f"ROTATION={new}".encode())])

    def case(self, results: Results, task: str, point: tuple[str, str], action, *, fault: str = "",
             extra: tuple = (), inside_probe: str = "", after_fault=None, audit_action: str | None = None,
             waive: tuple = (), before=None, plan=None, probe_cmd: str = "", after_rerun=None) -> inv.Checker:
        c = self.c
        p = plan() if plan is not None else self.plan(task)
        args = p.args
        label = f"{task} {fault or action.__name__} {point[0]} {point[1]}"
        chk = inv.Checker(label)
        if point == ("inside", "build"):
            c.must(f"touch {SLOW}")
        if point == ("inside", "health check"):
            c.must(f"touch {SLOW_START}")
        if before is not None:
            before()   # a fault in place before the run starts (a full disk)
        untouched = self.fingerprint() if task == "bootstrap" else None
        t0 = time.time()
        started = time.monotonic()
        fab = Fab(task, "-i", str(self.inv), "--limit", HOST, "-v", "--no-gate", *args, *extra, runs_dir=self.runs)
        reached = at_point(fab, point, self.fleet, HOST, action, inside_probe=inside_probe, probe_cmd=probe_cmd)
        try:
            rc, out = fab.wait(timeout=300)
        finally:
            if after_fault is not None:
                after_fault()   # the link back, the space freed: before anything else talks to the host
            c.sh(f"rm -f {SLOW} {SLOW_START}; pkill -f '{SLEEP_MARK}'; true")
        if not reached:
            chk.failed["point"] = f"fab never reached {point} (exit {rc}): {out[-800:]}"
            results.add(Outcome(task, fault or action.__name__, f"{point[0]} {point[1]}", chk.failed,
                                round(time.monotonic() - started, 1), reached=False))
            return chk
        rid = p.concerns
        if task == "deploy":
            m = re.search(r"as release (\S+)", out)
            rid = m.group(1) if m else None
        assert "Traceback" not in out, out[-3000:]
        if self.strategy == "restart":
            # one process on one port: a restart the dead fab left running (a start that sleeps
            # 6.5 s first) is a gap of its own; what serves is judged once it is over (<= 15 s)
            c.sh(f"for i in $(seq 30); do curl -sf -m 2 -o /dev/null -H 'Host: {c.app}.{HOST}.sandbox.test' "
                 "http://127.0.0.1/health && exit 0; sleep 0.5; done; exit 1", timeout=60)
        c.versions, c.envs = {p.old, p.new}, p.envs
        f = chk.state(c, "after the fault")
        chk.check(inv.LOCK, inv.lock_free_or_stale, c, f)
        if task == "bootstrap":   # a bootstrap killed before its first change (and lock) changed nothing
            chk.check(inv.LOGS, inv.logged_unless, c, "bootstrap", t0, lambda: self.fingerprint() == untouched)
        elif inv.LOGS not in waive:
            chk.check(inv.LOGS, inv.logged, c, audit_action or task, t0, rid if task != "rotate-env" else None)
        chk.check(inv.RECORD, inv.run_record, c, task, fab.pid)
        # the plain rerun: the same command, no fault
        rc2, out2 = c.fab(task, "--no-gate", *args, *extra)
        if rc2 != 0:
            chk.failed[inv.RERUN] = f"exit {rc2}: {' | '.join(out2.strip().splitlines()[-4:])[:400]}"
        else:
            chk.passed.add(inv.RERUN)
            c.versions, c.envs = {p.new}, p.envs[-1:]
            f2 = chk.state(c, "after the rerun")
            if f2.get("lock") == "held":
                chk.failed[inv.LOCK] = "the rerun left the lock held"
            if after_rerun is not None:
                after_rerun(chk)   # the point's own checks on what the rerun left
        second(chk, c, task, args)
        results.add(Outcome(task, fault or action.__name__, f"{point[0]} {point[1]}", chk.failed,
                            round(time.monotonic() - started, 1), checked=sorted(chk.passed | set(chk.failed))))
        return chk



def purge_package(c: inv.Case, package: str) -> None:
    """`package` and its libraries purged, apt's copies of the .debs gone too:
    installing it goes to the mirror (a packages step with real work)."""
    deps = {"jq": "libjq1 libonig5"}.get(package, "")
    debs = " ".join(f"/var/cache/apt/archives/{n}_*.deb" for n in (package, *deps.split()))
    c.must(f"DEBIAN_FRONTEND=noninteractive apt-get -y -q purge {package} {deps} >/dev/null 2>&1; "
           f"rm -f {debs}; ! dpkg -s {package} >/dev/null 2>&1", timeout=300)


def second(chk: inv.Checker, c: inv.Case, task: str, args: list) -> None:
    """A second rerun changes nothing: rotate-env with the same file answers
    unchanged, bootstrap with the same arguments changes nothing; after a
    deploy or rollback, `fab rollback --to` the release now current (it must
    be a completed, recorded one) does nothing."""
    if task in ("rotate-env", "bootstrap"):
        chk.check(inv.SECOND, inv.changed_nothing, c, task, "--no-gate", *args)
        return
    current = c.sh(f"readlink {c.root}/current")[1].strip().rsplit("/", 1)[-1]
    chk.check(inv.SECOND, inv.changed_nothing, c, "rollback", "--no-gate", "--to", current)
